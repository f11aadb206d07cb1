"""What `lsmha-bench gpu` reports: its rows, the committee/baseline ratios, the crossover,
and where the result file goes."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..tables import format_table
from .gpu_plan import BASELINE, ENGINE, GROUPS, STOCK, STOCK_COMMITTEE
from .latency import LatencyRow

# bf16 dense tensor-core peak (TFLOP/s, no sparsity), first match on the device name wins
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("RTX 6000 Ada", 364.0),
    ("A6000", 155.0),
)


def bf16_peak_tflops(device_name: str) -> float | None:
    """The card's bf16 dense peak in TFLOP/s, None when the name is not in `BF16_PEAK_TFLOPS`."""
    for key, peak in BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


@dataclass
class GpuRow(LatencyRow):
    """A latency row plus the back-to-back GPU time per call (`gpu_ms`) and the job it came from."""

    gpu_ms: float | None = None
    job: str = ""


# (name, numerator (group, runner, batch), denominator, how to read it); batch None: the largest timed
RATIOS: tuple[tuple[str, tuple[str, str, int | None], tuple[str, str, int | None], str], ...] = (
    ("committee-5 engine / CCT-7/3x1 stock, batch 1", ("committee-5", ENGINE, 1), (BASELINE, STOCK, 1),
     "< 1: the engine's committee answers faster than stock CCT-7/3x1"),
    ("committee-5 stock / CCT-7/3x1 stock, batch 1", ("committee-5", STOCK_COMMITTEE, 1), (BASELINE, STOCK, 1),
     "the committee's cost with stock tools alone (reference: 1.35)"),
    ("CCT-7/3x1 stock / engine, batch 1", (BASELINE, STOCK, 1), (BASELINE, ENGINE, 1),
     "> 1: the engine runs one model faster than stock"),
    ("committee-5 stock / engine, batch 1", ("committee-5", STOCK_COMMITTEE, 1), ("committee-5", ENGINE, 1),
     "> 1: the engine runs the committee faster than stock"),
    ("committee-5 stock / engine, largest batch", ("committee-5", STOCK_COMMITTEE, None),
     ("committee-5", ENGINE, None), "> 1: the engine's throughput beats stock"),
)  # fmt: skip


def ratios(rows: list[GpuRow]) -> list[dict[str, Any]]:
    """The committee/baseline ratios, each with its value (None: a row is missing), on the
    event-timed median and on the back-to-back GPU time."""
    by_key = {(r.model, r.backend, r.batch): r for r in rows}
    largest = max((r.batch for r in rows), default=None)
    out = []
    for name, top, bottom, reading in RATIOS:
        a = by_key.get((top[0], top[1], top[2] or largest))
        b = by_key.get((bottom[0], bottom[1], bottom[2] or largest))
        value = a.median_ms / b.median_ms if a and b else None
        gpu = a.gpu_ms / b.gpu_ms if a and b and a.gpu_ms and b.gpu_ms else None
        out.append({"ratio": name, "value": value, "gpu_time_value": gpu, "reading": reading})
    return out


def set_ratios(rows: list[GpuRow], lever_rows: list[GpuRow]) -> None:
    """Each main row's latency / CCT-7/3x1's (same runner and batch); each lever row's / the
    default engine's (same model, batch 1)."""
    base = {(r.backend, r.batch): r.median_ms for r in rows if r.model == BASELINE}
    for r in rows:
        r.ratio_vs_baseline = r.median_ms / base[(r.backend, r.batch)] if (r.backend, r.batch) in base else None
    engine = {(r.model, r.batch): r.median_ms for r in rows if r.backend == ENGINE}
    for r in lever_rows:
        r.ratio_vs_baseline = r.median_ms / engine[(r.model, r.batch)] if (r.model, r.batch) in engine else None


def crossover(rows: list[GpuRow]) -> dict[str, dict[str, int | None]]:
    """Per committee and runner: the largest timed batch at which it is faster than CCT-7/3x1
    on the same runner (the committees' stock runner against CCT-7/3x1's stock one)."""
    ms = {(r.model, r.backend, r.batch): r.median_ms for r in rows}
    out: dict[str, dict[str, int | None]] = {}
    for group in (g for g in GROUPS if g != BASELINE):
        for runner in dict.fromkeys(r.backend for r in rows if r.model == group):
            base_runner = STOCK if runner == STOCK_COMMITTEE else runner
            timed = [(b, m / ms[(BASELINE, base_runner, b)]) for (g, r, b), m in ms.items()
                     if g == group and r == runner and (BASELINE, base_runner, b) in ms]  # fmt: skip
            if timed:
                faster = [b for b, ratio in timed if ratio < 1]
                out.setdefault(group, {})[runner] = max(faster) if faster else None
    return out


def summary_table(result: dict[str, Any]) -> str:
    """The short table printed last: the committee/baseline ratios."""
    lines = [[r["ratio"], r["value"], r["gpu_time_value"], r["reading"]] for r in result["ratios"]]
    return format_table(["ratio", "latency", "GPU time", "reading"], lines)


def rows_table(rows: list[dict[str, Any]], last: str = "vs CCT-7") -> str:
    headers = ["model", "runner", "batch", "median ms", "p90 ms", "GPU ms", "images/s", "TFLOP/s", "% peak", last]
    keys = ["model", "backend", "batch", "median_ms", "p90_ms", "gpu_ms", "images_per_s", "tflops", "pct_peak"]
    return format_table(headers, [[r[k] for k in keys] + [r["ratio_vs_baseline"]] for r in rows])


def results_path(root: Path, device_name: str) -> Path:
    """<root>/<card>_torch-<version>_<date>.json, names reduced to [a-z0-9.-]."""

    def slug(text: str) -> str:
        return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")

    date = datetime.date.today().isoformat()
    return root / f"{slug(device_name)}_torch-{slug(torch.__version__)}_{date}.json"
