"""`lsmha-export`: export committees, check the exports' parity, write a Triton repository.

Each subcommand's module defines `register(subparsers) -> None`, adding its parser with
`set_defaults(func=...)`; the func returns the exit code or raises `CliError`. Adding a
subcommand is one entry in `SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ..cli_help import HelpFormatter, finish_parser, parse_args, run_command
from ..verify_cli import register as add_verify_parser
from . import aoti_cli, calibrate_cli, onnx_cli, tensorrt_cli, triton_cli

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    onnx_cli.register,
    add_verify_parser,
    aoti_cli.register,
    tensorrt_cli.register,
    triton_cli.register,
    calibrate_cli.register,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsmha-export",
        description="Export CCT committees (ONNX with fused attention, AOTInductor, TensorRT) and verify "
        "their parity with torch.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for register in SUBCOMMANDS:
        register(sub)
    return finish_parser(parser)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    return run_command("lsmha-export", args.func, args)


if __name__ == "__main__":
    sys.exit(main())
