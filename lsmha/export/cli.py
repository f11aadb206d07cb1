"""`lsmha-export`: export committees and check the exports' parity.

Each subcommand lives in its own module, which defines
`register(subparsers) -> None` (adding its parser with `set_defaults(func=...)`,
the func returning the exit code). Adding one is one line in `SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..cli_help import HelpFormatter

SUBCOMMANDS: list[str] = [
    "lsmha.export.onnx_cli",
    "lsmha.export.verify",
    "lsmha.export.aoti",
    "lsmha.export.tensorrt",
    "lsmha.serving.triton",
]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Right-aligned plain-text columns with a rule under the header."""

    def fmt(v: object) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    cells = [[str(h) for h in headers]] + [[fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: str | os.PathLike | None, doc: Any) -> None:
    """Write `doc` as JSON to `path` (nothing when path is None)."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsmha-export",
        description="Export CCT committees (ONNX with fused attention, ...) and verify their parity with torch.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
