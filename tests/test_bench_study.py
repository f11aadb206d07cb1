"""lsmha-bench study: the rows' accuracies, GMAC and subset agree with what they are computed from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lsmha import create_model, save
from lsmha.artifacts import write_committee
from lsmha.bench.cli import main as bench_main
from lsmha.bench.study import best_subset, run_study, study_table
from lsmha.engine.adaptive import apply_rule, calibrate
from lsmha.metrics import accuracy, soft_committee
from lsmha.models import count_macs
from lsmha.training import load_dataset
from lsmha.training.evaluate import predict_logits


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    torch.manual_seed(0)
    members = [
        create_model("cct_1_3x1", dim=32, heads=4, num_classes=10, pool="all"),
        create_model("cct_2_3x2", dim=32, heads=8, num_classes=10, pool="all"),
    ]
    paths = []
    for i, m in enumerate(members):
        (root / "members" / f"m{i}").mkdir(parents=True)
        paths.append(save(m, root / "members" / f"m{i}" / "model.safetensors"))
    write_committee(root / "committee.json", paths, dataset="digits")
    (root / "reference").mkdir()
    save(
        create_model("cct_7_3x1", dim=32, heads=2, n_blocks=2, num_classes=10, pool="all"),
        root / "reference" / "model.safetensors",
    )
    return root, members


def test_best_subset_takes_the_smallest_best():
    labels = np.array([0, 1, 1, 0])
    # member 0 right on all four; adding member 1 (always class 1) can only tie or lose
    m0 = np.eye(2)[labels] * 5
    m1 = np.tile([0.0, 1.0], (4, 1))
    subset, acc = best_subset(np.stack([m0, m1]), labels)
    assert subset == [0] and acc == 1.0


@pytest.mark.slow
def test_study_rows(run_dir, tmp_path):
    root, members = run_dir
    doc = run_study(root, root / "reference" / "model.safetensors", "digits", rounds=1, budget_s=0.01)
    kinds = [r["kind"] for r in doc["rows"]]
    assert kinds == ["reference", "member", "member", "committee", "selected", "adaptive"]
    x, y = load_dataset("digits", "test")
    logits = np.stack([predict_logits(m, x).numpy() for m in members])
    val_x, _ = load_dataset("digits", "val")
    calibration = calibrate(np.stack([predict_logits(m, val_x).numpy() for m in members]), 0.999, [0, 1])
    decided = apply_rule(logits, calibration.thresholds, calibration.order)
    adaptive = doc["rows"][5]
    assert adaptive["test_accuracy"] == accuracy(decided.logits, y.numpy())
    assert adaptive["agreement_with_full"] == float((decided.decisions == soft_committee(logits).argmax(1)).mean())
    assert adaptive["mean_members_run"] == decided.members_run.mean() and sum(adaptive["members_run_histogram"]) == len(
        y
    )
    assert adaptive["backend"].endswith(", one graph]")  # timed as Committee.load(dir, adaptive=True) runs
    assert doc["rows"][1]["test_accuracy"] == accuracy(logits[0], y.numpy())
    assert doc["rows"][3]["test_accuracy"] == accuracy(soft_committee(logits), y.numpy())
    assert doc["rows"][3]["gmac"] == pytest.approx(sum(count_macs(m.spec) for m in members) / 1e9)
    assert doc["rows"][3]["mean_agreement"] is not None and doc["rows"][1]["mean_agreement"] is None
    for r in doc["rows"]:
        assert r["b1_ms"] > 0 and r["b32_ms"] > 0 and r["backend"] and "models" not in r
    assert "b1 / ref" in study_table(doc)
    json.dumps(doc)  # the document is plain JSON


@pytest.mark.slow
def test_cli_writes_json_and_plot(run_dir, tmp_path, capsys):
    root, _ = run_dir
    out, png = tmp_path / "study.json", tmp_path / "study.png"
    args = ["study", str(root), "--dataset", "digits", "--rounds", "1", "--budget-s", "0.01"]
    assert bench_main(args + ["--json", str(out), "--plot", str(png)]) == 0
    assert json.loads(out.read_text())["rows"][0]["kind"] == "reference"
    assert png.stat().st_size > 10_000
    assert bench_main(["study", str(tmp_path / "nothing"), "--dataset", "digits"]) == 2
    assert "holds no committee.json" in capsys.readouterr().err
