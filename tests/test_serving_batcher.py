"""The dynamic batcher with plain callables: rows go back to their callers, batches merge
requests, keys separate, the queue is bounded, and a failing batch fails only itself."""

import asyncio
import threading

import numpy as np
import pytest

from lsmha.serving.batcher import DynamicBatcher, QueueFull
from lsmha.serving.metrics import ServerMetrics


def _double(images, key):
    return {"twice": images * 2, "sum": images.reshape(len(images), -1).sum(axis=1)}


async def _with(batcher, coro):
    await batcher.start()
    try:
        return await coro
    finally:
        await batcher.stop()


def test_each_caller_gets_exactly_its_rows_and_requests_merge():
    metrics = ServerMetrics(max_batch=8)
    # a long delay: the batch closes only because it is full (8 images)
    batcher = DynamicBatcher(_double, max_batch=8, max_delay_ms=10_000, max_queue=64, metrics=metrics)
    inputs = [np.full((n, 2), i, dtype=np.int64) for i, n in enumerate([1, 3, 2, 2, 4, 4])]

    async def go():
        return await asyncio.gather(*(batcher.submit(x) for x in inputs))

    results = asyncio.run(_with(batcher, go()))
    for x, out in zip(inputs, results):
        assert np.array_equal(out["twice"], x * 2) and np.array_equal(out["sum"], x.sum(axis=1))
    # 1+3+2+2 = 8 fills the first batch; 4+4 the second
    assert batcher.stats.batches == 2 and batcher.stats.requests == 6 and batcher.stats.images == 16
    assert batcher.stats.multi_request_batches == 2 and batcher.stats.requests_per_batch == {4: 1, 2: 1}
    assert metrics.value("lsmha_batch_size_count") == 2
    single = metrics.value("lsmha_batch_requests_bucket", le="1.0")
    assert metrics.value("lsmha_batch_requests_count") - single == 2  # both batches merged requests
    assert metrics.value("lsmha_queue_seconds_count") == 6 and metrics.value("lsmha_compute_seconds_count") == 2


def test_delay_closes_a_partial_batch():
    batcher = DynamicBatcher(_double, max_batch=64, max_delay_ms=1, max_queue=8)
    out = asyncio.run(_with(batcher, batcher.submit(np.ones((3, 2)))))
    assert np.array_equal(out["twice"], np.full((3, 2), 2.0)) and batcher.stats.batches == 1


def test_keys_never_share_a_batch():
    seen = []

    def run(images, key):
        seen.append((key, len(images)))
        return {"x": images}

    batcher = DynamicBatcher(run, max_batch=16, max_delay_ms=50, max_queue=16)

    async def go():
        return await asyncio.gather(
            batcher.submit(np.zeros((1, 2), np.uint8), key="u8"),
            batcher.submit(np.zeros((2, 2), np.float32), key="f32"),
            batcher.submit(np.ones((1, 2), np.uint8), key="u8"),
        )

    a, b, c = asyncio.run(_with(batcher, go()))
    assert a["x"].dtype == np.uint8 and b["x"].dtype == np.float32 and np.array_equal(c["x"], np.ones((1, 2)))
    assert sorted(seen) == [("f32", 2), ("u8", 2)]


def test_failing_batch_fails_only_its_requests_and_the_loop_goes_on():
    def run(images, key):
        if (images < 0).any():
            raise RuntimeError("poisoned batch")
        return {"x": images + 1}

    batcher = DynamicBatcher(run, max_batch=2, max_delay_ms=10_000, max_queue=16)

    async def go():
        # batch 1 = [bad, good1] fails together; batch 2 = [good2, good3] succeeds
        return await asyncio.gather(
            batcher.submit(np.array([[-1.0]])),
            batcher.submit(np.array([[1.0]])),
            batcher.submit(np.array([[2.0]])),
            batcher.submit(np.array([[3.0]])),
            return_exceptions=True,
        )

    bad, same_batch, good2, good3 = asyncio.run(_with(batcher, go()))
    assert isinstance(bad, RuntimeError) and "poisoned" in str(bad) and same_batch is bad
    assert np.array_equal(good2["x"], [[3.0]]) and np.array_equal(good3["x"], [[4.0]])
    assert batcher.stats.failed_batches == 1 and batcher.stats.batches == 2


def test_queue_is_bounded_with_a_retry_hint():
    release, started = threading.Event(), threading.Event()

    def slow(images, key):
        started.set()
        release.wait(timeout=10)
        return {"x": images}

    batcher = DynamicBatcher(slow, max_batch=1, max_delay_ms=0, max_queue=2)

    async def go():
        running = asyncio.ensure_future(batcher.submit(np.zeros((1, 1))))
        while not started.is_set():  # the first request left the queue and runs
            await asyncio.sleep(0.001)
        waiting = [asyncio.ensure_future(batcher.submit(np.zeros((1, 1)))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="max_queue=2") as info:
            await batcher.submit(np.zeros((1, 1)))
        assert info.value.retry_after_s >= 1
        release.set()
        return await asyncio.gather(running, *waiting)

    assert len(asyncio.run(_with(batcher, go()))) == 3


def test_refuses_oversized_requests_and_bad_settings():
    batcher = DynamicBatcher(_double, max_batch=2, max_delay_ms=0, max_queue=2)
    with pytest.raises(ValueError, match="at most 2"):
        asyncio.run(_with(batcher, batcher.submit(np.zeros((3, 1)))))
    with pytest.raises(ValueError, match="max_batch >= 1"):
        DynamicBatcher(_double, max_batch=0)
    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(DynamicBatcher(_double).submit(np.zeros((1, 1))))


def test_batch_key_names_what_requests_must_share():
    from lsmha.serving.batcher import BatchKey

    u8, f32 = np.zeros((1, 2), np.uint8), np.zeros((1, 2), np.float32)
    assert BatchKey.of(u8, member_logits=True) == BatchKey("|u1", True)
    assert BatchKey.of(f32, member_logits=False) == BatchKey("<f4", False)
    assert len({BatchKey.of(u8, True), BatchKey.of(u8, False), BatchKey.of(f32, False), BatchKey("|u1", True)}) == 3
    seen = []

    def run(images, key):
        seen.append((key.dtype, key.member_logits, len(images)))
        return {"x": images}

    batcher = DynamicBatcher(run, max_batch=8, max_delay_ms=50, max_queue=8)

    async def go():
        return await asyncio.gather(
            *(batcher.submit(x, key=BatchKey.of(x, m)) for x, m in [(u8, True), (u8, False), (u8, True)])
        )

    asyncio.run(_with(batcher, go()))
    assert sorted(seen) == [("|u1", False, 1), ("|u1", True, 2)]


def test_stop_fails_waiting_requests_with_shutting_down():
    from lsmha.serving.batcher import ShuttingDown

    release = threading.Event()

    def slow(images, key):
        release.wait(timeout=10)
        return {"x": images}

    batcher = DynamicBatcher(slow, max_batch=1, max_delay_ms=0, max_queue=4)

    async def go():
        await batcher.start()
        waiting = [asyncio.ensure_future(batcher.submit(np.zeros((1, 1)))) for _ in range(3)]
        await asyncio.sleep(0.05)
        release.set()
        await batcher.stop()
        return await asyncio.gather(*waiting, return_exceptions=True)

    results = asyncio.run(go())
    assert any(isinstance(r, ShuttingDown) and "shutting down" in str(r) for r in results), results


def test_serve_config_refuses_bad_settings():
    from lsmha.serving import ServeConfig

    with pytest.raises(ValueError, match=r"body_timeout_s=0.*shutdown_timeout_s=-1"):
        ServeConfig(body_timeout_s=0, shutdown_timeout_s=-1)
    assert ServeConfig(max_body_mb=1).max_body_bytes == 1 << 20
