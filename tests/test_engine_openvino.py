"""The OpenVINO backend: parity with torch, precision chosen from the CPU's flags, refusals."""

import builtins
import json
import threading

import numpy as np
import pytest
import torch

from lsmha.engine import BackendUnavailable, Committee, Source
from lsmha.engine.backends import openvino_backend as ovb
from lsmha.engine.committee import load_source
from lsmha.engine.cpu import CpuInfo, cpu_info, parse_cpuinfo
from lsmha.models import CCT, CCTSpec

pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino)")

AMX = CpuInfo(
    "Intel(R) Xeon(R) Platinum 8480+", ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
)
ZEN4 = CpuInfo("AMD EPYC 9654", ("avx2", "avx512f", "avx512_vnni", "avx512_bf16"))
AVX2 = CpuInfo("AMD EPYC 7B12", ("avx2", "fma"))
SKX = CpuInfo("Intel(R) Xeon(R) Gold 6148", ("avx2", "fma", "avx512f"))


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from lsmha.export import export_onnx

    torch.manual_seed(0)
    # dim 64 and two convs: in the tiny dim-32 net random weights cancel so much that bf16 rounding
    # alone gives 4e-2 relative logit error; at dim 64 it is about 1e-2, as on trained committees
    spec = CCTSpec(n_conv=2, n_blocks=1, dim=64, heads=4, num_classes=10, img_size=16, attn_dropout=0.0)
    members = [CCT(spec.replace(name="a")).eval(), CCT(spec.replace(name="b", heads=2, n_blocks=2)).eval()]
    directory = tmp_path_factory.mktemp("ov_export")
    export_onnx(members, directory)
    return members, directory


def load(directory, **options):
    """A Committee on the openvino backend, from a verified export directory."""
    return Committee.load(directory, "openvino", **options)


def reference(members, images):
    with torch.inference_mode():
        x = torch.from_numpy(images)
        return torch.stack([m(x) for m in members]).numpy()


def relative_error(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_fp32_matches_torch_for_uint8_and_float_images(export):
    members, directory = export
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 16, 16), dtype=np.uint8)
    want = reference(members, images)
    committee = load(directory, precision="fp32")
    assert committee.backend == "openvino[CPU,fp32]"
    np.testing.assert_allclose(committee.member_logits(images), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(committee.predict_logits(images), want.sum(0), rtol=1e-4, atol=1e-4)
    graphs = {("uint8", "single"), ("uint8", "latency")}  # batch 1 (compiled at load), and dynamic batches
    assert set(committee.runner.graphs) == graphs  # no float model compiled for uint8 callers
    as_float = committee.predict_logits(images.astype(np.float32) / 255)  # standardised inside: same logits
    np.testing.assert_allclose(as_float, want.sum(0), rtol=1e-4, atol=1e-4)
    assert set(committee.runner.graphs) == graphs | {("float32", "latency")}
    batch = np.concatenate([images] * 2)[: ovb.THROUGHPUT_FROM]  # mode auto: large batches on the streams
    np.testing.assert_allclose(committee.member_logits(batch), reference(members, batch), rtol=1e-4, atol=1e-4)
    assert ("uint8", "throughput") in committee.runner.graphs
    np.testing.assert_allclose(committee.predict_logits(images[:1]), want.sum(0)[:1], rtol=1e-4, atol=1e-4)
    single = committee.runner.graphs["uint8", "single"].compiled.input(0).get_partial_shape()
    assert single.is_static and single[0].get_length() == 1  # one image a call: the static graph
    np.testing.assert_allclose(committee.predict_logits(images[2:3].astype(np.float32)), want.sum(0)[2:3],
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    assert ("float32", "single") in committee.runner.graphs


@pytest.mark.skipif(not cpu_info().has_bf16, reason=f"this CPU has no AMX/AVX512_BF16 ({cpu_info().describe()})")
def test_bf16_close_to_torch_where_the_cpu_has_it(export):
    members, directory = export
    images = np.random.default_rng(1).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    want = reference(members, images.transpose(0, 3, 1, 2).copy())
    for precision in ("auto", "bf16"):
        committee = load(directory, precision=precision)
        assert committee.backend == "openvino[CPU,bf16]"
        assert relative_error(committee.member_logits(images), want) <= 2e-2
        assert relative_error(committee.predict_logits(images), want.sum(0)) <= 2e-2


def test_standardisation_is_kept_f32_in_the_model_it_compiles(export):
    """Every node from the input up to the first convolutions carries the plugin's typed mark
    (DisablePrecisionConversion, read back from IR), so the bf16 hint cannot lower it; the
    convolutions and everything after are left to the hint. The uint8 graph's copy keeps the marks (its
    added u8 -> f32 Convert needs none: bf16 holds the integers 0..255 exactly)."""
    _, directory = export
    committee = load(directory, precision="fp32")
    model = committee.runner.model
    for graph in (model, ovb.uint8_input(model)):
        kept = [n for n in ovb.standardisation_nodes(graph) if n.get_type_name() != "Convert"]
        assert {"ReduceMean", "Subtract", "Sqrt", "Divide"} <= {n.get_type_name() for n in kept}
        assert all("DisablePrecisionConversion_0" in n.get_rt_info() for n in kept), [
            n.get_type_name() for n in kept if "DisablePrecisionConversion_0" not in n.get_rt_info()
        ]
        later = [n for n in graph.get_ordered_ops() if n.get_type_name() in ("Convolution", "MatMul")]
        assert later and not any("DisablePrecisionConversion_0" in n.get_rt_info() for n in later)
    committee.close()


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_images_offset_by_10000_match_torch_fp32(export, precision):
    """Float images far from zero (pixels + 10,000) are standardised in f32 whatever the precision: on a
    bf16 CPU the default graph stays as close to torch fp32 as without the offset (where the CPU has no
    bf16, "auto" is f32 and this checks the f32 path)."""
    members, directory = export
    images = np.random.default_rng(2).integers(0, 256, (16, 3, 16, 16)).astype(np.float32) + 10_000
    want = reference(members, images)
    committee = load(directory, precision=precision)
    got = committee.member_logits(images)
    tolerance = 2e-2 if committee.runner.precision == "bf16" else 1e-4
    assert relative_error(got, want) <= tolerance
    assert relative_error(committee.predict_logits(images), want.sum(0)) <= tolerance
    committee.close()


def test_throughput_mode_splits_batches_and_serves_concurrent_callers(export):
    members, directory = export
    images = np.random.default_rng(2).integers(0, 256, (9, 3, 16, 16), dtype=np.uint8)
    want = reference(members, images)
    committee = load(directory, precision="fp32", mode="throughput")
    assert committee.backend == "openvino[CPU,fp32,throughput]"
    np.testing.assert_allclose(committee.member_logits(images), want, rtol=1e-4, atol=1e-4)
    results = [None] * 4

    def call(i):
        results[i] = committee.predict_logits(images[i : i + 5])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, got in enumerate(results):
        np.testing.assert_allclose(got, want.sum(0)[i : i + 5], rtol=1e-4, atol=1e-4)


def test_precision_follows_the_cpu_flags():
    assert ovb.choose_precision("auto", AMX) == ovb.choose_precision("auto", ZEN4) == "bf16"
    assert ovb.choose_precision("auto", AVX2) == ovb.choose_precision("auto", SKX) == "fp32"
    assert ovb.choose_precision("fp32", AMX) == "fp32" and ovb.choose_precision("bf16", ZEN4) == "bf16"
    unknown = CpuInfo("arm64", None)  # no /proc/cpuinfo: OpenVINO's capabilities decide
    assert ovb.choose_precision("auto", unknown, ["FP32", "BF16"]) == "bf16"
    assert ovb.choose_precision("auto", unknown, ["FP32"]) == "fp32"
    for cpu in (AVX2, SKX):
        with pytest.raises(BackendUnavailable, match=r"needs a CPU with amx_bf16 or avx512_bf16.*has neither"):
            ovb.choose_precision("bf16", cpu)


def test_cpu_kind_from_cpuinfo_text():
    text = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 fma avx512f avx512_bf16 avx512_vnni\n"
    info = parse_cpuinfo(text + "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    assert info.model == "AMD EPYC" and info.flags == ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16")
    assert info.kind == "avx512_bf16" and info.has_bf16
    assert [c.kind for c in (AMX, ZEN4, AVX2, SKX)] == ["amx", "avx512_bf16", "avx2", "avx512"]
    assert parse_cpuinfo("model name\t: x\nflags\t\t: fpu sse2\n").kind == "sse"
    assert CpuInfo("m", None).kind == "unknown" and CpuInfo("m", None).has_bf16 is None
    assert json.loads(json.dumps(ZEN4.to_dict()))["isa_flags"] == list(ZEN4.flags)


def test_bf16_refused_on_this_cpu_without_it(export, monkeypatch):
    _, directory = export
    monkeypatch.setattr(ovb, "cpu_info", lambda: AVX2)
    with pytest.raises(BackendUnavailable, match=r"precision='bf16' needs .*AMD EPYC 7B12.*avx2 fma"):
        load(directory, precision="bf16")
    committee = load(directory)  # auto: f32 on this CPU
    assert committee.backend == "openvino[CPU,fp32]"


def test_refusals_name_what_to_do(export, tmp_path):
    members, directory = export
    source = load_source(directory)
    with pytest.raises(ValueError, match=r"device='cuda' is not allowed: openvino takes None or cpu"):
        Committee.load(source, "openvino", device="cuda")
    with pytest.raises(ValueError, match=r"mode='fast' is not allowed: openvino takes one of 'auto', 'latency'"):
        Committee.load(source, "openvino", mode="fast")
    with pytest.raises(ValueError, match=r"precision='fp16' is not allowed: openvino takes one of 'auto', 'fp32'"):
        Committee.load(source, "openvino", precision="fp16")
    with pytest.raises(BackendUnavailable, match=r"needs an export directory.*lsmha-export onnx"):
        ovb.open(Source(specs=[m.spec for m in members], models=members), ovb.Options())
    no_graph = Source(specs=source.specs, manifest=source.manifest)
    no_graph.manifest.files = [e for e in source.manifest.files if e.format != "onnx"]
    with pytest.raises(BackendUnavailable, match=r"no fp32 ONNX committee graph.*run `lsmha-export onnx`"):
        ovb.open(no_graph, ovb.Options())


def test_a_tampered_graph_is_refused_by_the_manifest(export, tmp_path):
    import shutil

    _, directory = export
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    with open(copy / "committee.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match=r"committee.onnx.*sha256"):
        load(copy)


def test_missing_or_old_openvino_is_explained(monkeypatch):
    import openvino

    monkeypatch.setattr(openvino, "__version__", "2024.6.0-17404-4c0f47d2335-releases/2024/6")
    assert ovb.unavailable() == (
        "openvino 2024.6.0-17404-4c0f47d2335-releases/2024/6 is too old: lsmha needs openvino >= 2025.1 "
        "(ONNX opset-23 Attention): pip install -U openvino"
    )
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    reason = ovb.unavailable()
    assert reason.startswith("openvino is not installed") and reason.endswith("pip install -U openvino")


def test_auto_skips_openvino_with_the_reason(export, monkeypatch, caplog):
    import logging

    from lsmha.engine import BACKENDS, auto_order, open_backend

    if "openvino" not in BACKENDS or "openvino" not in auto_order("cpu"):
        pytest.skip("openvino is not in the CPU auto order of this registry")
    _, directory = export
    source = load_source(directory)
    monkeypatch.setattr(ovb, "_version", lambda text: (2024, 6))  # openvino too old, as unavailable() sees it
    import lsmha.engine.backends as registry

    # openvino first whatever this CPU is (without bf16, onnxruntime comes first and opens before it)
    monkeypatch.setattr(registry, "CPU_F32_AUTO_ORDER", registry.CPU_AUTO_ORDER)
    with caplog.at_level(logging.INFO, logger="lsmha.engine"):
        runner = open_backend("auto", source, device="cpu")
    assert not runner.name.startswith("openvino")
    assert (
        "openvino: backend 'openvino' is unavailable: openvino" in caplog.text
        and "pip install -U openvino" in caplog.text
    )
    monkeypatch.undo()
    first = auto_order("cpu")[0]  # openvino on a bf16 CPU, onnxruntime before it elsewhere
    assert open_backend("auto", source, device="cpu").name.startswith(first)
