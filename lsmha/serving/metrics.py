"""Prometheus metrics in the text exposition format (version 0.0.4), written by hand.

Three kinds, enough for a server: `Counter` (monotone, optional labels),
`Gauge` (a value that goes up and down) and `Histogram` (cumulative buckets,
`_sum`, `_count`). A `Registry` renders all of them for `GET /metrics`:

    # HELP lsmha_batch_size Images per executed batch.
    # TYPE lsmha_batch_size histogram
    lsmha_batch_size_bucket{le="1"} 3
    ...
    lsmha_batch_size_sum 57
    lsmha_batch_size_count 12
"""

from __future__ import annotations

import bisect
import math
import threading

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotone count, optionally split by labels (`inc(kind="bad_request")`)."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[tuple[str, ...], float] = {} if labels else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"a counter only goes up, got inc({amount})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Gauge(_Metric):
    """A value that goes up and down (queue depth, readiness)."""

    kind = "gauge"

    def __init__(self, name: str, help: str) -> None:
        super().__init__(name, help)
        self._value = 0.0

    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value)

    def value(self) -> float:
        with self._lock:
            return self._value

    def render(self) -> list[str]:
        return self.header() + [f"{self.name} {_number(self.value())}"]


class Histogram(_Metric):
    """Observations counted into cumulative buckets (upper bounds `buckets`, +Inf added)."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        super().__init__(name, help)
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError(f"{name}: buckets must be strictly increasing and non-empty, got {buckets}")
        self.buckets = tuple(float(b) for b in buckets)
        self._counts = [0] * (len(self.buckets) + 1)  # last: above every bound
        self._sum = 0.0

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sum += value

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._counts)

    def counts_above(self, bound: float) -> int:
        """Observations strictly greater than `bound` (a bucket bound)."""
        with self._lock:
            return sum(self._counts[bisect.bisect_right(self.buckets, bound) :])

    def render(self) -> list[str]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        lines, running = self.header(), 0
        for bound, n in zip((*self.buckets, math.inf), counts):
            running += n
            lines.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {running}')
        return lines + [f"{self.name}_sum {_number(total)}", f"{self.name}_count {running}"]


def exponential_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    """`count` bounds start, start*factor, ... (e.g. 1e-4 s .. 1.6 s for latencies)."""
    return tuple(start * factor**i for i in range(count))


class Registry:
    """The metrics one server exposes; `render()` is the body of `GET /metrics`."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def add(self, metric: _Metric) -> _Metric:
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"metric {metric.name} is already registered")
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        return "\n".join(line for m in self._metrics for line in m.render()) + "\n"


class ServerMetrics:
    """The serving metrics: requests, errors by kind, batch sizes, queue and compute time."""

    def __init__(self, max_batch: int) -> None:
        self.registry = Registry()
        add = self.registry.add
        self.requests = add(Counter("lsmha_requests_total", "Inference requests received.", ("model",)))
        self.images = add(Counter("lsmha_images_total", "Images answered successfully."))
        self.errors = add(Counter("lsmha_errors_total", "Failed inference requests by kind.", ("kind",)))
        sizes = tuple(sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch}))
        self.batch_size = add(Histogram("lsmha_batch_size", "Images per executed batch.", sizes))
        self.batch_requests = add(Histogram("lsmha_batch_requests", "Requests merged into one executed batch.", sizes))
        seconds = exponential_buckets(1e-4, 2.0, 16)  # 0.1 ms .. 3.3 s
        self.queue_seconds = add(
            Histogram("lsmha_queue_seconds", "Time a request waited before its batch ran.", seconds)
        )
        self.compute_seconds = add(
            Histogram("lsmha_compute_seconds", "Time one batch spent in the committee.", seconds)
        )
        self.queue_depth = add(Gauge("lsmha_queue_depth", "Requests waiting for a batch."))
        self.ready = add(Gauge("lsmha_ready", "1 once the committee is loaded and warmed up."))

    def render(self) -> str:
        return self.registry.render()
