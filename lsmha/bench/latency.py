"""`lsmha-bench latency`: a committee against CCT-7/3x1, per backend and batch, in one run.

Weights are random: latency does not depend on trained values. The ratio
committee / baseline is taken within the same run, backend and batch.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import platform
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..models import CCT, CCTSpec, count_macs, count_params, layer_latency
from .backends import RUNNERS, make_runner
from .timing import Timing, time_call


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
    calls: int = 0


def describe_row(
    group: str,
    models: list[CCT],
    backend: str,
    batch: int,
    timing: Timing,
    note: str = "",
    peak_tflops: float | None = None,
) -> LatencyRow:
    """A row from measured per-call latencies: sizes, counts, throughput and efficiency."""
    specs = [m.spec for m in models]
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
        note=note,
        calls=len(timing.samples_ms),
    )


def build_members(specs: list[CCTSpec], seed: int = 0) -> list[CCT]:
    torch.manual_seed(seed)
    return [CCT(s).eval() for s in specs]


def machine_facts(device: torch.device) -> dict[str, Any]:
    """Where a run happened: versions, device, and the CPU's model, kind and ISA flags (which decide
    the CPU kernels, so every CPU number is recorded with them)."""
    from ..engine.cpu import cpu_info, physical_cores

    cpu = cpu_info()
    facts: dict[str, Any] = {
        "torch": torch.__version__,
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu.model,
        "cpu_kind": cpu.kind,
        "isa_flags": list(cpu.flags or ()),
        "physical_cores": str(physical_cores()),
        "threads": str(torch.get_num_threads()),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    for package in ("onnxruntime", "openvino"):
        with contextlib.suppress(ImportError):  # a package not installed is simply not listed
            facts[package] = importlib.import_module(package).__version__.split("-")[0]
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
    rounds: int = 3,
    min_calls: int = 5,
) -> list[LatencyRow]:
    """Time every group (name -> member specs) on every backend and batch.

    Every row is timed in `rounds` passes over all rows (the order reversed on every
    other pass) and its samples pooled: on a shared machine a slow phase then spreads
    over all rows instead of landing on one, so ratios within the run stay fair.
    The first pass warms each row up with `warmup` calls, later passes with one.

    Args:
        groups: e.g. {"cct_7_3x1": [spec], "committee": [5 specs]}.
        backends: names from `lsmha.bench.backends.RUNNERS`.
        batches: batch sizes.
        device: where to run.
        baseline: the group every other group's ratio is taken against.
        budget_s: seconds of timed calls per row, over all passes (at least `min_calls` calls).
        rounds: passes over all rows.
        min_calls: timed calls per row at least, over all passes (rounded up to whole passes).
    """
    for name in backends:
        if name not in RUNNERS:
            raise ValueError(f"unknown backend {name!r}; known: {', '.join(RUNNERS)}")
    if baseline not in groups:
        raise ValueError(f"baseline {baseline!r} is not one of the timed groups {list(groups)}")
    if rounds < 1 or min_calls < 1:
        raise ValueError(f"rounds and min_calls must be >= 1, got {rounds} and {min_calls}")
    rng = np.random.default_rng(seed)
    keys = [(g, b, n) for g in groups for b in backends for n in batches]
    bar = tqdm(
        total=len(keys) * (rounds + 1),
        desc="latency",
        disable=not progress,
        leave=False,
        bar_format="{desc}: {percentage:3.0f}% {n}/{total} steps [{elapsed} elapsed, about {remaining} left]{postfix}",
    )
    members, runners, inputs = {}, {}, {}
    for group in groups:  # every runner alive at once, so the passes can interleave them
        members[group] = build_members(groups[group], seed)
        spec = groups[group][0]
        images = {
            n: rng.integers(0, 256, (n, spec.in_chans, spec.img_size, spec.img_size), dtype=np.uint8) for n in batches
        }
        for backend in backends:
            bar.set_postfix_str(f"building {group} {backend}")
            runners[group, backend] = make_runner(backend, members[group], device, max(batches))
            for n in batches:
                inputs[group, backend, n] = runners[group, backend].prepare(images[n])
                bar.update()
    samples: dict[tuple[str, str, int], list[float]] = {k: [] for k in keys}
    per_round = -(-min_calls // rounds)
    for r in range(rounds):
        for key in keys if r % 2 == 0 else keys[::-1]:
            group, backend, n = key
            bar.set_postfix_str(f"pass {r + 1}/{rounds} {group} {backend} b{n}")
            run = partial(runners[group, backend].run, inputs[key])
            timing = time_call(
                run, str(device), warmup=warmup if r == 0 else 1, min_repeats=per_round, budget_s=budget_s / rounds
            )
            samples[key] += timing.samples_ms
            bar.update()
    bar.close()
    rows = [describe_row(g, members[g], b, n, Timing(tuple(samples[g, b, n])), runners[g, b].note) for g, b, n in keys]
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


SPEEDUP_REFERENCES = ("torch", "openvino-stock")  # what a user has without lsmha's engine


def speedup_rows(rows: list[LatencyRow], references: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    """Per model, batch and backend: reference median ms / backend median ms for each reference
    backend timed in the same run (> 1: the backend is faster)."""
    by_key = {(r.model, r.batch, r.backend): r.median_ms for r in rows}
    out = []
    for r in rows:
        speedup = {
            ref: by_key[r.model, r.batch, ref] / r.median_ms
            for ref in references
            if ref != r.backend and (r.model, r.batch, ref) in by_key
        }
        if speedup:
            out.append({"model": r.model, "batch": r.batch, "backend": r.backend, "speedup": speedup})
    return out


def rows_as_dicts(rows: list[LatencyRow]) -> list[dict]:
    return [asdict(r) for r in rows]
