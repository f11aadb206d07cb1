import json

import pytest
import torch

from lsmha.bench.backends import default_backends
from lsmha.bench.cli import build_parser, main
from lsmha.models import count_params, create_model


def run_cli(tmp_path, *args):
    out = tmp_path / "lat.json"
    fast = ["--batch", "1,3", "--warmup", "1", "--budget", "0.01", "--rounds", "2", "--min-calls", "4"]
    code = main(["latency", "--device", "cpu", "--baseline", "cct_7_3x1:dim=32:heads=4:n_blocks=1", *fast, *args,
                 "--no-progress", "--json", str(out)])  # fmt: skip
    assert code == 0
    return json.loads(out.read_text())


def test_latency_cli_times_every_committee_against_the_baseline(tmp_path, capsys):
    two, one = "cct_1_3x1:dim=32:heads=4,cct_1_3x1:dim=16:heads=2", "cct_1_3x1:dim=16:heads=2"
    doc = run_cli(tmp_path, "--committee", two, "--committee", one, "--backend", "torch")
    text = capsys.readouterr().out
    assert "random weights" in text and "ratio" in text
    facts = doc["facts"]
    assert facts["cpu_kind"] in ("amx", "avx512_bf16", "avx512", "avx2", "sse", "unknown")
    assert facts["cpu_model"] in text and " ".join(facts["isa_flags"]) in text
    rows = doc["rows"]
    assert [(r["members"], r["batch"]) for r in rows] == [(m, n) for m in (1, 2, 1) for n in (1, 3)]
    assert all(r["ratio_vs_baseline"] == 1.0 for r in rows[:2])
    expected = count_params(create_model("cct_1_3x1", dim=32, heads=4)) + count_params(
        create_model("cct_1_3x1", dim=16, heads=2)
    )
    assert rows[2]["params"] == expected
    for r in rows:
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["median_ms"] * 1e3)
        assert r["p90_ms"] >= r["median_ms"] > 0
        assert r["calls"] >= 4  # 2 per pass, 2 interleaved passes
    assert set(doc["crossover"]) == {f"committee({two})", f"committee({one})"}
    assert doc["committees"] == [two, one]


def test_latency_cli_on_a_cpu_compares_torch_stock_openvino_onnxruntime_and_auto(tmp_path, capsys):
    assert default_backends(torch.device("cpu")) == ["torch", "openvino-stock", "onnxruntime", "auto"]
    doc = run_cli(tmp_path, "--committee", "cct_1_3x1:dim=16:heads=2", "--full")
    out = capsys.readouterr().out
    assert "x openvino-stock" in out and "lsmha-bench latency --full" not in out
    rows = doc["rows"]
    backends = ("torch", "openvino-stock", "onnxruntime", "auto")
    assert [(r["members"], r["backend"], r["batch"]) for r in rows] == [
        (1, b, n) for _ in range(2) for b in backends for n in (1, 3)
    ]
    assert "openvino 2" in rows[2]["note"] and rows[6]["note"].startswith("lsmha engine auto -> ")
    by_key = {(r["model"], r["batch"], r["backend"]): r["median_ms"] for r in rows}
    for d in doc["speedups"]:
        for ref, value in d["speedup"].items():
            want = by_key[d["model"], d["batch"], ref] / by_key[d["model"], d["batch"], d["backend"]]
            assert value == pytest.approx(want)
    assert {d["backend"] for d in doc["speedups"]} == set(backends)


def test_latency_default_on_a_cpu_is_the_quick_comparison_and_names_the_full_one(tmp_path, capsys):
    doc = run_cli(tmp_path, "--committee", "cct_1_3x1:dim=16:heads=2")
    out = capsys.readouterr().out
    assert {r["backend"] for r in doc["rows"]} == {"torch", "openvino-stock", "auto"}
    assert "compared: cct_7_3x1:dim=32:heads=4:n_blocks=1, committee(cct_1_3x1:dim=16:heads=2) on torch, " in out
    assert "openvino-stock, auto at batch 1, 3" in out
    assert "the full comparison (cct_2_3x5,cct_2_3x5:heads=4 and table6:5 on torch, openvino-stock, " in out
    assert "lsmha-bench latency --full" in out


def test_latency_cli_rejects_bad_usage(capsys):
    assert main(["latency", "--backend", "warp-drive"]) == 2
    assert "unknown backend 'warp-drive'" in capsys.readouterr().err
    assert main(["latency", "--baseline", "cct_7_3x1,cct_1_3x1"]) == 2
    assert main(["latency", "--rounds", "0"]) == 2
    assert "--rounds and --min-calls must be >= 1" in capsys.readouterr().err
    assert main(["latency", "--min-calls", "0"]) == 2
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
    for opt in ["--committee", "--baseline", "--backend", "--batch", "--device", "--json", "--budget", "--min-calls"]:
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
