"""SHP tables: markdown layout, CSV, strict JSON with non-finite values."""

from __future__ import annotations

import json
import math

import numpy as np

from lsmha.analysis.clusters import block_row
from lsmha.analysis.tables import csv_table, jsonable, markdown_table, write_json


def rows():
    eye = np.eye(4)
    degenerate = np.full((4, 4), np.nan)
    r7, _ = block_row([eye, eye], 0.3, attn_acc=0.78, block=7)  # no noise at all: SNR = inf
    r1, _ = block_row([eye, degenerate], 0.3, attn_acc=0.31, block=1)
    r7b, _ = block_row([eye, eye], 0.6, attn_acc=0.78, block=7)
    return [r1, r7, r7b]


def test_markdown_orders_blocks_like_the_paper_and_flags_degenerate_heads():
    md = markdown_table(rows(), title="T")
    lines = md.splitlines()
    assert lines[0] == "# T" and "## θ = 0.3" in lines and "## θ = 0.6" in lines
    body = [line for line in lines if line.startswith("| 7") or line.startswith("| 1")]
    assert body[0].startswith("| 7 | 2 | 0.780 | 4.0 | 1.00 | 4.0 | 0.0 | 2.00 | 0.0000 | 0.0000 | ∞ |")
    assert body[1].startswith("| 1 | 2 | 0.310 | 2.0 | 1.00 | 2.0 | 0.0 | 1.00 |")
    assert "Block 1: heads [2] have a non-positive maximum" in md


def test_csv_and_strict_json(tmp_path):
    text = csv_table(rows())
    lines = text.splitlines()
    assert len(lines) == 4 and lines[1].startswith("0.3,7,2,4,0.78,")
    assert lines[2].startswith("0.3,1,2,4,0.31,") and lines[2].endswith(",2")
    doc = {"rows": [r.to_dict() for r in rows()], "x": [math.nan, -math.inf]}
    back = json.loads(write_json(tmp_path / "a" / "s.json", doc).read_text())
    assert back["rows"][1]["snr"] == "inf" and back["x"] == ["nan", "-inf"]
    assert jsonable({"a": (1.0, math.inf)}) == {"a": [1.0, "inf"]}
