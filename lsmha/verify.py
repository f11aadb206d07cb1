"""Parity: every exported file, on the engine's own runtimes, against the torch committee.

Each file of an export manifest is run by the runtime that serves it (ONNX: ONNX Runtime,
and the committee graph also on OpenVINO in every precision this CPU runs; `.pt2`:
AOTInductor; `.plan`: TensorRT), beside the torch members rebuilt from the export's
safetensors. Each row compares one output on one input set:

- `logits` of a committee file is the committee's sum (its top-1 counts N images);
  `member_logits` holds every member (its top-1 counts members x N decisions);
  a member file's `logits` is that member's.
- relative error = max |got - torch| / max |torch|; top-1 agreement = fraction of those
  decisions equal to torch's.

Real images decide: the data set named in the checkpoints' metadata (its validation split)
or `--images FILE.npy`. Random uint8 images are always run and reported, but on them logits
are near-tied and top-1 is noise; they decide the relative error only when no real images
exist (the row says so). Each row ends ok, FAIL or skipped (the runtime is missing here);
a skipped row fails the check unless skips are allowed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .artifacts import COMMITTEE, ExportManifest, FileEntry, read_manifest
from .metrics import soft_committee

if TYPE_CHECKING:
    from .engine import FileRunner, Source

# the engine (and torch behind it) loads inside the functions, so `lsmha-export --help` answers without it
# precision -> (max relative error, min top-1 agreement on real images)
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 1.0),
    "fp16": (1e-2, 0.99),
    "bf16": (2e-2, 0.99),
    "int8": (1e-1, 0.99),
}
NOISE = "random"


def openvino_precisions() -> list[str]:
    """The precisions the OpenVINO backend is checked in: fp32, and bf16 where this CPU has it."""
    from .engine.cpu import cpu_info

    return ["fp32", "bf16"] if cpu_info().has_bf16 else ["fp32"]


def _openvino(source: Source, precision: str) -> FileRunner:
    from .engine import open_backend

    backend = open_backend("openvino", source, precision=precision)
    return lambda x: {"logits": backend.logits(x), "member_logits": backend.member_logits(x)}


@dataclass
class ParityRow:
    """One output of one file, on one runtime and input set."""

    file: str
    runtime: str
    precision: str
    scope: str
    output: str = "-"
    inputs: str = "-"
    decisions: int = 0  # what top-1 counts: images (committee or member logits) or members x images
    max_abs_diff: float = float("nan")
    rel_error: float = float("nan")
    top1_agreement: float = float("nan")
    tolerance_rel: float = float("nan")
    tolerance_top1: float = float("nan")
    result: str = "ok"  # ok | FAIL | skipped | info (reported, does not decide)
    note: str = ""


def tolerance(precision: str) -> tuple[float, float]:
    """(max relative error, min top-1 agreement) for `precision`; ValueError when unknown."""
    if precision not in TOLERANCES:
        raise ValueError(f"no parity tolerance for precision {precision!r}; known: {', '.join(TOLERANCES)}")
    return TOLERANCES[precision]


def load_images(path: str | os.PathLike, img_size: int, in_chans: int, count: int) -> np.ndarray:
    """Up to `count` images from a `.npy` file, (N, H, W, C) or (N, C, H, W), checked as the engine does."""
    from .engine import check_images

    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: expected a .npy file of images, could not read it: {err}") from err
    return check_images(array[:count], img_size, in_chans)


def real_images(manifest: ExportManifest, count: int, data_dir: str | None = None) -> tuple[str, np.ndarray] | None:
    """(name, images) of the data set the export's checkpoints were trained on (validation split),
    or None when their metadata names none or it cannot be read here."""
    from .models import load_facts
    from .training.data import load_dataset

    names = set()
    for entry in manifest.find(format="safetensors"):
        dataset = load_facts(manifest.path_of(entry)).get("dataset")
        if dataset and dataset != "synthetic":
            names.add(dataset)
    if len(names) != 1:
        return None
    (name,) = names
    try:
        images, _ = load_dataset(name, "val", data_dir=data_dir, limit=count)
    except (FileNotFoundError, ValueError, OSError):
        return None
    images = images.numpy()
    return (name, images) if images.shape[1:] == (manifest.in_chans, manifest.img_size, manifest.img_size) else None


def compare(got: np.ndarray, ref: np.ndarray) -> tuple[float, float, float, int]:
    """(max abs diff, relative error, top-1 agreement, decisions counted) of (..., N, C) logits."""
    diff = float(np.abs(got.astype(np.float64) - ref).max())
    rel = diff / max(float(np.abs(ref).max()), 1e-12)
    a, b = got.reshape(-1, got.shape[-1]).argmax(1), ref.reshape(-1, ref.shape[-1]).argmax(1)
    return diff, rel, float((a == b).mean()), len(a)


def _reference(models: list[Any], images: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(images)
        return torch.stack([m(x) for m in models]).numpy()  # (M, N, C)


def _judge(row: ParityRow, decides: bool, top1_decides: bool) -> ParityRow:
    if not decides:
        row.result, row.note = "info", "random images: reported, real images decide"
        return row
    ok = row.rel_error <= row.tolerance_rel and (not top1_decides or row.top1_agreement >= row.tolerance_top1)
    row.result = "ok" if ok else "FAIL"
    if not top1_decides:
        row.note = "no real images: relative error decides, top-1 on noise does not (pass --images)"
    return row


def _rows_for(
    base: dict[str, Any], run: FileRunner, scope: Any, sets: dict[str, np.ndarray], refs: dict[str, np.ndarray]
) -> list[ParityRow]:
    rel_tol, top1_tol = tolerance(base["precision"])
    has_real = any(name != NOISE for name in sets)
    rows = []
    for name, images in sets.items():
        out = run(images.astype(np.float32))
        ref = refs[name]
        if scope == COMMITTEE:
            pairs = [("logits", out["logits"], soft_committee(ref))]
            if "member_logits" in out:
                pairs.append(("member_logits", out["member_logits"], ref))
        else:
            pairs = [("logits", out["logits"], ref[int(scope)])]
        for output, got, want in pairs:
            diff, rel, top1, n = compare(got, want)
            row = ParityRow(**base, output=output, inputs=name, decisions=n, max_abs_diff=diff, rel_error=rel,
                            top1_agreement=top1, tolerance_rel=rel_tol, tolerance_top1=top1_tol)  # fmt: skip
            decides = name != NOISE or not has_real
            rows.append(_judge(row, decides, top1_decides=name != NOISE))
    return rows


def verify_export(
    directory: str | os.PathLike,
    count: int = 64,
    seed: int | None = None,
    images: str | os.PathLike | None = None,
    data_dir: str | None = None,
    progress: bool = False,
    real_count: int = 1024,
) -> list[ParityRow]:
    """Parity rows for every exported file at `directory` (hashes verified first) on its runtimes.

    Args:
        count: random images.
        real_count: real images at most (the whole validation split of a small data set: with
            64 images one flipped decision is already 1.6 %, over the 1 % a 99 % bar allows).
        seed: seed of the random images (default: fresh ones each run).
        images: a `.npy` file of real images; default: the checkpoints' data set, when known.
        data_dir: where that data set lives, for those that are not embedded (CIFAR-100).
    """
    from tqdm import tqdm

    from .engine import BackendUnavailable, Source, file_runtime, open_file

    manifest = read_manifest(directory)
    for entry in manifest.files:
        if entry.format != "safetensors":
            tolerance(entry.precision)  # an unknown precision is an error, before any work
    source = Source(specs=manifest.specs, manifest=manifest)
    models = source.torch_models()
    rng = np.random.default_rng(seed)
    sets = {NOISE: rng.integers(0, 256, (count, manifest.in_chans, manifest.img_size, manifest.img_size), np.uint8)}
    if images is not None:
        sets[Path(images).stem] = load_images(images, manifest.img_size, manifest.in_chans, real_count)
    elif (real := real_images(manifest, real_count, data_dir)) is not None:
        sets[real[0]] = real[1]
    refs = {name: _reference(models, batch) for name, batch in sets.items()}

    jobs: list[tuple[dict[str, Any], FileEntry, Callable[[], FileRunner]]] = []
    for entry in manifest.files:
        if entry.format == "safetensors":
            continue  # the reference itself
        base = dict(file=entry.path, precision=entry.precision, scope=str(entry.scope))
        runtime = file_runtime(entry.format)
        jobs.append(({**base, "runtime": runtime}, entry, lambda e=entry: open_file(manifest.path_of(e), e)))
        if entry.format == "onnx" and entry.scope == COMMITTEE and entry.precision == "fp32":
            for p in openvino_precisions():
                jobs.append(({**base, "runtime": "openvino", "precision": p}, entry, lambda p=p: _openvino(source, p)))

    rows: list[ParityRow] = []
    for base, entry, make in tqdm(jobs, desc="verify", disable=not progress):
        try:
            run = make()
        except (BackendUnavailable, ImportError) as err:
            rows.append(ParityRow(**base, result="skipped", note=str(err).splitlines()[0]))
            continue
        rows.extend(_rows_for(base, run, entry.scope, sets, refs))
    return rows


def rows_as_dicts(rows: list[ParityRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
