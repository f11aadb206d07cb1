"""The server's Prometheus metrics (prometheus_client), one registry per server.

lsmha_requests_total{model}    inference requests received; names this server does not
                               serve count under model="_unknown" (a bounded label set)
lsmha_images_total             images answered successfully
lsmha_errors_total{kind}       failed requests: bad_request, unknown_model, payload_too_large,
                               timeout, disconnected, not_ready, queue_full, shutting_down, internal
lsmha_batch_size               histogram: images per executed batch
lsmha_batch_requests           histogram: requests merged into one executed batch
lsmha_queue_seconds            histogram: time a request waited before its batch ran
lsmha_compute_seconds          histogram: time one batch spent in the committee
lsmha_queue_depth              gauge: requests waiting for a batch
lsmha_ready                    gauge: 1 once the committee is loaded and warmed up
lsmha_members_run              histogram: members run per answered image (adaptive servers only)
"""

from __future__ import annotations

import contextvars
import time

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from .statistics import InferenceStatistics

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what the server always sent; only legacy names are used
UNKNOWN_MODEL = "_unknown"  # the one label value for every model name a client sends that is not served
ERROR_KINDS = (
    "bad_request", "unknown_model", "payload_too_large", "timeout", "disconnected",
    "not_ready", "queue_full", "shutting_down", "internal",
)  # fmt: skip
# When the current request arrived: each request runs in its own task (HTTP and gRPC alike), so
# `request` sets it and `answered` / `error` read it without the handlers passing it along.
_ARRIVED: contextvars.ContextVar[float | None] = contextvars.ContextVar("lsmha_request_arrived", default=None)


def exponential_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    """`count` bounds start, start*factor, ... (e.g. 1e-4 s .. 3.3 s for latencies)."""
    return tuple(start * factor**i for i in range(count))


class _WithoutCreated:
    """The registry's families less prometheus_client's `*_created` series: the server exposed
    none before, and turning them off with `disable_created_metrics()` would change every other
    registry in the process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self):
        for family in self.registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class ServerMetrics:
    """Requests, errors by kind, batch sizes, queue and compute time of one server.

    Args:
        max_batch: the server's largest batch (an exact bucket of the batch histograms).
        model: the served model name; requests for it count under its own label.
        adaptive: also count members run per image (`lsmha_members_run`).
    """

    def __init__(self, max_batch: int, model: str = "lsmha_committee", adaptive: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.model = model
        r = self.registry
        self.requests = Counter("lsmha_requests", "Inference requests received.", ["model"], registry=r)
        self.images = Counter("lsmha_images", "Images answered successfully.", registry=r)
        self.errors = Counter("lsmha_errors", "Failed inference requests by kind.", ["kind"], registry=r)
        sizes = tuple(sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch}))
        self.batch_size = Histogram("lsmha_batch_size", "Images per executed batch.", buckets=sizes, registry=r)
        self.batch_requests = Histogram(
            "lsmha_batch_requests", "Requests merged into one executed batch.", buckets=sizes, registry=r
        )
        seconds = exponential_buckets(1e-4, 2.0, 16)  # 0.1 ms .. 3.3 s
        self.queue_seconds = Histogram(
            "lsmha_queue_seconds", "Time a request waited before its batch ran.", buckets=seconds, registry=r
        )
        self.compute_seconds = Histogram(
            "lsmha_compute_seconds", "Time one batch spent in the committee.", buckets=seconds, registry=r
        )
        self.queue_depth = Gauge("lsmha_queue_depth", "Requests waiting for a batch.", registry=r)
        self.ready = Gauge("lsmha_ready", "1 once the committee is loaded and warmed up.", registry=r)
        self.members_run = (
            Histogram("lsmha_members_run", "Members run per answered image.", buckets=tuple(range(1, 17)), registry=r)
            if adaptive
            else None
        )
        self.stats = InferenceStatistics()  # Triton's statistics extension (GET /v2/models/NAME/stats)
        self.requests.labels(model=model)  # series exist at 0 from the start, so rates work at once
        for kind in ERROR_KINDS:
            self.errors.labels(kind=kind)

    def request(self, model: str) -> None:
        """Count a request for `model`; names not served share one label, so clients cannot
        grow the metrics without bound."""
        self.requests.labels(model=model if model == self.model else UNKNOWN_MODEL).inc()
        _ARRIVED.set(time.perf_counter())

    def error(self, kind: str) -> None:
        """Count a failed request by `kind` (and, but for unknown models, in the model's statistics)."""
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}; expected one of {', '.join(ERROR_KINDS)}")
        self.errors.labels(kind=kind).inc()
        if kind != "unknown_model":
            self.stats.failed(_since_arrival())

    def answered(self, images: int) -> None:
        """Count a request of `images` images answered successfully."""
        self.images.inc(images)
        self.stats.answered(images, _since_arrival())

    def record_batch(self, images: int, start: float, end: float, arrivals: list[float]) -> None:
        """One executed batch of `images` images, run from `start` to `end` (perf_counter seconds),
        holding the requests that arrived at `arrivals`."""
        self.batch_size.observe(images)
        self.batch_requests.observe(len(arrivals))
        self.compute_seconds.observe(end - start)
        waited = [start - arrival for arrival in arrivals]
        for seconds in waited:
            self.queue_seconds.observe(seconds)
        self.stats.batch(images, end - start, waited)

    def count_members_run(self, members_run: np.ndarray) -> None:
        """Add one batch's members run per image to the histogram (adaptive servers)."""
        if self.members_run is not None:
            for value in members_run.tolist():
                self.members_run.observe(value)

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value, by its exposed name (`lsmha_errors_total`,
        `lsmha_batch_size_count`, ...), 0 when the series does not exist yet."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def render(self) -> bytes:
        """The body of `GET /metrics` (Prometheus text format)."""
        return generate_latest(_WithoutCreated(self.registry))


def _since_arrival() -> float:
    arrived = _ARRIVED.get()
    return 0.0 if arrived is None else time.perf_counter() - arrived
