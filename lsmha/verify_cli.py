"""`lsmha-export verify DIR`: the parity table of `lsmha.verify`, and an exit status that says
whether every listed file was checked and within tolerance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .cli_help import CliError, HelpFormatter
from .tables import format_table, write_json
from .verify import TOLERANCES, rows_as_dicts, verify_export


def register(sub: Any) -> None:
    """Add the `verify` subcommand to an argparse subparsers object."""
    tolerances = "; ".join(f"{k}: rel<={r:g}, top-1>={t:.0%}" for k, (r, t) in TOLERANCES.items())
    p = sub.add_parser(
        "verify",
        help="parity of every exported file, on the engine's runtimes, against the torch committee",
        description=(
            "Run every exported file on the runtime that serves it (ONNX Runtime; the committee graph also on\n"
            "OpenVINO in each precision this CPU runs; AOTInductor; TensorRT) and the torch members from the\n"
            "export's safetensors, on real images (the checkpoints' data set, or --images) and random uint8\n"
            "images. Rows: relative logit error and top-1 agreement per output (committee sum, members).\n"
            "Real images decide; random ones are reported. Exit 1 when a row is over its tolerance, or when a\n"
            f"file could not be checked here (unless --allow-skip).\ntolerances: {tolerances}"
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("directory", type=Path, help="export directory (holding manifest.json)")
    p.add_argument("--count", type=int, default=64, help="random images")
    p.add_argument("--real-count", type=int, default=1024, help="real images at most (digits: its 359 all)")
    p.add_argument("--images", type=Path, default=None, help="a .npy file of real images, (N,H,W,C) or (N,C,H,W)")
    p.add_argument("--data-dir", default=None, help="where the checkpoints' data set lives (CIFAR-100)")
    p.add_argument("--seed", type=int, default=None, help="seed of the random images (default: fresh)")
    p.add_argument("--allow-skip", action="store_true", help="exit 0 even if some file could not be checked here")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_cli)


def run_cli(args: Any) -> int:
    for flag, value in (("--count", args.count), ("--real-count", args.real_count)):
        if value < 1:
            raise CliError.usage(f"{flag} must be >= 1, got {value}")
    rows = verify_export(
        args.directory,
        args.count,
        args.seed,
        args.images,
        args.data_dir,
        progress=not args.no_progress,
        real_count=args.real_count,
    )
    headers = ["file", "runtime", "precision", "scope", "output", "inputs", "decisions", "max|diff|", "rel err",
               "top-1", "tol rel", "tol top-1", "result", "note"]  # fmt: skip
    table = [
        [r.file, r.runtime, r.precision, r.scope, r.output, r.inputs, r.decisions, r.max_abs_diff, r.rel_error,
         r.top1_agreement, r.tolerance_rel, r.tolerance_top1, r.result, r.note]
        for r in rows
    ]  # fmt: skip
    print(format_table(headers, table))
    write_json(args.json, rows_as_dicts(rows))
    counts = {k: sum(r.result == k for r in rows) for k in ("ok", "FAIL", "skipped", "info")}
    print(
        f"{counts['ok']} ok, {counts['FAIL']} failed, {counts['skipped']} skipped, "
        f"{counts['info']} reported (random images)"
    )
    if counts["FAIL"]:
        return 1
    if counts["skipped"] and not args.allow_skip:
        print("some files could not be checked here (see note); --allow-skip accepts that", flush=True)
        return 1
    if not counts["ok"]:
        raise CliError("nothing was checked: the export lists no file lsmha can run")
    return 0
