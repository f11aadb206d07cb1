"""`lsmha-export aoti`: compile the committee (or each member) into an AOTInductor `.pt2` package."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..artifacts import MANIFEST
from ..artifacts.compiled import PT2_MAX_BATCH as MAX_BATCH
from ..artifacts.compiled import PT2_PRECISIONS
from ..cli_help import CliError, HelpFormatter
from ..tables import format_table, write_json

HELP = "compile the committee (or each member) into an AOTInductor .pt2 package"
DESCRIPTION = (
    "torch.export the committee graph (standardisation once, all members, their sum; dynamic batch) and "
    "compile it with AOTInductor into committee.<device>.pt2 in an export directory (made by "
    "`lsmha-export onnx`, or started here with --from). The package runs only on the torch build and "
    "CPU ISA / GPU it was compiled for; both are recorded in manifest.json and checked at load."
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("aoti", help=HELP, description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("directory", type=Path, help="export directory (holding manifest.json, or new with --from)")
    p.add_argument(
        "--from", dest="sources", nargs="+", default=None, metavar="SOURCE",
        help="start a new export directory from a committee.json, .safetensors files or model names",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="with --from: clear an earlier export in the directory first")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device the package is compiled for")
    p.add_argument("--precision", default="fp32", choices=sorted(PT2_PRECISIONS), help="members' arithmetic")
    p.add_argument("--members", action="store_true", help="one package per member instead of one for the committee")
    p.add_argument("--max-batch", type=int, default=MAX_BATCH, help="largest batch the package accepts")
    p.add_argument("--json", type=Path, default=None, help="also write the new manifest entries to this file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from .aoti import cannot_build, export_aoti_dir
    from .directory import write_weights
    from .onnx_cli import load_members

    has_manifest = (args.directory / MANIFEST).is_file()
    if not args.sources and not has_manifest:
        raise CliError.usage(
            f"{args.directory} has no {MANIFEST}; export first (`lsmha-export onnx SOURCES -o {args.directory}`) "
            "or start it here with --from SOURCES"
        )
    if args.force and not args.sources:
        raise CliError.usage("--force clears the directory before --from SOURCES starts it; it needs --from")
    if not 1 <= args.max_batch <= MAX_BATCH:
        raise CliError.usage(f"--max-batch must be in 1..{MAX_BATCH}, got {args.max_batch}")
    if why := cannot_build(args.device):
        raise CliError.environment(why)
    if args.sources:
        try:
            write_weights(load_members(args.sources), args.directory, force=args.force)
        except FileExistsError as err:
            raise CliError.usage(f"{err}; or drop --from to add packages to the export there") from None
    try:
        entries = export_aoti_dir(
            args.directory, device=args.device, precision=args.precision, members=args.members,
            max_batch=args.max_batch, progress=not args.no_progress,
        )  # fmt: skip
    except RuntimeError as err:
        raise CliError(str(err)) from None
    rows = [
        [e.path, e.extra["device"], e.extra.get("cpu_isa") or e.extra.get("compute_capability"), e.precision,
         e.scope, e.extra["compile_s"], (Path(args.directory) / e.path).stat().st_size >> 10, e.sha256[:12]]
        for e in entries
    ]  # fmt: skip
    print(format_table(["file", "device", "isa/cc", "precision", "scope", "compile s", "KiB", "sha256"], rows))
    print(f"torch {torch.__version__}; recorded in {Path(args.directory) / MANIFEST}")
    write_json(args.json, [e.to_dict() for e in entries])
    return 0
