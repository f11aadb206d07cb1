"""TensorRT export and backend: every piece that does not need TensorRT runs here; the
build-and-run test needs TensorRT and a CUDA GPU and skips with the reason otherwise."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from lsmha.artifacts import COMMITTEE, FileEntry, TensorInfo
from lsmha.artifacts.compiled import DEFAULT_PROFILE, BatchProfile, TensorRTUnavailable, import_tensorrt
from lsmha.engine import BackendUnavailable, Committee, available_backends
from lsmha.engine.backends.tensorrt_runtime import IOBuffers, IOTensor, PlanMismatch, check_plan, concrete_shapes
from lsmha.export.directory import write_weights
from lsmha.export.tensorrt import build_recipe, plan_name

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


def plan_entry(version="10.13.0.35", cc="9.0", precision="fp16", scope=COMMITTEE, profile=(1, 4, 64)):
    return FileEntry(
        path=plan_name(scope, precision), sha256="0" * 64, format="plan", precision=precision, scope=scope,
        versions={"tensorrt": version},
        extra={"compute_capability": cc, "profile": BatchProfile(*profile).to_dict(), "gpu": "NVIDIA H100"},
    )  # fmt: skip


# -- profile parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,8,256", (1, 8, 256)),
        (" 2 , 2 , 4 ", (2, 2, 4)),
        ("max=64,min=1,opt=4", (1, 4, 64)),
        ("16", (16, 16, 16)),
    ],
)
def test_profile_parses_the_cli_forms(text, expected):
    p = BatchProfile.parse(text)
    assert (p.min, p.opt, p.max) == expected
    assert BatchProfile.parse(p.to_text()) == p
    assert BatchProfile.from_dict(p.to_dict()) == p


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("8,4,16", "min <= opt <= max"),
        ("0,1,4", "min <= opt <= max"),
        ("1,2", "min,opt,max"),
        ("a,b,c", "expected a batch profile"),
        ("min=1,opt=2", "expected a batch profile"),
        ("", "min,opt,max"),
    ],
)
def test_profile_rejects_bad_ranges_with_the_expected_form(text, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")) as err:
        BatchProfile.parse(text)
    assert repr(text) in str(err.value) or "got" in str(err.value)


def test_profile_shapes_put_the_batch_first():
    assert BatchProfile(1, 4, 64).shapes((3, 32, 32)) == ((1, 3, 32, 32), (4, 3, 32, 32), (64, 3, 32, 32))
    assert DEFAULT_PROFILE.to_text() == "1,1,256"


# -- precision by TensorRT version -------------------------------------------------------------


def test_tensorrt_11_takes_precision_from_the_onnx_types():
    r = build_recipe("11.1.0", "fp16", {"fp32", "fp16"})
    assert (r.onnx_precision, r.strongly_typed, r.flags) == ("fp16", True, ())
    r = build_recipe("11.1.0", "fp32", {"fp32"})
    assert (r.onnx_precision, r.strongly_typed, r.clear_tf32) == ("fp32", True, True)
    with pytest.raises(ValueError, match="strongly typed.*--precision fp16"):
        build_recipe("11.1.0", "fp16", {"fp32"})
    with pytest.raises(ValueError, match="fp32 and fp16 ONNX only"):
        build_recipe("11.4.1", "bf16", {"fp32", "fp16"})


def test_tensorrt_10_uses_builder_flags_on_the_fp32_graph():
    assert build_recipe("10.13.0.35", "fp16", {"fp32", "fp16"}).flags == ("FP16",)
    assert build_recipe("10.13.0.35", "bf16", {"fp32"}).flags == ("BF16",)
    r = build_recipe("10.13.0.35", "fp32", {"fp32"})
    assert (r.onnx_precision, r.strongly_typed, r.flags, r.clear_tf32) == ("fp32", False, (), True)
    only_fp16 = build_recipe("10.3.0", "fp16", {"fp16"})  # no fp32 graph: strongly typed from the fp16 one
    assert (only_fp16.onnx_precision, only_fp16.strongly_typed, only_fp16.flags) == ("fp16", True, ())
    with pytest.raises(ValueError, match="too old"):
        build_recipe("8.6.1", "fp16", {"fp32"})
    with pytest.raises(ValueError, match="precision must be"):
        build_recipe("10.13.0", "int8", {"fp32"})


# -- version / GPU checks ----------------------------------------------------------------------


def test_a_plan_for_this_version_and_gpu_passes():
    check_plan(plan_entry(), "/exp", "10.13.0.35", "9.0")


def test_a_plan_from_another_tensorrt_is_refused_with_the_rebuild_command():
    with pytest.raises(PlanMismatch) as err:
        check_plan(plan_entry(version="10.13.0.35"), "/exp", "11.1.0", "9.0")
    msg = str(err.value)
    assert "TensorRT 10.13.0.35" in msg and "11.1.0" in msg
    assert "`lsmha-export tensorrt /exp --precision fp16 --profile 1,4,64`" in msg


def test_a_plan_for_another_gpu_is_refused_with_the_rebuild_command():
    with pytest.raises(PlanMismatch) as err:
        check_plan(plan_entry(cc="8.9", scope=2, precision="fp32"), "/exp", "10.13.0.35", "9.0")
    msg = str(err.value)
    assert "compute capability 8.9" in msg and "this GPU is 9.0" in msg
    assert "lsmha-export tensorrt /exp --precision fp32 --profile 1,4,64 --members" in msg


def test_check_plan_refuses_other_formats():
    entry = plan_entry()
    with pytest.raises(ValueError, match="expected 'plan'"):
        check_plan(FileEntry(**{**entry.__dict__, "format": "onnx"}), "/exp", "10.13.0.35", "9.0")


# -- buffer planning ---------------------------------------------------------------------------

COMMITTEE_IO = [
    IOTensor("images", True, "FLOAT", (-1, 3, 32, 32)),
    IOTensor("logits", False, "FLOAT", (-1, 100)),
    IOTensor("member_logits", False, "FLOAT", (5, -1, 100)),
]


def test_concrete_shapes_fill_the_batch_axis_wherever_it_is():
    shapes = concrete_shapes(COMMITTEE_IO, 7, BatchProfile(1, 4, 64))
    assert shapes == {"images": (7, 3, 32, 32), "logits": (7, 100), "member_logits": (5, 7, 100)}
    with pytest.raises(ValueError, match="outside the plan's profile"):
        concrete_shapes(COMMITTEE_IO, 65, BatchProfile(1, 4, 64))
    with pytest.raises(ValueError, match="several dynamic axes"):
        concrete_shapes([IOTensor("x", True, "FLOAT", (-1, -1))], 2, BatchProfile(1, 4, 64))


def test_buffers_are_sized_for_max_batch_and_viewed_contiguously_per_call():
    buffers = IOBuffers(COMMITTEE_IO, BatchProfile(1, 4, 8), "cpu")
    assert set(buffers.buffers) == {"logits", "member_logits"}  # inputs bind the caller's tensor
    assert buffers.buffers["member_logits"].numel() == 5 * 8 * 100
    out = buffers.outputs(3)
    assert out["member_logits"].shape == (5, 3, 100) and out["member_logits"].is_contiguous()
    assert out["logits"].data_ptr() == buffers.buffers["logits"].data_ptr()
    # a writer filling the view row-major lands exactly in the view's elements
    out["member_logits"].copy_(torch.arange(1500, dtype=torch.float32).view(5, 3, 100))
    assert torch.equal(buffers.buffers["member_logits"][:1500], torch.arange(1500, dtype=torch.float32))
    half = IOBuffers(
        [IOTensor("images", True, "HALF", (-1, 3)), IOTensor("y", False, "HALF", (-1, 2))], BatchProfile(1, 1, 4), "cpu"
    )
    assert half.buffers["y"].dtype == torch.float16
    with pytest.raises(ValueError, match="no torch buffer type"):
        IOBuffers([IOTensor("y", False, "FP8", (-1, 2))], BatchProfile(1, 1, 4), "cpu")


# -- missing TensorRT --------------------------------------------------------------------------


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_missing_tensorrt_names_the_package_to_install():
    with pytest.raises(TensorRTUnavailable, match=r"pip install tensorrt.*lsmha\[gpu\]"):
        import_tensorrt()
    reason = available_backends()["tensorrt"]
    assert reason and ("pip install tensorrt" in reason or "no CUDA device" in reason)


def test_tensorrt_backend_refuses_clearly_where_it_cannot_run(tmp_path, tiny_spec):
    from lsmha.models import CCT

    torch.manual_seed(0)
    write_weights([CCT(tiny_spec).eval()], tmp_path)
    if available_backends()["tensorrt"] is not None:
        with pytest.raises(BackendUnavailable, match="tensorrt.*unavailable"):
            Committee.load(tmp_path, backend="tensorrt")
    else:
        with pytest.raises(BackendUnavailable, match="no any-precision TensorRT plan"):
            Committee.load(tmp_path, backend="tensorrt")
    committee = Committee.load(tmp_path, backend="auto")  # falls through to what can run
    assert committee.backend.startswith(("torch", "aoti", "onnxruntime", "cuda-graph"))


def test_plan_entries_are_found_by_precision_then_scope(tmp_path, tiny_spec):
    from lsmha.artifacts import ExportManifest
    from lsmha.engine.backends import Source
    from lsmha.engine.backends.tensorrt_backend import pick_plans

    io = (TensorInfo("images", "float32", ("batch", 3, 16, 16)),)
    files = [FileEntry(**{**plan_entry(precision="fp32", scope=i).__dict__, "inputs": io}) for i in range(2)]
    manifest = ExportManifest(tmp_path, [tiny_spec, tiny_spec], files)
    entries, whole, precision = pick_plans(Source(specs=manifest.specs, manifest=manifest), None)
    assert ([e.scope for e in entries], whole, precision) == ([0, 1], False, "fp32")
    manifest.files.append(plan_entry(precision="fp16"))
    entries, whole, precision = pick_plans(Source(specs=manifest.specs, manifest=manifest), None)
    assert (entries[0].scope, whole, precision) == (COMMITTEE, True, "fp16")
    with pytest.raises(BackendUnavailable, match="no bf16-precision TensorRT plan"):
        pick_plans(Source(specs=manifest.specs, manifest=manifest), "bf16")


# -- CLI ---------------------------------------------------------------------------------------


def test_cli_help_shows_defaults(capsys):
    from lsmha.export.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["tensorrt", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "1,1,256" in text and "fp16" in text and "pip install tensorrt" in text


def test_cli_bad_profile_and_missing_manifest_are_usage_errors(tmp_path, capsys):
    from lsmha.export.cli import main

    assert main(["tensorrt", str(tmp_path), "--profile", "8,4,16"]) == 2
    assert "min <= opt <= max" in capsys.readouterr().err
    assert main(["tensorrt", str(tmp_path)]) == 2
    assert "lsmha-export onnx" in capsys.readouterr().err


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_cli_without_tensorrt_fails_with_the_install_command(tmp_path, tiny_spec, capsys):
    from lsmha.export.cli import main
    from lsmha.models import CCT

    write_weights([CCT(tiny_spec).eval()], tmp_path)
    assert main(["tensorrt", str(tmp_path), "--no-progress"]) == 3  # this machine lacks a package
    assert "pip install tensorrt" in capsys.readouterr().err
    assert json.loads((tmp_path / "manifest.json").read_text())["files"][0]["format"] == "safetensors"


# -- the real thing (TensorRT + GPU) -----------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(
    not (HAVE_TRT and torch.cuda.is_available()),
    reason=f"needs TensorRT ({'installed' if HAVE_TRT else 'missing: pip install tensorrt'}) "
    f"and a CUDA GPU ({'present' if torch.cuda.is_available() else 'none'})",
)
def test_plan_builds_reloads_and_matches_torch(tmp_path, tiny_spec):
    from lsmha.export.onnx import export_onnx
    from lsmha.export.tensorrt import export_tensorrt_dir
    from lsmha.models import CCT

    torch.manual_seed(0)
    members = [CCT(tiny_spec).eval() for _ in range(2)]
    export_onnx(members, tmp_path)
    (entry,) = export_tensorrt_dir(tmp_path, precision="fp32", profile=BatchProfile(1, 2, 8))
    assert entry.extra["compute_capability"] and entry.versions["tensorrt"]
    export_tensorrt_dir(tmp_path, precision="fp32", profile=BatchProfile(1, 2, 8))
    assert json.loads((tmp_path / "manifest.json").read_text())["files"][-1]["extra"]["timing_cache_reused"]
    committee = Committee.load(tmp_path, backend="tensorrt", precision="fp32", batch_size=64)
    images = np.random.default_rng(0).integers(0, 256, (11, 3, 16, 16), dtype=np.uint8)
    with torch.inference_mode():
        ref = torch.stack([m(torch.from_numpy(images)) for m in members]).numpy()
    np.testing.assert_allclose(committee.member_logits(images), ref, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(committee.predict_logits(images), ref.sum(0), rtol=1e-3, atol=1e-3)


def test_weakly_typed_builds_keep_the_standardisation_in_float32():
    """With FP16 / BF16 builder flags on the fp32 graph, every layer before the first convolution
    (constants aside) is constrained to float32; the convolution and what follows are left free."""
    from types import SimpleNamespace

    from lsmha.export.tensorrt import keep_standardisation_f32

    kinds = SimpleNamespace(CONVOLUTION="conv", CONSTANT="const")
    trt = SimpleNamespace(LayerType=kinds, float32="f32")

    class Layer:
        def __init__(self, type_, outputs=1):
            self.type, self.num_outputs, self.precision, self.outputs = type_, outputs, None, {}

        def set_output_type(self, index, dtype):
            self.outputs[index] = dtype

    layers = [Layer(t) for t in ("reduce", "const", "elementwise", "reduce", "unary", "elementwise", "conv", "act")]
    network = SimpleNamespace(num_layers=len(layers), get_layer=layers.__getitem__)
    assert keep_standardisation_f32(network, trt) == 5
    assert [layer.precision for layer in layers] == ["f32", None, "f32", "f32", "f32", "f32", None, None]
    assert all(layer.outputs == ({0: "f32"} if layer.precision else {}) for layer in layers)
