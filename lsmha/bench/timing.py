"""Timing a call: warm-up, then repeated calls until a time budget, CUDA events on GPU."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Timing:
    """Per-call latencies in milliseconds and their summary."""

    samples_ms: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return float(np.median(self.samples_ms))

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 90))

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 99))


def time_call(
    fn: Callable[[], object],
    device: str = "cpu",
    warmup: int = 3,
    min_repeats: int = 5,
    max_repeats: int = 200,
    budget_s: float = 2.0,
) -> Timing:
    """Time `fn()` after `warmup` calls; repeat at least `min_repeats` times and
    until `budget_s` seconds or `max_repeats` calls. On CUDA each call is timed
    with its own pair of events (GPU time of the stream, launch overhead included)."""
    cuda = str(device).startswith("cuda")
    for _ in range(warmup):
        fn()
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
    return Timing(tuple(samples))
