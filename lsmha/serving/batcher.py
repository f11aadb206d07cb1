"""Dynamic batching: concurrent requests gathered into one batch, run once, rows handed back.

The first waiting request opens a batch; the batch closes when it holds
`max_batch` images or `max_delay_ms` after that request arrived, whichever
comes first. Only requests with the same `key` (the server uses `BatchKey`:
the images' dtype and whether member logits are wanted) share a batch; others
wait for the next one in arrival order. The batch runs in a worker thread
(the event loop keeps accepting requests), and each caller gets exactly its
own rows of every output. A batch that raises fails only the requests inside
it. At most `max_queue` requests wait: beyond that `submit` raises `QueueFull`
at once, never an unbounded backlog.

    batcher = DynamicBatcher(run, max_batch=32, max_delay_ms=2, max_queue=256)
    await batcher.start()
    rows = await batcher.submit(images, key=BatchKey.of(images, member_logits=False))
    # rows: dict name -> array, batch axis first
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # prometheus_client (the serve extra) only where metrics are used
    from .metrics import ServerMetrics

RunFn = Callable[[np.ndarray, Hashable], dict[str, np.ndarray]]


@dataclass(frozen=True)
class BatchKey:
    """What requests must share to run in one batch: the images' dtype (their arrays are
    concatenated) and whether member logits are computed (another committee call).

    Args:
        dtype: the numpy dtype string of the images, e.g. "|u1" (uint8) or "<f4" (float32).
        member_logits: whether the batch computes each member's logits.
    """

    dtype: str
    member_logits: bool

    @classmethod
    def of(cls, images: np.ndarray, member_logits: bool) -> BatchKey:
        return cls(images.dtype.str, member_logits)


class ShuttingDown(RuntimeError):
    """The batcher stopped before this request's batch ran (the server is shutting down)."""


class QueueFull(RuntimeError):
    """The wait queue holds `max_queue` requests; `retry_after_s` is a hint for the client."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class BatcherStats:
    """What the batcher did: executed batches, requests and images, the largest batch, and
    the number of batches that merged more than one request."""

    batches: int = 0
    requests: int = 0
    images: int = 0
    failed_batches: int = 0
    largest_batch: int = 0
    multi_request_batches: int = 0
    requests_per_batch: collections.Counter = field(default_factory=collections.Counter)


@dataclass
class _Pending:
    images: np.ndarray
    key: Hashable
    arrival: float
    future: asyncio.Future


class DynamicBatcher:
    """Gathers concurrent `submit` calls into batches for `run(images, key) -> {name: (N, ...) array}`.

    Args:
        run: computes every output for a batch; called in one worker thread, one batch at a time.
        max_batch: most images in one batch (a single request may not exceed it).
        max_delay_ms: longest a batch waits for company after its first request arrived.
        max_queue: most requests waiting; more raise `QueueFull`.
        metrics: optional `ServerMetrics` to record batch sizes, queue and compute time.
    """

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch: int = 32,
        max_delay_ms: float = 2.0,
        max_queue: int = 256,
        metrics: ServerMetrics | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_delay_ms < 0:
            raise ValueError(
                f"expected max_batch >= 1, max_queue >= 1, max_delay_ms >= 0; "
                f"got {max_batch}, {max_queue}, {max_delay_ms}"
            )
        self.run, self.max_batch, self.max_queue = run, max_batch, max_queue
        self.max_delay_s = max_delay_ms / 1e3
        self.metrics = metrics
        self.stats = BatcherStats()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._mean_compute_s = 0.0

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._worker is not None:
            raise RuntimeError("the batcher is already running")
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lsmha-batch")
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name="lsmha-batcher")

    async def stop(self) -> None:
        """Stop the loop; requests still waiting fail with `ShuttingDown`."""
        if self._worker is None:
            return
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(ShuttingDown("the server is shutting down; retry elsewhere"))
        self._executor.shutdown(wait=True)
        self._worker = self._executor = None

    # -- requests ------------------------------------------------------------------------------

    async def submit(self, images: np.ndarray, key: Hashable = None) -> dict[str, np.ndarray]:
        """Queue `images` (batch axis first) and wait for their rows of every output.

        Raises:
            QueueFull: `max_queue` requests are already waiting.
            ValueError: more images than `max_batch`.
            Exception: whatever `run` raised for the batch holding these images.
        """
        if self._worker is None:
            raise RuntimeError("the batcher is not running; call start() first")
        if len(images) > self.max_batch:
            raise ValueError(f"{len(images)} images in one request, the batcher takes at most {self.max_batch}")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(
                f"{len(self._pending)} requests are waiting (max_queue={self.max_queue}); retry shortly",
                retry_after_s=max(1, round(self._mean_compute_s * len(self._pending) / max(1, self.max_batch))),
            )
        item = _Pending(images, key, time.perf_counter(), asyncio.get_running_loop().create_future())
        self._pending.append(item)
        self._set_depth()
        self._arrived.set()
        return await item.future

    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._pending))

    # -- the loop ------------------------------------------------------------------------------

    def _take(self) -> list[_Pending]:
        """Remove and return the requests of the next batch: the oldest request and, in
        arrival order, later ones with its key while the batch has room."""
        first = self._pending[0]
        batch, rows, keep = [], 0, collections.deque()
        while self._pending:
            item = self._pending.popleft()
            if item.future.done():  # the client went away while waiting
                continue
            if item.key == first.key and rows + len(item.images) <= self.max_batch:
                batch.append(item)
                rows += len(item.images)
            else:
                keep.append(item)
        self._pending.extendleft(reversed(keep))
        self._set_depth()
        return batch

    def _ready_rows(self, key: Hashable) -> int:
        return sum(len(p.images) for p in self._pending if p.key == key and not p.future.done())

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            first = self._pending[0]
            deadline = first.arrival + self.max_delay_s
            while self._ready_rows(first.key) < self.max_batch and (left := deadline - time.perf_counter()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), timeout=left)
                except TimeoutError:
                    break
            batch = self._take()
            if batch:
                await self._execute(loop, batch)

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        images = batch[0].images if len(batch) == 1 else np.concatenate([p.images for p in batch])
        start = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self._executor, self.run, images, batch[0].key)
            for name, array in outputs.items():
                if len(array) != len(images):
                    raise RuntimeError(f"output {name!r} has {len(array)} rows for a batch of {len(images)} images")
        except asyncio.CancelledError:  # stop() while the batch ran: its callers must not hang
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(ShuttingDown("the server is shutting down; retry elsewhere"))
            raise
        except Exception as err:  # the batch fails, its requests get the error, the loop goes on
            self.stats.failed_batches += 1
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(err)
            return
        finally:
            self._record(batch, len(images), start, time.perf_counter())
        row = 0
        for p in batch:
            n = len(p.images)
            if not p.future.done():
                p.future.set_result({name: array[row : row + n] for name, array in outputs.items()})
            row += n

    def _record(self, batch: list[_Pending], rows: int, start: float, end: float) -> None:
        s = self.stats
        s.batches += 1
        s.requests += len(batch)
        s.images += rows
        s.largest_batch = max(s.largest_batch, rows)
        s.multi_request_batches += len(batch) > 1
        s.requests_per_batch[len(batch)] += 1
        self._mean_compute_s = 0.9 * self._mean_compute_s + 0.1 * (end - start) if s.batches > 1 else end - start
        if self.metrics is not None:
            self.metrics.record_batch(rows, start, end, [p.arrival for p in batch])
