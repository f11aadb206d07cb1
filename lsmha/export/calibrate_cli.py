"""`lsmha-export calibrate`: the adaptive committee's exit thresholds, calibrated on a val split.

It makes sure the export has one fp32 ONNX graph per member (the adaptive committee runs the
members one by one; missing graphs are exported from the directory's own weights), runs every
member on the data set's `val` split through those graphs, calibrates the thresholds
(`lsmha.engine.adaptive.calibrate`) and writes `adaptive.json`, listed and hashed in
manifest.json with the calibration facts, and `adaptive.onnx`, the calibrated rule as one graph
(`lsmha.export.adaptive_graph`). The test split is never read.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..cli_help import CliError, HelpFormatter
from ..metrics import soft_committee
from ..tables import format_table, write_json

SPLIT = "val"


def ensure_member_graphs(directory: str | os.PathLike, progress: bool = False) -> list[str]:
    """Export `member<i>.onnx` (fp32) for every member the export lacks one for, from its
    `member<i>.safetensors`, and list them in the manifest; the paths written."""
    from ..artifacts import add_entries, read_manifest
    from ..engine.backends import Source
    from .onnx import export_scope_onnx

    manifest = read_manifest(directory)
    have = {e.scope for e in manifest.find(format="onnx", precision="fp32")}
    missing = [i for i in range(len(manifest.specs)) if i not in have]
    if not missing:
        return []
    models = Source(specs=manifest.specs, manifest=manifest).torch_models()
    entries = []
    for i in missing:
        if progress:
            print(f"writing member{i}.onnx (fp32), the adaptive committee runs the members one by one")
        entries.append(export_scope_onnx(models, manifest.directory, i, "fp32"))
    add_entries(manifest.directory, entries)
    return [e.path for e in entries]


def member_logits(runner: Any, images: Any, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """(M, N, classes) raw logits of every member of a `MemberBackends` on `images`, in chunks."""
    from tqdm import tqdm

    outs = []
    for i in tqdm(range(0, len(images), batch_size), desc="member logits", disable=not progress):
        chunk = images[i : i + batch_size]
        chunk = chunk.numpy() if hasattr(chunk, "numpy") else np.asarray(chunk)
        outs.append(runner.member_logits(np.ascontiguousarray(chunk)))
    return np.concatenate(outs, axis=1)


def calibrate_export(
    directory: str | os.PathLike,
    dataset: str,
    target: float = 0.999,
    data_dir: str | os.PathLike | None = None,
    order: Sequence[int] | None = None,
    backend: str = "auto",
    limit: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
    int8_images: int | None = None,
    **options: Any,
) -> Any:
    """Calibrate the export in `directory` on `dataset`'s val split and write the thresholds;
    with `int8_images`, also the OpenVINO int8 graph (`lsmha.engine.openvino_int8`), its NNCF
    statistics on the first `int8_images` val images, its agreement with fp32 and its speed
    measured on the split; the int8 facts go into `calibration.facts["int8"]`.

    Args:
        directory: an export directory (`lsmha-export onnx`).
        dataset: "fashion-mnist", "digits", "cifar100" or "synthetic" (`lsmha.training.load_dataset`).
        target: agreement with the full committee to keep on val.
        data_dir: where the data set lives (cifar100, fashion-mnist).
        order: member indices in the order they run (default: cheapest first by MACs).
        backend: what computes the members' logits ("auto": what the adaptive committee will run).
        limit: calibrate on the first `limit` val images only.
        batch_size: images per backend call.
        progress: show progress.
        **options: backend options (threads=..., precision=...).

    Returns:
        The `Calibration` written (also in manifest.json, hashed).
    """
    from ..artifacts import read_manifest
    from ..engine.adaptive import calibrate, check_order, default_order, write_calibration
    from ..engine.adaptive_committee import open_members
    from ..engine.backends import Source
    from ..training import load_dataset
    from .adaptive_graph import write_adaptive_graph

    ensure_member_graphs(directory, progress)
    manifest = read_manifest(directory)
    specs = manifest.specs
    order = default_order(specs) if order is None else check_order(order, len(specs))
    images, labels = load_dataset(dataset, SPLIT, data_dir, **({"limit": limit} if limit else {}))
    if tuple(images.shape[1:]) != (specs[0].in_chans, specs[0].img_size, specs[0].img_size):
        raise ValueError(
            f"{dataset} {SPLIT} images are {tuple(images.shape[1:])}, the committee takes "
            f"({specs[0].in_chans}, {specs[0].img_size}, {specs[0].img_size})"
        )
    if int(labels.max()) >= specs[0].num_classes:
        raise ValueError(
            f"{dataset} has labels up to {int(labels.max())}, the committee {specs[0].num_classes} classes"
        )
    runner = open_members(Source(specs=specs, manifest=manifest), backend, **options)
    try:
        logits = member_logits(runner, images, batch_size, progress)
        name = runner.name
    finally:
        runner.close()
    calibration = calibrate(logits, target, order)
    full = soft_committee(logits).argmax(axis=1)
    calibration.facts = {
        "dataset": dataset,
        "split": SPLIT,
        "backend": name,
        "full_accuracy": float((full == labels.numpy()).mean()),
    }
    write_calibration(manifest.directory, calibration)
    write_adaptive_graph(manifest.directory, calibration)
    if int8_images:
        from ..engine.openvino_int8 import quantize_openvino_int8

        floats = images.numpy().astype(np.float32)
        if progress:
            print(f"quantizing committee.onnx to int8 for OpenVINO (NNCF, {min(int8_images, len(floats))} val images)")
        calibration.facts["int8"] = quantize_openvino_int8(
            manifest.directory, floats[:int8_images], floats, {"dataset": dataset, "split": SPLIT}
        )
    return calibration


HELP = "calibrate the adaptive committee's exit thresholds on a data set's val split"
DESCRIPTION = (
    "Run every member on the val split (never test), choose per stage the smallest margin threshold keeping "
    "agreement with the full committee >= --target (docs/adaptive.md), and write adaptive.json and "
    "adaptive.onnx (the calibrated rule as one graph, which onnxruntime and openvino run in one session), "
    "listed and hashed in manifest.json with the calibration facts. Member graphs missing from the export are written "
    "first (member<i>.onnx). Then: Committee.load(DIR, adaptive=True), lsmha-serve --adaptive."
)


def _order(text: str) -> list[int]:
    try:
        order = [int(i) for i in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected member indices like 2,0,1, got {text!r}") from None
    if not order or min(order) < 0 or len(set(order)) != len(order):
        raise argparse.ArgumentTypeError(f"expected each member index once, none negative, like 2,0,1, got {text!r}")
    return order


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help=HELP, description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("directory", type=Path, help="export directory (lsmha-export onnx)")
    p.add_argument("--dataset", required=True, choices=["fashion-mnist", "digits", "cifar100", "synthetic"])
    p.add_argument("--target", type=float, default=0.999, help="agreement with the full committee to keep on val")
    p.add_argument("--data-dir", type=Path, default=None, help="where the data set lives (cifar100, fashion-mnist)")
    p.add_argument(
        "--order", type=_order, default=None,
        help="member indices in the order they run, e.g. 2,0,1 (default: cheapest first by MACs)",
    )  # fmt: skip
    p.add_argument("--backend", default="auto", help="what computes the members' logits")
    p.add_argument("--threads", type=int, default=None, help="backend threads (default: physical cores)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N val images")
    p.add_argument(
        "--int8", type=int, nargs="?", const=300, default=None, metavar="N",
        help="also quantize the committee graph to int8 for OpenVINO (NNCF statistics on the first N val images, "
        "default 300), measure its agreement with fp32 on val and its speed on this CPU; `auto` takes it only "
        "where it pays (docs/adaptive.md)",
    )  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="also write the calibration to this file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.backends import BackendUnavailable
    from ..models import count_macs

    if args.int8 is not None and args.int8 < 1:
        raise CliError.usage(f"--int8 takes the number of val images for NNCF's statistics (>= 1), got {args.int8}")
    # before anything is written or run: the member graphs, then minutes of logits
    if not 0 < args.target <= 1:
        raise CliError.usage(f"--target is the agreement with the full committee to keep, in (0, 1], got {args.target}")
    if args.limit is not None and args.limit < 1:
        raise CliError.usage(f"--limit takes the number of val images to use (>= 1), got {args.limit}")
    options = {"threads": args.threads} if args.threads else {}
    try:
        cal = calibrate_export(
            args.directory, args.dataset, args.target, args.data_dir, args.order, args.backend, args.limit,
            progress=not args.no_progress, int8_images=args.int8, **options,
        )  # fmt: skip
    except (BackendUnavailable, ImportError) as err:
        raise CliError.environment(str(err)) from None
    from ..artifacts import read_manifest

    specs = read_manifest(args.directory).specs
    rows, reached = [], cal.n
    for k, member in enumerate(cal.order):
        tau = cal.thresholds[k] if k < len(cal.thresholds) else None
        rows.append([
            k + 1, f"{member} {specs[member].name or ''}".strip(), f"{count_macs(specs[member]) / 1e9:.3f}",
            "decides" if tau is None else f"{tau:.4g}", reached, cal.members_run[k],
        ])  # fmt: skip
        reached -= cal.members_run[k]
    print(format_table(["stage", "member", "GMAC", "threshold", "reach", "leave"], rows))
    print(
        f"{cal.facts['dataset']} {cal.facts['split']}: n={cal.n}, target {cal.target}, agreement with the full "
        f"committee {cal.agreement:.4f}, mean members run {cal.mean_members_run:.3f} of {len(cal.order)} "
        f"(backend {cal.facts['backend']})"
    )
    print(
        f"wrote {Path(args.directory) / 'adaptive.json'} and adaptive.onnx, the rule as one graph "
        "(listed and hashed in manifest.json)"
    )
    if "int8" in cal.facts:
        int8 = cal.facts["int8"]
        print(f"wrote committee.int8.xml/.bin: agreement with fp32 on val {int8['agreement_fp32']:.4f} (auto asks >= "
              f"{int8['min_agreement']})")  # fmt: skip
        for cpu, m in int8["measured"].items():
            print(
                f"  {cpu}: int8 against {m['against']}: batch 1 {m['b1']['speedup']:.2f}x, batch 32 "
                f"{m['b32']['speedup']:.2f}x; auto {'takes' if m['auto'] else 'does not take'} it on this CPU kind"
            )
    write_json(args.json, cal.to_dict())
    return 0
