import json

import pytest

from lsmha.bench.cli import build_parser, main
from lsmha.models import count_params, create_model


def test_latency_cli_times_both_groups_and_writes_json(tmp_path, capsys):
    out = tmp_path / "lat.json"
    code = main(
        [
            "latency",
            "--committee",
            "cct_1_3x1:dim=32:heads=4,cct_1_3x1:dim=16:heads=2",
            "--baseline",
            "cct_7_3x1:dim=32:heads=4:n_blocks=1",
            "--batch",
            "1,3",
            "--warmup",
            "1",
            "--budget",
            "0.01",
            "--rounds",
            "2",
            "--no-progress",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "random weights" in text and "ratio" in text
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    expected_rows = [(m, b, n) for m in (1, 2) for b in ("torch", "onnxruntime") for n in (1, 3)]
    assert [(r["members"], r["backend"], r["batch"]) for r in rows] == expected_rows
    assert all(r["ratio_vs_baseline"] == 1.0 for r in rows[:4])
    expected = count_params(create_model("cct_1_3x1", dim=32, heads=4)) + count_params(
        create_model("cct_1_3x1", dim=16, heads=2)
    )
    assert rows[4]["params"] == expected
    for r in rows:
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["median_ms"] * 1e3)
        assert r["p90_ms"] >= r["median_ms"] > 0
        assert r["calls"] >= 5  # 3 per pass, 2 interleaved passes
    assert set(doc["crossover"]) == {"torch", "onnxruntime"}


def test_latency_cli_rejects_bad_usage(capsys):
    assert main(["latency", "--backend", "warp-drive"]) == 2
    assert "unknown backend 'warp-drive'" in capsys.readouterr().err
    assert main(["latency", "--baseline", "cct_7_3x1,cct_1_3x1"]) == 2
    assert main(["latency", "--rounds", "0"]) == 2
    assert "--rounds must be >= 1" in capsys.readouterr().err
    assert main(["latency", "--committee", "cct_9_9x9"]) == 2
    assert "known models" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["latency", "--batch", "0"])


def test_latency_help_explains_every_option():
    sub = build_parser()._subparsers._group_actions[0].choices["latency"]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, f"--{action.dest} has no help"
    text = sub.format_help()
    for opt in ["--committee", "--baseline", "--backend", "--batch", "--device", "--json", "--budget", "--threads"]:
        assert opt in text


def test_train_throughput_cli_measures_both_pipelines(tmp_path, capsys):
    out = tmp_path / "train.json"
    model = "cct_1_3x1:dim=16:heads=2:num_classes=10:img_size=16"
    code = main(["train", "--model", model, "--batch-size", "4", "--steps", "1", "--warmup", "0", "--json", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())[model]
    assert doc["model_only"]["augment"] is False and doc["with_augment"]["augment"] is True
    assert doc["ratio"] == pytest.approx(doc["with_augment"]["images_per_s"] / doc["model_only"]["images_per_s"])
    assert "pipeline img/s" in capsys.readouterr().out
    assert main(["train", "--model", "cct_0_0x0"]) == 2
