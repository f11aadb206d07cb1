"""Hand-written Prometheus text: every line is valid exposition format, histograms are cumulative."""

import re

import pytest

from lsmha.serving.metrics import Counter, Histogram, Registry, ServerMetrics

SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? (-?[0-9.e+-]+|\+Inf)$'
)


def _check_format(text: str) -> dict[str, float]:
    """Validate every line; return sample name{labels} -> value."""
    assert text.endswith("\n")
    samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        assert SAMPLE.match(line), f"not a valid sample line: {line!r}"
        key, value = line.rsplit(" ", 1)
        samples[key] = float(value)
    return samples


def test_server_metrics_render_valid_text():
    m = ServerMetrics(max_batch=24)
    m.requests.inc(model="lsmha")
    m.errors.inc(kind="bad_request")
    m.errors.inc(2, kind="queue_full")
    for size in (1, 3, 24, 24):
        m.batch_size.observe(size)
    m.queue_seconds.observe(0.0015)
    m.queue_depth.set(3)
    s = _check_format(m.render())
    assert s['lsmha_requests_total{model="lsmha"}'] == 1
    assert s['lsmha_errors_total{kind="queue_full"}'] == 2 and s['lsmha_errors_total{kind="bad_request"}'] == 1
    assert s['lsmha_batch_size_bucket{le="1"}'] == 1 and s['lsmha_batch_size_bucket{le="4"}'] == 2
    assert s['lsmha_batch_size_bucket{le="24"}'] == 4 and s['lsmha_batch_size_bucket{le="+Inf"}'] == 4
    assert s["lsmha_batch_size_sum"] == 52 and s["lsmha_batch_size_count"] == 4
    assert s['lsmha_queue_seconds_bucket{le="0.0008"}'] == 0 and s['lsmha_queue_seconds_bucket{le="0.0016"}'] == 1
    assert s["lsmha_queue_depth"] == 3 and s["lsmha_ready"] == 0
    text = m.render()
    assert "# TYPE lsmha_batch_size histogram" in text and "# TYPE lsmha_errors_total counter" in text


def test_labels_are_escaped_and_checked():
    c = Counter("x_total", "x", ("path",))
    c.inc(path='a"b\\c\nd')
    (line,) = [ln for ln in c.render() if not ln.startswith("#")]
    assert line == 'x_total{path="a\\"b\\\\c\\nd"} 1'
    assert SAMPLE.match(line)
    with pytest.raises(ValueError, match="takes labels"):
        c.inc(kind="y")
    with pytest.raises(ValueError, match="only goes up"):
        c.inc(-1, path="p")


def test_histogram_and_registry_refuse_bad_setup():
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram("h", "h", (2.0, 1.0))
    r = Registry()
    r.add(Counter("a_total", "a"))
    with pytest.raises(ValueError, match="already registered"):
        r.add(Counter("a_total", "a"))
    h = Histogram("h", "h", (1.0, 10.0))
    for v in (0.5, 1.0, 5.0, 50.0):
        h.observe(v)
    assert h.count == 4 and h.counts_above(1.0) == 2 and h.counts_above(10.0) == 1
