"""Triton's statistics extension for the served model: what `GET /v2/models/{name}/stats` and the
gRPC call ModelStatistics answer, in Triton's schema (tritonclient's `get_inference_statistics`).

    success         answered requests; ns: their time from arrival to answer, summed
    fail            failed requests (any error but an unknown model); ns likewise
    queue           per request that reached a batch: time waiting for it
    compute_infer   per request that reached a batch: its batch's time in the committee
    compute_input,  0: decoding happens before the queue (it is part of success/fail time),
    compute_output  encoding after the batch
    inference_count images answered; execution_count: batches run
    batch_stats     per executed batch size: batches and their committee time

Counts are plain integers updated on the event loop (the batcher records on it too), so no lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Duration:
    """Triton's `StatisticDuration`: how many, and their nanoseconds summed."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += max(0, round(seconds * 1e9)) * count

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class InferenceStatistics:
    """Cumulative inference statistics of one model since the server started."""

    def __init__(self) -> None:
        self.success, self.fail, self.queue, self.compute_infer = Duration(), Duration(), Duration(), Duration()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.batches: dict[int, Duration] = {}

    def answered(self, images: int, seconds: float) -> None:
        """A request of `images` images answered `seconds` after it arrived."""
        self.success.add(seconds)
        self.inference_count += images
        self.last_inference_ms = int(time.time() * 1e3)

    def failed(self, seconds: float) -> None:
        self.fail.add(seconds)

    def batch(self, images: int, compute_s: float, queue_s: list[float]) -> None:
        """One executed batch of `images` images that took `compute_s` in the committee, holding
        requests that waited `queue_s` each."""
        self.execution_count += 1
        self.batches.setdefault(images, Duration()).add(compute_s)
        self.compute_infer.add(compute_s, count=len(queue_s))
        for waited in queue_s:
            self.queue.add(waited)

    def to_dict(self, name: str, version: str) -> dict[str, Any]:
        """One entry of `model_stats`, as Triton writes it in JSON."""
        zero = Duration().to_dict()
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_dict(),
                "fail": self.fail.to_dict(),
                "queue": self.queue.to_dict(),
                "compute_input": zero,
                "compute_infer": self.compute_infer.to_dict(),
                "compute_output": zero,
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {"batch_size": size, "compute_input": zero, "compute_infer": d.to_dict(), "compute_output": zero}
                for size, d in sorted(self.batches.items())
            ],
        }
