"""Table-1-style SHP tables as markdown, CSV and JSON.

Columns follow the paper's Table 1 (Block, Attn. Acc., N_c, C_s, Diag, n, N_label,
N_noise, N_inter, SNR) with the block's head count H added, as in Table 2. Rows run
from the last block to the first, as the paper prints them.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .clusters import BlockRow

# (header, BlockRow attribute, format)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("Block", "block", "{}"),
    ("H", "heads", "{}"),
    ("Attn. Acc.", "attn_acc", "{:.3f}"),
    ("N_c", "n_c", "{:.1f}"),
    ("C_s", "c_s", "{:.2f}"),
    ("Diag", "diag", "{:.1f}"),
    ("n", "n", "{:.1f}"),
    ("N_label", "n_label", "{:.2f}"),
    ("N_noise", "n_noise", "{:.4f}"),
    ("N_inter", "n_inter", "{:.4f}"),
    ("SNR", "snr", "{:.1f}"),
)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return "∞" if value > 0 else "—"
    return fmt.format(value)


def _ordered(rows: Iterable[BlockRow]) -> list[BlockRow]:
    return sorted(rows, key=lambda r: (r.theta, -(r.block or 0)))


def markdown_table(rows: Sequence[BlockRow], title: str | None = None) -> str:
    """One markdown table per threshold θ, each under a heading line."""
    parts: list[str] = [f"# {title}\n"] if title else []
    for theta in sorted({r.theta for r in rows}):
        group = [r for r in _ordered(rows) if r.theta == theta]
        parts.append(f"## θ = {theta:g}\n")
        parts.append("| " + " | ".join(h for h, _, _ in COLUMNS) + " |")
        parts.append("|" + "|".join("---:" for _ in COLUMNS) + "|")
        for r in group:
            parts.append("| " + " | ".join(_cell(getattr(r, a), f) for _, a, f in COLUMNS) + " |")
        flagged = [(r.block, r.degenerate_heads) for r in group if r.degenerate_heads]
        if flagged:
            parts.append("")
            for block, heads in flagged:
                parts.append(
                    f"Block {block}: heads {list(heads)} have a non-positive maximum and were not normalised "
                    "(counted with nothing above threshold)."
                )
        parts.append("")
    return "\n".join(parts)


def csv_table(rows: Sequence[BlockRow]) -> str:
    """All rows, full precision, one line per (θ, block)."""
    buf = io.StringIO()
    fields = ["theta", "block", "heads", "labels", "attn_acc", "n_c", "c_s", "diag", "n"]
    fields += ["n_label", "n_noise", "n_inter", "snr", "degenerate_heads"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in _ordered(rows):
        d = r.to_dict()
        d["degenerate_heads"] = " ".join(map(str, r.degenerate_heads))
        writer.writerow({k: d[k] for k in fields})
    return buf.getvalue()


def jsonable(value: Any) -> Any:
    """`value` with non-finite floats as the strings "inf", "-inf", "nan" (strict JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_json(path: str | os.PathLike, doc: Any) -> Path:
    """Write `doc` as strict JSON (non-finite floats as strings, see `jsonable`) with the one
    JSON writer, `lsmha.artifacts.write_json_atomic`."""
    from ..artifacts.files import write_json_atomic

    return write_json_atomic(path, jsonable(doc))
