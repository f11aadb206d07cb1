"""A file of the wrong kind is named for what it is, not left to fail while decoding."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from lsmha.artifacts import read_manifest, write_committee
from lsmha.engine import Committee
from lsmha.models import CCT, CCTSpec, load, save
from lsmha.models.file_kind import file_kind


@pytest.fixture
def files(tmp_path):
    spec = CCTSpec(n_conv=1, n_blocks=1, dim=16, heads=2, num_classes=5, img_size=16, attn_dropout=0.0)
    ck = save(CCT(spec).eval(), tmp_path / "m.safetensors")
    committee = write_committee(tmp_path / "committee.json", [ck])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = tmp_path / "committee.onnx"
    onnx.save(helper.make_model(graph), str(model))
    return {"checkpoint": ck, "committee": committee, "onnx": model}


def test_file_kind_names_each_artifact(files, tmp_path):
    assert file_kind(files["checkpoint"]) == "a safetensors file"
    assert file_kind(files["committee"]) == "a committee.json (checkpoints of a committee)"
    assert file_kind(files["onnx"]) == "an ONNX model"
    (tmp_path / "empty").write_bytes(b"")
    assert file_kind(tmp_path / "empty") == "an empty file"


def test_committee_load_of_an_onnx_file_says_what_it_is(files):
    with pytest.raises(ValueError, match=r"committee.onnx is an ONNX model, expected an export directory"):
        Committee.load(files["onnx"])
    with pytest.raises(ValueError, match=r"committee.onnx is an ONNX model, expected manifest.json"):
        read_manifest(files["onnx"])


def test_checkpoint_load_of_a_committee_json_says_what_it_is(files):
    with pytest.raises(ValueError, match=r"is a committee.json \(checkpoints of a committee\), expected a .safet"):
        load(files["committee"])
    truncated = files["checkpoint"].with_name("cut.safetensors")
    truncated.write_bytes(files["checkpoint"].read_bytes()[:200])
    with pytest.raises(ValueError, match=r"truncated or corrupt"):
        load(truncated)


def test_a_json_document_of_another_format_names_both(files, tmp_path):
    other = tmp_path / "manifest.json"
    other.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match=r"format 'something-else', expected 'lsmha-export-1'"):
        read_manifest(other)
    assert Committee.load(files["committee"]).predict(np.zeros((1, 16, 16, 3), np.uint8)).shape == (1,)


def test_triton_and_bench_errors_use_the_exit_code_table(tmp_path, capsys):
    from lsmha.bench.cli import main as bench_main
    from lsmha.export.cli import main as export_main

    assert export_main(["triton", str(tmp_path / "missing"), "--out", str(tmp_path / "repo")]) == 2
    assert "lsmha-export: error: " in capsys.readouterr().err
    assert bench_main(["serve", str(tmp_path), "--modes", "warp"]) == 2
    assert "--modes among" in capsys.readouterr().err
    assert bench_main(["train", "--model", "not_a_model"]) == 2
