"""Parity: every exported file against the torch committee, on fresh inputs.

For each file of the export manifest that has a runner (ONNX here; other
exporters register theirs with `register_file_runner`), on random uint8 images
and, when `lsmha.training.data` is importable, the digits validation set:
max abs logit difference, relative error (max abs diff / max abs reference
logit), top-1 agreement with the torch reference. Tolerances per precision
(`TOLERANCES`); a file over tolerance fails the check.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import COMMITTEE, ExportManifest, FileEntry, read_manifest
from ..cli_help import HelpFormatter

# precision -> (max relative error, min top-1 agreement)
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 1.0),
    "fp16": (1e-2, 0.99),
    "bf16": (1e-2, 0.99),
    "int8": (1e-1, 0.99),
}

FileRunner = Callable[[np.ndarray], dict[str, np.ndarray]]  # float32 NCHW -> output name -> array
RunnerFactory = Callable[[Path, FileEntry], FileRunner]
_RUNNERS: dict[str, RunnerFactory] = {}


def register_file_runner(format: str, factory: RunnerFactory) -> None:
    """Let `verify` run files of `format` ("plan", "pt2", ...). The factory may raise
    `lsmha.engine.BackendUnavailable` when its package/device is missing: the file is then skipped."""
    _RUNNERS[format] = factory


def _onnx_runner(path: Path, entry: FileEntry) -> FileRunner:
    from ..engine.backends.onnxruntime_backend import OnnxSession

    session = OnnxSession(path, device="cpu")
    return lambda x: dict(zip(session.outputs, session.run(x)))


register_file_runner("onnx", _onnx_runner)


def _pt2_runner(path: Path, entry: FileEntry) -> FileRunner:
    from .aoti import file_runner

    return file_runner(path, entry)


def _plan_runner(path: Path, entry: FileEntry) -> FileRunner:
    from .tensorrt import file_runner

    return file_runner(path, entry)


register_file_runner("pt2", _pt2_runner)
register_file_runner("plan", _plan_runner)


@dataclass
class ParityRow:
    """One file on one input set."""

    file: str
    format: str
    precision: str
    scope: str
    inputs: str
    images: int
    max_abs_diff: float
    rel_error: float
    top1_agreement: float
    tolerance_rel: float
    tolerance_top1: float
    ok: bool
    note: str = ""


def input_sets(
    count: int = 64, seed: int | None = None, img_size: int = 32, in_chans: int = 3
) -> dict[str, np.ndarray]:
    """Fresh random uint8 images (a new seed each call unless given) and, if
    available, up to `count` digits validation images: name -> (N, C, H, W) uint8."""
    rng = np.random.default_rng(seed)
    sets = {"random": rng.integers(0, 256, (count, in_chans, img_size, img_size), dtype=np.uint8)}
    try:
        from ..training.data import load_dataset
    except ImportError:
        return sets
    try:
        images, _ = load_dataset("digits", "val", limit=count)
    except (FileNotFoundError, ValueError, OSError):
        return sets
    images = images.numpy()
    if images.shape[1:] == (in_chans, img_size, img_size):
        sets["digits"] = images
    return sets


def _reference(models: list[Any], images: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(images)
        return torch.stack([m(x) for m in models]).numpy()  # (M, N, C)


def compare(got: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """(max abs diff, relative error, top-1 agreement) of (..., N, C) logits."""
    diff = float(np.abs(got.astype(np.float64) - ref).max())
    rel = diff / max(float(np.abs(ref).max()), 1e-12)
    top1 = float((got.reshape(-1, got.shape[-1]).argmax(1) == ref.reshape(-1, ref.shape[-1]).argmax(1)).mean())
    return diff, rel, top1


def verify_export(
    directory: str | os.PathLike,
    count: int = 64,
    seed: int | None = None,
    sets: dict[str, np.ndarray] | None = None,
    progress: bool = False,
) -> list[ParityRow]:
    """Parity rows for every runnable file in the export at `directory` (hashes verified first)."""
    from tqdm import tqdm

    from ..engine.backends import BackendUnavailable, Source

    manifest: ExportManifest = read_manifest(directory)
    models = Source(specs=manifest.specs, manifest=manifest).torch_models()
    if sets is None:
        sets = input_sets(count, seed, manifest.img_size, manifest.in_chans)
    refs = {name: _reference(models, images) for name, images in sets.items()}
    rows: list[ParityRow] = []
    for entry in tqdm(manifest.files, desc="verify", disable=not progress):
        if entry.format == "safetensors":
            continue  # the reference itself
        rel_tol, top1_tol = TOLERANCES.get(entry.precision, TOLERANCES["fp16"])
        base = dict(file=entry.path, format=entry.format, precision=entry.precision, scope=str(entry.scope))
        factory = _RUNNERS.get(entry.format)
        try:
            if factory is None:
                raise BackendUnavailable(f"no parity runner registered for format {entry.format!r}")
            run = factory(manifest.path_of(entry), entry)
        except (BackendUnavailable, ImportError) as err:
            rows.append(ParityRow(**base, inputs="-", images=0, max_abs_diff=float("nan"), rel_error=float("nan"),
                                  top1_agreement=float("nan"), tolerance_rel=rel_tol, tolerance_top1=top1_tol,
                                  ok=True, note=f"skipped: {err}"))  # fmt: skip
            continue
        for name, images in sets.items():
            out = run(images.astype(np.float32))
            ref = refs[name]
            if entry.scope == COMMITTEE:
                got, want = [out["logits"]], [ref.sum(0)]
                if "member_logits" in out:
                    got.append(out["member_logits"])
                    want.append(ref)
            else:
                got, want = [out["logits"]], [ref[int(entry.scope)]]
            stats = [compare(g, w) for g, w in zip(got, want)]
            diff = max(s[0] for s in stats)
            rel = max(s[1] for s in stats)
            top1 = min(s[2] for s in stats)
            ok = rel <= rel_tol and top1 >= top1_tol
            stats_row = dict(max_abs_diff=diff, rel_error=rel, top1_agreement=top1)
            tol = dict(tolerance_rel=rel_tol, tolerance_top1=top1_tol)
            rows.append(ParityRow(**base, inputs=name, images=len(images), **stats_row, **tol, ok=ok))
    return rows


def rows_as_dicts(rows: list[ParityRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def register(sub: Any) -> None:
    """The `lsmha-export verify` subcommand."""

    p = sub.add_parser(
        "verify",
        help="parity of every exported file against the torch committee",
        description=(
            "Run every exported file and the torch committee (from the export's safetensors) on fresh random "
            "uint8 images and the digits validation set when available; report max abs logit difference, "
            "relative error and top-1 agreement. Exit 1 when a file is over its tolerance "
            + ", ".join(f"{k}: rel<={r:g}, top1>={t:.0%}" for k, (r, t) in TOLERANCES.items())
            + "."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("directory", type=Path, help="export directory (holding manifest.json)")
    p.add_argument("--count", type=int, default=64, help="images per input set")
    p.add_argument("--seed", type=int, default=None, help="seed of the random images (default: fresh)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_cli)


def run_cli(args: Any) -> int:
    import sys

    from .cli import format_table, write_json

    if args.count < 1:
        print(f"error: --count must be >= 1, got {args.count}", file=sys.stderr)
        return 2
    try:
        rows = verify_export(args.directory, args.count, args.seed, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    headers = ["file", "precision", "scope", "inputs", "N", "max|diff|", "rel err", "top-1", "tol rel", "tol top-1"]
    table = [
        [r.file, r.precision, r.scope, r.inputs, r.images, r.max_abs_diff, r.rel_error, r.top1_agreement,
         r.tolerance_rel, r.tolerance_top1, "ok" if r.ok else "FAIL", r.note]
        for r in rows
    ]  # fmt: skip
    print(format_table(headers + ["result", "note"], table))
    write_json(args.json, rows_as_dicts(rows))
    failed = [r for r in rows if not r.ok]
    print(f"{len(rows) - len(failed)}/{len(rows)} rows within tolerance")
    return 1 if failed else 0
