"""`lsmha-bench latency`: a committee against CCT-7/3x1, per backend and batch, in one run.

Weights are random: latency does not depend on trained values. The ratio
committee / baseline is taken within the same run, backend and batch.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import torch
from tqdm import tqdm

from ..models import CCT, CCTSpec, count_macs, count_params, layer_latency
from .backends import BACKENDS, Runner, make_runner
from .timing import time_call


@dataclass
class LatencyRow:
    model: str
    members: int
    params: int
    gmac_per_image: float
    paper_layers: int
    backend: str
    batch: int
    median_ms: float
    p90_ms: float
    images_per_s: float
    tflops: float
    pct_peak: float | None = None
    ratio_vs_baseline: float | None = None
    note: str = ""


def time_row(
    group: str,
    models: list[CCT],
    backend: str,
    runner: Runner,
    batch: int,
    device: torch.device,
    rng: np.random.Generator,
    warmup: int = 3,
    budget_s: float = 2.0,
    peak_tflops: float | None = None,
) -> LatencyRow:
    """Time `runner` on one random uint8 batch and describe it as a row (`peak_tflops`:
    the card's dense bf16 peak, for the % column; None on a CPU)."""
    specs = [m.spec for m in models]
    spec = specs[0]
    images = rng.integers(0, 256, (batch, spec.in_chans, spec.img_size, spec.img_size), dtype=np.uint8)
    timing = time_call(partial(runner.run, runner.prepare(images)), str(device), warmup=warmup, budget_s=budget_s)
    seconds = timing.median_ms / 1e3
    macs = sum(count_macs(s) for s in specs)
    tflops = 2 * macs * batch / seconds / 1e12
    return LatencyRow(
        model=group,
        members=len(specs),
        params=sum(count_params(m) for m in models),
        gmac_per_image=macs / 1e9,
        paper_layers=max(layer_latency(s) for s in specs),
        backend=backend,
        batch=batch,
        median_ms=timing.median_ms,
        p90_ms=timing.p90_ms,
        images_per_s=batch / seconds,
        tflops=tflops,
        pct_peak=100 * tflops / peak_tflops if peak_tflops else None,
        note=runner.note,
    )


def build_members(specs: list[CCTSpec], seed: int = 0) -> list[CCT]:
    torch.manual_seed(seed)
    return [CCT(s).eval() for s in specs]


def machine_facts(device: torch.device) -> dict[str, str]:
    facts = {
        "torch": torch.__version__,
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": str(torch.get_num_threads()),
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def run_latency(
    groups: dict[str, list[CCTSpec]],
    backends: list[str],
    batches: list[int],
    device: torch.device,
    baseline: str,
    warmup: int = 3,
    budget_s: float = 2.0,
    seed: int = 0,
    progress: bool = True,
) -> list[LatencyRow]:
    """Time every group (name -> member specs) on every backend and batch.

    Args:
        groups: e.g. {"cct_7_3x1": [spec], "committee": [5 specs]}.
        backends: names from `lsmha.bench.backends.BACKENDS`.
        batches: batch sizes.
        device: where to run.
        baseline: the group every other group's ratio is taken against.
    """
    for name in backends:
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    if baseline not in groups:
        raise ValueError(f"baseline {baseline!r} is not one of the timed groups {list(groups)}")
    rng = np.random.default_rng(seed)
    rows: list[LatencyRow] = []
    jobs = [(g, b) for g in groups for b in backends]
    bar = tqdm(total=len(jobs) * len(batches), desc="latency", disable=not progress, leave=False)
    for group, backend in jobs:
        models = build_members(groups[group], seed)
        runner = make_runner(backend, models, device, max(batches))
        for batch in batches:
            bar.set_postfix_str(f"{group} {backend} b{batch}")
            rows.append(time_row(group, models, backend, runner, batch, device, rng, warmup, budget_s))
            bar.update()
        del runner, models
    bar.close()
    base = {(r.backend, r.batch): r.median_ms for r in rows if r.model == baseline}
    for r in rows:
        r.ratio_vs_baseline = r.median_ms / base[(r.backend, r.batch)]
    return rows


def crossover(rows: list[LatencyRow], group: str, baseline: str) -> dict[str, int | None]:
    """Per backend: the largest timed batch at which `group` is still faster than `baseline`."""
    out: dict[str, int | None] = {}
    for backend in dict.fromkeys(r.backend for r in rows):
        faster = [r.batch for r in rows if r.backend == backend and r.model == group and (r.ratio_vs_baseline or 2) < 1]
        out[backend] = max(faster) if faster else None
    return out


def rows_as_dicts(rows: list[LatencyRow]) -> list[dict]:
    return [asdict(r) for r in rows]
