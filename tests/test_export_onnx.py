"""ONNX export: one graph with fused Attention, parity with torch in ORT, a verified manifest."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from lsmha.artifacts import add_entries, file_entry, read_manifest
from lsmha.engine import Committee, available_backends
from lsmha.export.cli import main as export_main
from lsmha.export.onnx import export_onnx, op_counts, quantize_int8
from lsmha.models import CCT, CCTSpec


def _members():
    torch.manual_seed(0)
    base = dict(n_conv=1, n_blocks=1, num_classes=10, img_size=16, attn_dropout=0.0, drop_path=0.0)
    specs = [
        CCTSpec(**base, dim=22, heads=2, name="head11"),  # head size 11: zero-padded to 16 inside Attention
        CCTSpec(**{**base, "n_blocks": 2}, dim=32, heads=(2, 4), name="head16_8"),
    ]
    members = [CCT(s).eval() for s in specs]
    for m in members:  # decisive logits, as a trained model has (untrained ones sit near ties)
        m.fc.weight.data *= 50
    return members


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    members = _members()
    out = tmp_path_factory.mktemp("export")
    export_onnx(members, out, precisions=("fp32", "fp16"))
    return members, out


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).integers(0, 256, (7, 3, 16, 16), dtype=np.uint8)


def _torch_logits(members, images):
    with torch.no_grad():
        return np.stack([m(torch.from_numpy(images)).numpy() for m in members])


def test_graph_has_fused_attention_and_no_attention_softmax(exported):
    members, out = exported
    model = onnx.load(str(out / "committee.onnx"))
    counts = op_counts(model)
    assert counts["Attention"] == 3  # one per block: 1 + 2
    assert counts["Softmax"] == 2  # SeqPool's, one per member; none for attention
    assert model.opset_import[0].version == 23
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # dynamic batch axis
    meta = {p.key: p.value for p in model.metadata_props}
    assert [s["name"] for s in json.loads(meta["lsmha.members"])] == ["head11", "head16_8"]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(
        ["committee.onnx", "committee.fp16.onnx", "manifest.json", "member0.safetensors", "member1.safetensors"]
    )


def test_onnxruntime_matches_torch_for_batches_1_and_7_from_one_file(exported, images):
    members, out = exported
    committee = Committee.load(out, backend="onnxruntime", batch_size=64)
    assert committee.backend == "onnxruntime[CPUExecutionProvider]"
    ref = _torch_logits(members, images)
    for batch in (images[:1], images):
        got = committee.member_logits(batch)
        np.testing.assert_allclose(got, ref[:, : len(batch)], rtol=1e-4, atol=1e-4 * np.abs(ref).max())
        np.testing.assert_allclose(committee.predict_logits(batch), ref[:, : len(batch)].sum(0), rtol=1e-4, atol=1e-3)
        np.testing.assert_array_equal(committee.predict(batch), ref[:, : len(batch)].sum(0).argmax(1))
    nhwc_float = images.transpose(0, 2, 3, 1).astype(np.float32) / 255.0
    np.testing.assert_array_equal(committee.predict(nhwc_float), committee.predict(images))


def test_auto_torch_and_fp16_backends_load_the_same_directory(exported, images):
    members, out = exported
    auto = Committee.load(out)
    assert auto.backend.startswith(("openvino[CPU,", "onnxruntime[CPU"))  # the CPU order: bf16 or not
    assert auto.members == ["head11", "head16_8"] and auto.num_classes == 10 and auto.img_size == 16
    ref = _torch_logits(members, images).sum(0)
    np.testing.assert_allclose(Committee.load(out, backend="torch").predict_logits(images), ref, rtol=1e-5, atol=1e-4)
    fp16 = Committee.load(out, backend="onnxruntime", precision="fp16")
    assert fp16.backend.endswith("[fp16]")
    assert np.abs(fp16.predict_logits(images) - ref).max() <= 1e-2 * np.abs(ref).max()
    assert available_backends()["onnxruntime"] is None


def test_tampered_file_is_refused(exported, tmp_path):
    _, out = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / "committee.onnx", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"tampered")
    with pytest.raises(ValueError, match=r"committee.onnx does not match its sha256"):
        Committee.load(copy)
    assert export_main(["verify", str(copy), "--no-progress"]) == 2  # bad input file


def test_paths_leaving_the_directory_are_refused(exported, tmp_path):
    _, out = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    doc = json.loads((copy / "manifest.json").read_text())
    doc["files"][0]["path"] = "../outside.safetensors"
    (copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"'../outside.safetensors' leaves the directory"):
        read_manifest(copy)
    doc["files"][0]["path"] = "/etc/passwd"
    (copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"leaves the directory"):
        Committee.load(copy)


def test_int8_variant_is_an_opt_in_manifest_entry(exported, tmp_path, images):
    members, out = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    quantize_int8(copy / "committee.onnx", copy / "committee.int8.onnx")
    entry = read_manifest(copy).find(precision="fp32", scope="committee", format="onnx")[0]
    int8 = file_entry(copy, "committee.int8.onnx", format="onnx", precision="int8", scope="committee",
                      inputs=entry.inputs, outputs=entry.outputs, opset=entry.opset)  # fmt: skip
    add_entries(copy, [int8])
    assert Committee.load(copy, backend="onnxruntime").backend == "onnxruntime[CPUExecutionProvider]"  # fp32 default
    committee = Committee.load(copy, backend="onnxruntime", precision="int8")
    assert committee.backend.endswith("[int8]")
    ref = _torch_logits(members, images).sum(0)
    assert np.abs(committee.predict_logits(images) - ref).max() <= 0.1 * np.abs(ref).max()


def _cuda_provider() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.gpu
@pytest.mark.skipif(  # decided before the `exported` fixture spends seconds exporting
    not torch.cuda.is_available() or not _cuda_provider(),
    reason="needs a CUDA device and onnxruntime's CUDAExecutionProvider (pip install onnxruntime-gpu)",
)
def test_cuda_provider_with_io_binding(exported, images):
    members, out = exported
    committee = Committee.load(out, backend="onnxruntime", device="cuda")
    assert committee.backend == "onnxruntime[CUDAExecutionProvider]"
    ref = _torch_logits(members, images).sum(0)
    np.testing.assert_allclose(committee.predict_logits(images), ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def test_3d_attention_rewrite_keeps_the_arithmetic(exported, images):
    from lsmha.engine.backends.onnx_rewrite import attention_to_3d
    from lsmha.engine.backends.onnxruntime_backend import OnnxSession

    _, out = exported
    model, rewritten = attention_to_3d(onnx.load(str(out / "committee.onnx")))
    assert rewritten == 2  # member 1's two blocks; member 0's padded head-11 block stays 4-D
    counts = op_counts(model)
    assert counts["Attention"] == 3 and counts["Split"] == 2 and counts["Softmax"] == 2
    onnx.checker.check_model(model)
    x = images.astype(np.float32)
    plain, fast = OnnxSession(out / "committee.onnx", "cpu", rewrite=False), OnnxSession(out / "committee.onnx", "cpu")
    assert fast.rewritten == 2 and plain.rewritten == 0
    for a, b in zip(plain.run(x), fast.run(x)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


def test_reexport_into_an_existing_export_is_refused_unless_forced(exported, tmp_path, capsys):
    """A second export into a directory would replace its manifest and leave the first export's
    other files (here the fp16 graph) on disk, unlisted: refused; --force clears export files only."""
    import lsmha

    _, out = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    lsmha.save(_members()[1], tmp_path / "m.safetensors")
    argv = ["onnx", str(tmp_path / "m.safetensors"), "-o", str(copy), "--no-progress"]
    assert export_main(argv) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before  # untouched: fp16 still listed
    with pytest.raises(FileExistsError, match="is not empty"):
        export_onnx(_members(), copy)
    (copy / "notes.txt").write_text("not an export file")
    assert export_main([*argv, "--force"]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert sorted(p.name for p in copy.iterdir()) == sorted([*before, "notes.txt"])  # nothing deleted
    (copy / "notes.txt").unlink()
    assert export_main([*argv, "--force"]) == 0
    manifest = read_manifest(copy)
    assert sorted(p.name for p in copy.iterdir()) == sorted([e.path for e in manifest.files] + ["manifest.json"])
    assert len(manifest.specs) == 1 and "committee.fp16.onnx" not in {e.path for e in manifest.files}


@pytest.mark.slow
def test_identical_exports_are_identical_files(exported, tmp_path):
    """Every file of two exports of the same members hashes the same (the checkpoint metadata
    is written in sorted key order, not in the order of a hash map)."""
    _, out = exported
    again = export_onnx(_members(), tmp_path / "again", precisions=("fp32", "fp16"))
    first = {e.path: e.sha256 for e in read_manifest(out).files}
    assert first == {e.path: e.sha256 for e in again.files}
    for i in range(2):
        data = (out / f"member{i}.safetensors").read_bytes()
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        assert list(header["__metadata__"]) == sorted(header["__metadata__"])


def test_relative_output_directory(tmp_path, monkeypatch):
    """`-o out` relative to the working directory (a user's usual call) writes and loads."""
    import lsmha

    monkeypatch.chdir(tmp_path)
    lsmha.save(_members()[1], "m.safetensors")
    assert export_main(["onnx", "m.safetensors", "-o", "out", "--no-progress"]) == 0
    manifest = read_manifest("out")
    assert {e.path for e in manifest.files} >= {"committee.onnx", "member0.safetensors"}
    assert Committee.load("out").predict(np.zeros((1, 16, 16, 3), np.uint8)).shape == (1,)


def _matmul_graph(path, weight):
    from onnx import TensorProto, helper, numpy_helper

    k, n = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
        [numpy_helper.from_array(weight, "w")],
    )  # fmt: skip
    # IR 10, as torch's exporter writes: onnx's newest IR default is newer than older ORT releases read
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))


def test_int8_has_no_int16_saturation_on_full_range_operands(tmp_path):
    """Non-negative activations (uint8 up to 255) against same-sign weights: an 8-bit
    u8 x s8 kernel without VNNI overflows its int16 pair sums here (relative error
    about 0.1 on an AVX2 CPU). The 7-bit per-channel weights of `quantize_int8` do not."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    weight = rng.uniform(0.5, 1.0, (256, 64)).astype(np.float32)
    x = rng.uniform(0.0, 1.0, (8, 256)).astype(np.float32)
    _matmul_graph(tmp_path / "mm.onnx", weight)
    quantize_int8(tmp_path / "mm.onnx", tmp_path / "mm.int8.onnx")
    session = ort.InferenceSession(str(tmp_path / "mm.int8.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0]
    ref = x.astype(np.float64) @ weight
    assert np.abs(got - ref).max() <= 0.01 * np.abs(ref).max()


def test_sources_take_the_bench_committee_notation():
    from lsmha.export.onnx_cli import load_members
    from lsmha.models import PAPER_COMMITTEES, committee_specs

    (first,) = load_members(["table6:1"], num_classes=10)
    assert first.spec == committee_specs(PAPER_COMMITTEES["table6"][:1], num_classes=10)[0]
    a, b = load_members(["cct_1_3x1:heads=2,cct_1_3x1:dim=64"], num_classes=7)
    assert (a.spec.heads, b.spec.dim, a.spec.num_classes) == (2, 64, 7)
    assert not torch.equal(a.fc.weight, load_members(["cct_1_3x1:heads=2"], num_classes=7, seed=1)[0].fc.weight)
    with pytest.raises(ValueError, match=r"cannot read member source 'nope'.*table6:5.*name:field=value"):
        load_members(["nope"])


def test_attention_translation_refuses_what_onnx_attention_cannot_express():
    from lsmha.export.onnx import _sdpa_to_attention

    with pytest.raises(ValueError, match="export the model in eval mode"):
        _sdpa_to_attention(None, None, None, dropout_p=0.1)
    with pytest.raises(ValueError, match="grouped-query attention"):
        _sdpa_to_attention(None, None, None, enable_gqa=True)


def test_an_onnxscript_too_old_for_the_exporter_says_what_to_install(monkeypatch, tmp_path):
    def old_onnxscript(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'onnxscript._framework_apis.torch_9_99'")

    monkeypatch.setattr(torch.onnx, "export", old_onnxscript)
    with pytest.raises(RuntimeError, match=r"needs a newer onnxscript than .*: pip install -U onnxscript"):
        export_onnx(_members()[:1], tmp_path)
