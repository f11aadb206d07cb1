"""`lsmha.verify` and `lsmha-export verify`: three states per row, real images decide, exit codes."""

import json
import shutil

import numpy as np
import pytest
import torch

from lsmha.artifacts import add_entries, file_entry
from lsmha.engine.cpu import cpu_info
from lsmha.export import export_onnx
from lsmha.export.cli import main as export_main
from lsmha.models import CCT, CCTSpec
from lsmha.training.data import load_dataset
from lsmha.verify import TOLERANCES, verify_export


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    spec = CCTSpec(n_conv=1, n_blocks=1, dim=32, heads=4, num_classes=10, img_size=32, attn_dropout=0.0)
    members = [CCT(spec.replace(name=f"m{i}")).eval() for i in range(2)]
    for m in members:
        m.facts = {"dataset": "digits"}  # as a trained checkpoint records it
    out = tmp_path_factory.mktemp("export")
    export_onnx(members, out, precisions=("fp32", "fp16"))
    return out


@pytest.fixture
def copy(exported, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(exported, target)
    return target


def test_every_file_runs_on_its_runtimes_and_real_images_decide(exported):
    rows = verify_export(exported, count=16, seed=3, real_count=16)
    runtimes = {(r.file, r.runtime, r.precision) for r in rows}
    assert {("committee.onnx", "onnxruntime", "fp32"), ("committee.fp16.onnx", "onnxruntime", "fp16"),
            ("committee.onnx", "openvino", "fp32")} <= runtimes  # fmt: skip
    assert (("committee.onnx", "openvino", "bf16") in runtimes) == bool(cpu_info().has_bf16)
    assert {r.inputs for r in rows} == {"random", "digits"}  # the checkpoints' data set, from their metadata
    for r in rows:
        assert r.result == ("info" if r.inputs == "random" else "ok"), r
        assert r.decisions == (16 if r.output == "logits" else 2 * 16)  # committee: images; members: 2 x images
        if r.precision == "fp32" and r.inputs == "digits":
            assert r.rel_error <= TOLERANCES["fp32"][0] and r.top1_agreement == 1.0


def test_cli_exits_zero_and_writes_the_rows(exported, tmp_path):
    report = tmp_path / "verify.json"
    args = ["verify", str(exported), "--count", "8", "--real-count", "8", "--json", str(report), "--no-progress"]
    assert export_main(args) == 0
    assert {row["result"] for row in json.loads(report.read_text())} == {"ok", "info"}


def test_a_file_that_cannot_be_checked_fails_unless_skips_are_allowed(copy, capsys):
    (copy / "committee.plan").write_bytes(b"not a plan")
    entry = file_entry(copy, "committee.plan", format="plan", precision="fp16", scope="committee")
    add_entries(copy, [entry])
    rows = verify_export(copy, count=4, seed=0)
    (skipped,) = [r for r in rows if r.runtime == "tensorrt"]
    assert skipped.result == "skipped" and "TensorRT" in skipped.note
    assert export_main(["verify", str(copy), "--count", "4", "--no-progress"]) == 1
    assert "1 skipped" in capsys.readouterr().out
    assert export_main(["verify", str(copy), "--count", "4", "--no-progress", "--allow-skip"]) == 0


def test_an_unknown_precision_is_an_error_not_fp16_tolerances(copy, capsys):
    doc = json.loads((copy / "manifest.json").read_text())
    for f in doc["files"]:
        if f["path"] == "committee.fp16.onnx":
            f["precision"] = "fp8"
    (copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"no parity tolerance for precision 'fp8'"):
        verify_export(copy, count=4)
    assert export_main(["verify", str(copy), "--no-progress"]) == 2
    assert "fp8" in capsys.readouterr().err


def test_images_given_by_file_decide_and_noise_is_only_reported(exported, tmp_path):
    images, _ = load_dataset("digits", "val", limit=6)
    np.save(tmp_path / "mine.npy", images.numpy().transpose(0, 2, 3, 1))  # NHWC, as a user may have them
    rows = verify_export(exported, count=8, seed=0, images=tmp_path / "mine.npy", real_count=8)
    assert {r.inputs for r in rows} == {"random", "mine"}
    assert all(r.result == "info" for r in rows if r.inputs == "random")
    mine = [r for r in rows if r.inputs == "mine"]
    assert all(r.result in ("ok", "FAIL") and r.decisions in (6, 12) for r in mine)
    assert all(r.result == "ok" for r in mine if r.precision in ("fp32", "fp16")), mine
    (tmp_path / "bad.npy").write_text("not numpy")
    with pytest.raises(ValueError, match=r"bad.npy: expected a .npy file of images"):
        verify_export(exported, count=8, images=tmp_path / "bad.npy")


def test_without_real_images_noise_decides_the_relative_error_only(tmp_path):
    spec = CCTSpec(n_conv=1, n_blocks=1, dim=16, heads=2, num_classes=5, img_size=16, attn_dropout=0.0)
    export_onnx([CCT(spec).eval()], tmp_path)  # no data set in its metadata
    rows = verify_export(tmp_path, count=4, seed=0)
    assert rows and {r.inputs for r in rows} == {"random"}
    assert all(r.result in ("ok", "FAIL") and "relative error decides" in r.note for r in rows), rows
    assert all(r.result == "ok" for r in rows if r.precision == "fp32"), rows


def test_tampered_export_is_refused_with_exit_2(copy):
    with open(copy / "committee.onnx", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"tampered")
    assert export_main(["verify", str(copy), "--no-progress"]) == 2
