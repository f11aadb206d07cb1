"""What the command-line tools print and write: plain-text tables for the terminal, JSON reports."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Right-aligned columns, a rule under the header.

    Cells: None and NaN as "-", booleans as yes/no, integers with thousands separators, floats
    with three significant digits below 10, one decimal below 100, none (with separators) above."""
    cells = [[str(h) for h in headers]] + [[format_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_cell(value: object) -> str:
    """One table cell (see `format_table`)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_json(path: str | os.PathLike | None, doc: Any) -> None:
    """A command's `--json PATH`: `doc` written by `lsmha.artifacts.write_json_atomic` (the one
    JSON writer: atomic, indented, parents created); nothing when `path` is None (not asked for)."""
    if path is not None:
        from .artifacts.files import write_json_atomic

        write_json_atomic(path, doc)
