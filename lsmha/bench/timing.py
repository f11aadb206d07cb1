"""Timing a call: warm-up, then repeated calls until a time budget, CUDA events on GPU.

Two figures per call on a GPU: the event-timed latency (one call, then a sync: what a
caller waiting for its answer sees, CPU launch overhead included) and the back-to-back
time (many calls queued without a sync, events around all of them: the GPU's own time
per call once the CPU runs ahead). Where the two differ, the CPU is the bottleneck.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Timing:
    """Per-call latencies in milliseconds and their summary; `back_to_back_ms`: per-call time
    of calls queued back to back (None: not measured)."""

    samples_ms: tuple[float, ...]
    back_to_back_ms: float | None = None

    @property
    def median_ms(self) -> float:
        return float(np.median(self.samples_ms))

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 90))

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 99))


def back_to_back_ms(fn: Callable[[], object], device: str, calls: int) -> float:
    """Per-call milliseconds of `calls` calls issued without waiting in between (CUDA events
    around all of them on a GPU, the wall clock on a CPU)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) * 1e3 / calls


def time_call(
    fn: Callable[[], object],
    device: str = "cpu",
    warmup: int = 3,
    min_repeats: int = 5,
    max_repeats: int = 200,
    budget_s: float = 2.0,
    warmup_s: float = 0.0,
    back_to_back: bool = False,
    idle_s: float = 0.1,
) -> Timing:
    """Time `fn()` after `warmup` calls and then at least `warmup_s` seconds of calls (clocks
    and caches settle after a compile); repeat at least `min_repeats` times and until
    `budget_s` seconds or `max_repeats` calls. On CUDA each call is timed with its own pair
    of events (GPU time of the stream, launch overhead included). `back_to_back`: also time
    calls queued without a sync (about a tenth of `budget_s` more, 5 to 200 calls).

    On a CPU, `idle_s` seconds of sleep come first: runtimes in one process spin their worker
    threads for a while after each call (ONNX Runtime's intra-op pool, OpenVINO's TBB arena),
    and a row timed right after another runtime's row would share the cores with them
    (Table 6 at batch 1, one call per runtime in turn: lsmha's OpenVINO backend ran at 0.89x
    stock OpenVINO with no pause, 1.09x with 50 ms; ONNX Runtime itself 2.2x faster)."""
    cuda = str(device).startswith("cuda")
    if not cuda and idle_s > 0:
        time.sleep(idle_s)
    for _ in range(warmup):
        fn()
    settle = time.perf_counter()
    while time.perf_counter() - settle < warmup_s:
        fn()
        if cuda:
            torch.cuda.synchronize()
    if cuda:
        torch.cuda.synchronize()
    samples: list[float] = []
    start_all = time.perf_counter()
    while len(samples) < max_repeats and (len(samples) < min_repeats or time.perf_counter() - start_all < budget_s):
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    b2b = None
    if back_to_back:
        calls = int(np.clip(0.1 * budget_s * 1e3 / max(float(np.median(samples)), 1e-3), 5, 200))
        b2b = back_to_back_ms(fn, device, calls)
    return Timing(tuple(samples), b2b)
