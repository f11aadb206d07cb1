"""`lsmha-export tensorrt`: build a TensorRT plan from the exported committee ONNX (or one per member)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..artifacts import MANIFEST
from ..artifacts.compiled import DEFAULT_PROFILE, TENSORRT_INSTALL, BatchProfile
from ..cli_help import CliError, HelpFormatter
from ..tables import format_table, write_json
from .tensorrt import PRECISIONS, TIMING_CACHE, export_tensorrt_dir

HELP = "build a TensorRT plan from the exported committee ONNX (or one per member)"
DESCRIPTION = (
    "Build a TensorRT plan in an export directory (made by `lsmha-export onnx`): the committee graph as "
    "ONE engine, a dynamic batch within --profile, precision from the ONNX types on TensorRT 11 "
    "(export --precision fp16 first) or builder flags on TensorRT 10, the timing cache reused. The plan's "
    "TensorRT version and GPU compute capability go into manifest.json and are checked at load. "
    f"Needs a CUDA GPU and TensorRT: {TENSORRT_INSTALL}."
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tensorrt", help=HELP, description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("directory", type=Path, help="export directory (holding manifest.json and the ONNX files)")
    p.add_argument("--precision", default="fp16", choices=PRECISIONS, help="plan precision")
    p.add_argument(
        "--profile", default=DEFAULT_PROFILE.to_text(),
        help="batch range min,opt,max (kernels tuned for opt), or one batch size",
    )  # fmt: skip
    p.add_argument("--members", action="store_true", help="one plan per member instead of the committee plan")
    p.add_argument("--timing-cache", type=Path, default=None, help=f"timing cache file (default: DIR/{TIMING_CACHE})")
    p.add_argument("--workspace-mib", type=int, default=None, help="builder workspace limit (default: TensorRT's)")
    p.add_argument("--aux-streams", type=int, default=None, help="max auxiliary streams (default: TensorRT decides)")
    p.add_argument("--json", type=Path, default=None, help="also write the new manifest entries to this file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        profile = BatchProfile.parse(args.profile)
    except ValueError as err:
        raise CliError.usage(f"--profile: {err}") from None
    for flag, value in (("--workspace-mib", args.workspace_mib), ("--aux-streams", args.aux_streams)):
        if value is not None and value < 0:
            raise CliError.usage(f"{flag} must be >= 0, got {value}")
    if not (args.directory / MANIFEST).is_file():
        raise CliError.usage(f"{args.directory} has no {MANIFEST}; run `lsmha-export onnx SOURCES -o {args.directory}`")
    try:
        entries = export_tensorrt_dir(
            args.directory, precision=args.precision, profile=profile, members=args.members,
            timing_cache=args.timing_cache, workspace_mib=args.workspace_mib, aux_streams=args.aux_streams,
            progress=not args.no_progress,
        )  # fmt: skip
    except RuntimeError as err:
        raise CliError(str(err)) from None
    rows = [
        [e.path, e.precision, e.scope, BatchProfile.from_dict(e.extra["profile"]).to_text(), e.versions["tensorrt"],
         e.extra["compute_capability"], e.extra["build_s"], e.extra["timing_cache_reused"], e.sha256[:12]]
        for e in entries
    ]  # fmt: skip
    headers = ["file", "precision", "scope", "profile", "tensorrt", "cc", "build s", "cache reused", "sha256"]
    print(format_table(headers, rows))
    write_json(args.json, [e.to_dict() for e in entries])
    return 0
