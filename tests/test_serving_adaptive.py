"""`lsmha-serve --adaptive`: answers are the adaptive committee's, each with `members_run`, and
/metrics has the histogram of members run (on the session's tiny two-member export)."""

import shutil

import httpx
import numpy as np
import pytest

from lsmha.engine import Committee
from lsmha.engine.adaptive import Calibration, margins, partial_sums, write_calibration
from lsmha.engine.adaptive_committee import AdaptiveCommittee
from lsmha.export.calibrate_cli import ensure_member_graphs
from lsmha.serving import BackgroundServer, CommitteeService, ServeConfig
from lsmha.serving.protocol import decode_outputs, encode_images

NAME = "lsmha_committee"


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(7).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def adaptive_export(serving_export, tmp_path_factory, images):
    """The session export with member graphs and a threshold letting about half of `images` leave
    after the first member (halfway between two margins, so no image sits on it)."""
    out = tmp_path_factory.mktemp("serving_adaptive") / "export"
    shutil.copytree(serving_export, out)
    ensure_member_graphs(out)
    with_all = Committee.load(out, "onnxruntime")
    first = np.sort(margins(partial_sums(with_all.member_logits(images), [0, 1])[0]))
    with_all.close()
    tau = float((first[5] + first[6]) / 2)
    write_calibration(out, Calibration([0, 1], [tau], 0.99, 12, 1.0, 1.5, [6, 6], {"dataset": "test"}))
    return out


def test_adaptive_server_answers_with_members_run_and_counts_them(adaptive_export, images):
    adaptive = AdaptiveCommittee.load(adaptive_export, "onnxruntime")
    expected, expected_runs = adaptive.predict(images, return_members_run=True)
    assert set(expected_runs.tolist()) == {1, 2}
    config = ServeConfig(max_batch=16, max_delay_ms=1, adaptive=True)
    loader = lambda: AdaptiveCommittee.load(adaptive_export, "onnxruntime")  # noqa: E731
    with BackgroundServer(CommitteeService(loader, config)) as server:
        server.wait_ready()
        meta = httpx.get(f"{server.url}/v2/models/{NAME}", timeout=30).json()
        assert "members_run" in [o["name"] for o in meta["outputs"]]
        assert meta["backend"].startswith("adaptive[onnxruntime")
        r = httpx.post(f"{server.url}/v2/models/{NAME}/infer", json=encode_images(images), timeout=30)
        assert r.status_code == 200, r.text
        out = decode_outputs(r.json())
        np.testing.assert_array_equal(out["label"], expected)
        np.testing.assert_array_equal(out["members_run"], expected_runs)
        # asking for member_logits runs every member
        r = httpx.post(
            f"{server.url}/v2/models/{NAME}/infer", json=encode_images(images[:3], ("label", "member_logits")),
            timeout=30,
        )  # fmt: skip
        assert decode_outputs(r.json())["members_run"].tolist() == [2, 2, 2]
        # the metadata lists members_run, so a request may ask for it by name (it used to be a 400)
        r = httpx.post(f"{server.url}/v2/models/{NAME}/infer", json=encode_images(images[:2], ("members_run",)))
        assert r.status_code == 200, r.text
        answer = decode_outputs(r.json())
        assert list(answer) == ["members_run"] and answer["members_run"].tolist() == expected_runs[:2].tolist()
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    lines = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line.startswith("lsmha_members_run"))
    assert float(lines["lsmha_members_run_count"]) == 12 + 3 + 2
    assert (
        float(lines['lsmha_members_run_bucket{le="1.0"}'])
        == (expected_runs == 1).sum() + (expected_runs[:2] == 1).sum()
    )
    assert float(lines["lsmha_members_run_sum"]) == expected_runs.sum() + 6 + expected_runs[:2].sum()
    adaptive.close()


def test_a_plain_server_has_no_members_run(serving_export):
    from lsmha.serving.metrics import ServerMetrics

    assert b"lsmha_members_run" not in ServerMetrics(8).render()
    assert b"lsmha_members_run" in ServerMetrics(8, adaptive=True).render()


def test_lsmha_serve_adaptive_without_thresholds_is_a_usage_error(serving_export, capsys):
    from lsmha.serving.cli import main

    assert main([str(serving_export), "--adaptive", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "--adaptive needs an export with calibrated thresholds" in err and "lsmha-export calibrate" in err
