"""The server's metrics on prometheus_client: the names and labels dashboards read, valid
exposition text, cumulative histograms, one registry per server, a bounded model label."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lsmha.serving.metrics import ERROR_KINDS, UNKNOWN_MODEL, ServerMetrics

NAMES = {
    "lsmha_requests": "counter",
    "lsmha_images": "counter",
    "lsmha_errors": "counter",
    "lsmha_batch_size": "histogram",
    "lsmha_batch_requests": "histogram",
    "lsmha_queue_seconds": "histogram",
    "lsmha_compute_seconds": "histogram",
    "lsmha_queue_depth": "gauge",
    "lsmha_ready": "gauge",
}


def _samples(m: ServerMetrics) -> dict[str, float]:
    """Parse the exposition text (fails on an invalid line): 'name{k="v"}' -> value."""
    text = m.render().decode()
    families = list(text_string_to_metric_families(text))
    assert {f.name: f.type for f in families} == NAMES
    out = {}
    for family in families:
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_server_metrics_keep_their_names_labels_and_buckets():
    m = ServerMetrics(max_batch=24, model="lsmha")
    m.request("lsmha")
    m.error("bad_request")
    m.error("queue_full")
    m.error("queue_full")
    for size in (1, 3, 24, 24):
        m.batch_size.observe(size)
    m.queue_seconds.observe(0.0015)
    m.queue_depth.set(3)
    s = _samples(m)
    assert s['lsmha_requests_total{model="lsmha"}'] == 1
    assert s['lsmha_errors_total{kind="queue_full"}'] == 2 and s['lsmha_errors_total{kind="bad_request"}'] == 1
    assert all(f'lsmha_errors_total{{kind="{k}"}}' in s for k in ERROR_KINDS)  # every kind exists from 0
    assert s['lsmha_batch_size_bucket{le="1.0"}'] == 1 and s['lsmha_batch_size_bucket{le="4.0"}'] == 2
    assert s['lsmha_batch_size_bucket{le="24.0"}'] == 4 and s['lsmha_batch_size_bucket{le="+Inf"}'] == 4
    assert s["lsmha_batch_size_sum"] == 52 and s["lsmha_batch_size_count"] == 4
    assert s['lsmha_queue_seconds_bucket{le="0.0008"}'] == 0 and s['lsmha_queue_seconds_bucket{le="0.0016"}'] == 1
    assert s["lsmha_queue_depth"] == 3 and s["lsmha_ready"] == 0
    assert not any("_created" in k for k in s)
    assert m.value("lsmha_batch_size_count") == 4 and m.value("lsmha_errors_total", kind="queue_full") == 2


def test_unknown_model_names_share_one_label_and_servers_do_not_share_counts():
    a, b = ServerMetrics(max_batch=8, model="served"), ServerMetrics(max_batch=8, model="served")
    for i in range(100):
        a.request(f'name-{i}"\n' + "x" * 500)
    a.request("served")
    s = _samples(a)
    models = [k for k in s if k.startswith("lsmha_requests_total")]
    assert sorted(models) == [
        f'lsmha_requests_total{{model="{UNKNOWN_MODEL}"}}',
        'lsmha_requests_total{model="served"}',
    ]
    assert s[f'lsmha_requests_total{{model="{UNKNOWN_MODEL}"}}'] == 100 and len(a.render()) < 8000
    assert b.value("lsmha_requests_total", model=UNKNOWN_MODEL) == 0  # one registry per server


def test_unknown_error_kinds_are_refused():
    with pytest.raises(ValueError, match="unknown error kind 'oops'"):
        ServerMetrics(max_batch=4).error("oops")
