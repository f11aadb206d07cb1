"""The committed Fashion-MNIST weights reproduce the committed study's test accuracies exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_fashion_mnist import needs_package

from lsmha.artifacts import read_committee
from lsmha.metrics import accuracy, soft_committee
from lsmha.training import load_dataset
from lsmha.training.cli import main as train_main
from lsmha.training.evaluate import evaluate_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights" / "fashion4"
STUDY = ROOT / "benchmarks" / "results" / "cpu-avx2-2core_fashion_study.json"


def test_weights_are_small_and_verified():
    doc, paths = read_committee(WEIGHTS / "committee.json")  # every member's sha256 checked
    files = paths + [WEIGHTS / "reference" / "model.safetensors"]
    assert sum(p.stat().st_size for p in files) <= 20 * 2**20
    assert doc["dataset"] == "fashion-mnist" and len(paths) == 4


@pytest.mark.slow
@needs_package
def test_test_split_accuracies_match_the_study(capsys):
    rows = {r["name"]: r for r in json.loads(STUDY.read_text())["rows"]}
    _, paths = read_committee(WEIGHTS / "committee.json")
    results = [evaluate_checkpoint(p, "fashion-mnist", split="test") for p in paths]
    labels = load_dataset("fashion-mnist", "test")[1].numpy()
    for p, r in zip(paths, results):
        assert r["accuracy"] == rows[p.parent.name]["test_accuracy"]
    committee = accuracy(soft_committee(np.stack([r["logits"] for r in results])), labels)
    assert committee == next(r for r in rows.values() if r["kind"] == "committee")["test_accuracy"]
    ref = WEIGHTS / "reference" / "model.safetensors"
    assert train_main(["eval", str(ref), "--split", "test"]) == 0
    shown = next(r for r in rows.values() if r["kind"] == "reference")["test_accuracy"]
    assert f"test acc     {shown:.4f}" in capsys.readouterr().out
