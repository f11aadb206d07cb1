"""The adaptive committee at run time: `lsmha-export calibrate` (member graphs, hashed thresholds),
`AdaptiveCommittee.load(DIR)` (what `Committee.load(DIR, adaptive=True)` returns) on torch,
onnxruntime and openvino against the rule computed on precomputed logits, gather/scatter on a
mixed batch, members run, and the errors."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from lsmha.artifacts import read_manifest
from lsmha.bench.cli import main as bench_main
from lsmha.engine import BackendUnavailable, Committee, available_backends
from lsmha.engine.adaptive import Calibration, apply_rule, margins, partial_sums, read_calibration, write_calibration
from lsmha.engine.adaptive_committee import AdaptiveCommittee
from lsmha.export.adaptive_graph import write_adaptive_graph
from lsmha.export.cli import main as export_main
from lsmha.export.onnx import export_onnx
from lsmha.models import CCT, CCTSpec


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Three tiny random members for 32x32 images (digits), exported without per-member graphs."""
    torch.manual_seed(0)
    base = dict(n_conv=1, n_blocks=1, num_classes=10, img_size=32, attn_dropout=0.0, drop_path=0.0)
    members = [CCT(CCTSpec(**base, dim=d, heads=2, name=f"m{i}")).eval() for i, d in enumerate((48, 32, 40))]
    for m in members:  # decisive logits, as a trained model has
        m.fc.weight.data *= 30
    out = tmp_path_factory.mktemp("adaptive_export")
    export_onnx(members, out)
    return out


@pytest.fixture(scope="module")
def calibrated(exported, tmp_path_factory):
    out = tmp_path_factory.mktemp("adaptive_calibrated") / "export"
    shutil.copytree(exported, out)
    report = out.parent / "calibration.json"
    code = export_main(
        ["calibrate", str(out), "--dataset", "digits", "--target", "0.99", "--backend", "onnxruntime",
         "--no-progress", "--json", str(report)]
    )  # fmt: skip
    assert code == 0
    return out, json.loads(report.read_text())


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).integers(0, 256, (40, 3, 32, 32), dtype=np.uint8)


def _set_thresholds(directory, thresholds, order, graph=False):
    """Write a calibration; with `graph`, also the adaptive graph for it (else the one there goes stale)."""
    cal = Calibration(list(order), list(thresholds), 0.99, 1, 1.0, 1.0, [1, 0, 0], {"dataset": "test"})
    write_calibration(directory, cal)
    if graph:
        write_adaptive_graph(directory, cal)


def _mixed_thresholds(member_logits, order):
    """Thresholds leaving about a third of the images after one member and another third after two,
    halfway between neighbouring margins so that no image sits on a threshold."""
    sums = partial_sums(member_logits, order)
    n = member_logits.shape[1]
    first = np.sort(margins(sums[0]))
    tau1 = float((first[2 * n // 3 - 1] + first[2 * n // 3]) / 2)
    rest = margins(sums[1])[margins(sums[0]) < tau1]
    second = np.sort(rest)
    k = len(second) // 2
    return [tau1, float((second[k - 1] + second[k]) / 2)]


def test_without_thresholds_the_error_names_the_command(exported):
    with pytest.raises(ValueError, match=r"no adaptive thresholds; calibrate them first: `lsmha-export calibrate "):
        Committee.load(exported, "torch", adaptive=True)


def test_calibrate_writes_member_graphs_and_hashed_thresholds(calibrated):
    out, report = calibrated
    manifest = read_manifest(out)  # every hash verified
    paths = {e.path: e for e in manifest.files}
    assert {"member0.onnx", "member1.onnx", "member2.onnx", "committee.onnx", "adaptive.json", "adaptive.onnx"} <= set(
        paths
    )
    assert [paths[f"member{i}.onnx"].scope for i in range(3)] == [0, 1, 2]
    entry = paths["adaptive.json"]
    facts = entry.extra
    assert facts["dataset"] == "digits" and facts["split"] == "val" and facts["n"] == 359
    assert facts["target"] == 0.99 and facts["agreement"] >= 0.99
    assert facts["order"] == [1, 2, 0]  # cheapest first: dims 32, 40, 48
    assert len(facts["thresholds"]) == 2 and sum(facts["members_run"]) == 359
    assert facts["mean_members_run"] == pytest.approx(
        sum((k + 1) * c for k, c in enumerate(facts["members_run"])) / 359
    )
    assert report == facts
    cal = read_calibration(manifest)
    assert cal.order == [1, 2, 0] and cal.n == 359


def test_a_modified_calibration_is_refused(calibrated, tmp_path):
    out, _ = calibrated
    copy = tmp_path / "export"
    shutil.copytree(out, copy)
    doc = json.loads((copy / "adaptive.json").read_text())
    doc["thresholds"] = [0.0, 0.0]
    (copy / "adaptive.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="adaptive.json does not match its sha256"):
        AdaptiveCommittee.load(copy, "torch")


@pytest.mark.parametrize(
    "backend, graph",
    [("torch", False), ("onnxruntime", False), ("openvino", False), ("onnxruntime", True), ("openvino", True)],
)
def test_adaptive_decisions_follow_the_rule_on_a_mixed_batch(calibrated, images, tmp_path, backend, graph):
    """Per member (gather, run, scatter in Python) and as one graph (adaptive.onnx), alike."""
    reason = available_backends()[backend]
    if reason:
        pytest.skip(reason)
    out, _ = calibrated
    copy = tmp_path / "export"
    shutil.copytree(out, copy)
    order = [2, 0, 1]
    reference = Committee.load(copy, backend)
    member_logits = reference.member_logits(images)
    thresholds = _mixed_thresholds(member_logits, order)
    _set_thresholds(copy, thresholds, order, graph)
    adaptive = AdaptiveCommittee.load(copy, backend, batch_size=16)  # 40 images: three chunks
    assert isinstance(adaptive, AdaptiveCommittee) and adaptive.backend.startswith(f"adaptive[{backend}")
    assert adaptive.backend.endswith(", one graph]") == graph  # a stale graph is not used
    assert (adaptive.runner.graph is not None) == graph
    decisions, runs = adaptive.predict(images, return_members_run=True)
    expected = apply_rule(member_logits, thresholds, order)
    np.testing.assert_array_equal(runs, expected.members_run)
    assert (np.bincount(runs, minlength=4)[1:] > 0).all()  # a mixed batch: some leave at each stage
    np.testing.assert_array_equal(decisions, expected.decisions)
    np.testing.assert_allclose(adaptive.predict_logits(images), expected.logits, rtol=1e-4, atol=1e-4)
    full = reference.predict(images)
    np.testing.assert_array_equal(decisions[runs == 3], full[runs == 3])  # the last member decides
    np.testing.assert_array_equal(adaptive.full_predict(images), full)
    for i in (0, int(np.argmax(runs == 2)), int(np.argmax(runs == 3))):  # batch 1, leaving at each stage
        one, one_runs = adaptive.predict(images[i : i + 1], return_members_run=True)
        assert (one[0], one_runs[0]) == (expected.decisions[i], expected.members_run[i])
    adaptive.close()
    reference.close()


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_adaptive_graph_at_the_extreme_thresholds(calibrated, images, tmp_path, backend):
    """Thresholds 0: every image leaves after the first member (the later stages run on no rows);
    inf: nobody leaves, the graph gives the full committee's sums."""
    reason = available_backends()[backend]
    if reason:
        pytest.skip(reason)
    out, _ = calibrated
    copy = tmp_path / "export"
    shutil.copytree(out, copy)
    reference = Committee.load(copy, backend)
    member_logits = reference.member_logits(images)
    _set_thresholds(copy, [0.0, 0.0], [1, 2, 0], graph=True)
    adaptive = AdaptiveCommittee.load(copy, backend)
    assert adaptive.runner.graph is not None
    logits, runs = adaptive.predict_logits(images), adaptive.predict(images, return_members_run=True)[1]
    np.testing.assert_array_equal(runs, np.ones(40))
    np.testing.assert_allclose(logits, member_logits[1], rtol=1e-4, atol=1e-4)
    _set_thresholds(copy, [math.inf, math.inf], [1, 2, 0], graph=True)
    adaptive = AdaptiveCommittee.load(copy, backend)
    decisions, runs = adaptive.predict(images, return_members_run=True)
    np.testing.assert_array_equal(runs, np.full(40, 3))
    np.testing.assert_allclose(adaptive.predict_logits(images), member_logits.sum(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(decisions, reference.predict(images))


def test_the_full_committee_never_runs_the_adaptive_graph(calibrated):
    out, _ = calibrated
    manifest = read_manifest(out)
    (entry,) = manifest.find(format="adaptive-onnx")
    cal = read_calibration(manifest)
    assert entry.path == "adaptive.onnx"
    assert entry.extra == {"order": cal.order, "thresholds": cal.to_dict()["thresholds"]}
    assert [o.name for o in entry.outputs] == ["logits", "members_run"]
    full = Committee.load(out, "onnxruntime")
    assert full.member_logits(np.zeros((2, 3, 32, 32), np.uint8)).shape == (3, 2, 10)


def test_each_member_runs_only_on_the_undecided_images(calibrated, images, tmp_path):
    out, _ = calibrated
    copy = tmp_path / "export"
    shutil.copytree(out, copy)
    order = [2, 0, 1]
    member_logits = Committee.load(copy, "torch").member_logits(images)
    thresholds = _mixed_thresholds(member_logits, order)
    _set_thresholds(copy, thresholds, order)
    adaptive = AdaptiveCommittee.load(copy, "torch")
    seen = []
    run_member = adaptive.runner.member

    def recording(index, batch):
        seen.append((index, len(batch)))
        return run_member(index, batch)

    adaptive.runner.member = recording
    decisions, runs = adaptive.predict(images, return_members_run=True)
    assert [i for i, _ in seen] == order
    assert [n for _, n in seen] == [40, int((runs >= 2).sum()), int((runs == 3).sum())]
    # gathered rows come back to their own images: each image's logits are its own members' sum
    stage = runs - 1
    expected = partial_sums(member_logits, order)[stage, np.arange(40)]
    np.testing.assert_allclose(adaptive.predict_logits(images), expected, rtol=1e-5, atol=1e-5)


def test_thresholds_at_the_extremes(calibrated, images, tmp_path):
    out, _ = calibrated
    copy = tmp_path / "export"
    shutil.copytree(out, copy)
    reference = Committee.load(copy, "torch")
    _set_thresholds(copy, [0.0, 0.0], [1, 2, 0])  # every margin is >= 0: the first member decides
    first, runs = AdaptiveCommittee.load(copy, "torch").predict(images, return_members_run=True)
    np.testing.assert_array_equal(runs, np.ones(40))
    np.testing.assert_array_equal(first, reference.member_logits(images)[1].argmax(1))
    _set_thresholds(copy, [math.inf, math.inf], [1, 2, 0])  # nobody leaves: the full committee
    full, runs = AdaptiveCommittee.load(copy, "torch").predict(images, return_members_run=True)
    np.testing.assert_array_equal(runs, np.full(40, 3))
    np.testing.assert_array_equal(full, reference.predict(images))


def test_committee_load_adaptive_gives_the_adaptive_committee(calibrated):
    out, _ = calibrated
    adaptive = Committee.load(out, "torch", adaptive=True)
    assert isinstance(adaptive, AdaptiveCommittee) and adaptive.order == [1, 2, 0]
    assert adaptive.backend == "adaptive[torch[cpu]]" and len(adaptive.thresholds) == 2
    assert not isinstance(Committee.load(out, "torch"), AdaptiveCommittee)


def test_bench_latency_adds_the_adaptive_rows(calibrated, tmp_path, capsys):
    """`lsmha-bench latency --adaptive DIR`: the adaptive committee against its full committee on the
    data set's test images, in the table and the JSON, beside the random-weight rows."""
    out, _ = calibrated
    report = tmp_path / "latency.json"
    args = ["latency", "--committee", "cct_1_3x1:dim=32:heads=2", "--baseline", "cct_7_3x1:dim=32:heads=2:n_blocks=1",
            "--backend", "torch", "--batch", "1", "--budget", "0.01", "--rounds", "1", "--min-calls", "1",
            "--adaptive", str(out), "--dataset", "digits", "--no-progress", "--json", str(report)]  # fmt: skip
    assert bench_main(args) == 0
    printed = capsys.readouterr().out
    assert f"adaptive committee of {out}" in printed and "agreement with the full committee" in printed
    adaptive = json.loads(report.read_text())["adaptive"]
    assert adaptive["split"] == "test" and adaptive["n"] == sum(adaptive["members_run_histogram"].values())
    assert 0.9 <= adaptive["agreement"] <= 1.0 and 1.0 <= adaptive["mean_members_run"] <= 3.0
    assert adaptive["backends"]["adaptive"].endswith(", one graph]")  # calibrate wrote adaptive.onnx
    assert adaptive["batch1_images"] == 200 and adaptive["batch1_rounds"] == 2
    assert bench_main([*args[:-2], "--adaptive", str(tmp_path / "none"), "--json", str(report)]) == 2


def test_openvino_int8_is_written_measured_and_taken_by_auto_only_where_it_paid(calibrated, tmp_path):
    """NNCF int8 of the committee graph: both IR files listed and hashed, agreement with fp32 and
    speed on this CPU kind in the entry; precision "int8" opens it; "auto" only with a true
    verdict for this CPU kind; an export without it names the command that writes it."""
    if available_backends()["openvino"]:
        pytest.skip(available_backends()["openvino"])
    pytest.importorskip("nncf", reason="int8 for OpenVINO needs nncf: pip install nncf")
    from lsmha.artifacts import add_entries, file_entry
    from lsmha.engine.cpu import cpu_info
    from lsmha.engine.openvino_int8 import INT8_IR, cpu_key, quantize_openvino_int8
    from lsmha.training import load_dataset

    out, _ = calibrated
    copy = tmp_path / "export"
    shutil.copytree(out, copy)
    with pytest.raises(BackendUnavailable, match="--int8"):
        Committee.load(copy, "openvino", precision="int8")
    val = load_dataset("digits", "val")[0].numpy().astype(np.float32)
    info = quantize_openvino_int8(copy, val[:64], val, {"dataset": "digits", "split": "val"})
    manifest = read_manifest(copy)  # both files hashed and verified
    (entry,) = manifest.find(format="openvino-ir")
    assert entry.path == INT8_IR and manifest.find(format="openvino-ir-weights")[0].path == "committee.int8.bin"
    assert entry.extra["agreement_fp32"] == info["agreement_fp32"] and 0.5 <= info["agreement_fp32"] <= 1.0
    measured = info["measured"][cpu_key(cpu_info())]
    assert measured["auto"] == (
        info["agreement_fp32"] >= 0.995 and min(measured[b]["speedup"] for b in ("b1", "b32")) > 1
    )
    int8 = Committee.load(copy, "openvino", precision="int8")
    assert "int8+" in int8.backend
    images = np.random.default_rng(0).integers(0, 256, (8, 3, 32, 32), dtype=np.uint8)
    assert int8.predict_logits(images).shape == (8, 10)
    for verdict in (True, False):  # auto follows the verdict recorded for this CPU kind
        extra = {**entry.extra, "measured": {cpu_key(cpu_info()): {**measured, "auto": verdict}}}
        add_entries(
            copy, [file_entry(copy, INT8_IR, format="openvino-ir", precision="int8", scope="committee", **extra)]
        )
        assert ("int8+" in Committee.load(copy, "openvino").backend) == verdict
    extra = {**entry.extra, "measured": {"avx2: another CPU": {**measured, "auto": True}}}
    add_entries(copy, [file_entry(copy, INT8_IR, format="openvino-ir", precision="int8", scope="committee", **extra)])
    assert "int8+" not in Committee.load(copy, "openvino").backend  # not measured on this CPU kind
