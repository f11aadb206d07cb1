"""Backend registry and `Committee.load` from a committee.json of checkpoints."""

import dataclasses

import numpy as np
import pytest
import torch

from lsmha.artifacts import write_committee
from lsmha.engine import (
    AUTO_ORDER,
    BACKENDS,
    CPU_AUTO_ORDER,
    CPU_F32_AUTO_ORDER,
    BackendUnavailable,
    Committee,
    Source,
    auto_order,
    open_backend,
)
from lsmha.engine.cpu import cpu_info
from lsmha.models import CCT, CCTSpec, save


@pytest.fixture
def checkpoints(tmp_path):
    torch.manual_seed(0)
    spec = CCTSpec(n_conv=1, n_blocks=1, dim=16, heads=2, num_classes=5, img_size=16, attn_dropout=0.0)
    members = [CCT(spec.replace(name=f"m{i}")).eval() for i in range(2)]
    paths = [save(m, tmp_path / f"m{i}.safetensors") for i, m in enumerate(members)]
    write_committee(tmp_path / "committee.json", paths)
    return members, paths, tmp_path


def test_auto_order_and_registry():
    assert AUTO_ORDER == ("tensorrt", "cuda-graph", "aoti", "onnxruntime", "torch")
    assert auto_order("cuda") == auto_order("cuda:1") == AUTO_ORDER
    assert auto_order("cpu", bf16=True) == CPU_AUTO_ORDER == ("openvino", "onnxruntime", "aoti", "torch")
    assert auto_order("cpu", bf16=False) == CPU_F32_AUTO_ORDER == ("onnxruntime", "openvino", "aoti", "torch")
    here = CPU_AUTO_ORDER if cpu_info().has_bf16 else CPU_F32_AUTO_ORDER
    assert auto_order("cpu") == here
    assert auto_order(None) == (AUTO_ORDER if torch.cuda.is_available() else here)
    assert {"torch", "onnxruntime"} <= set(BACKENDS)
    with pytest.raises(ValueError, match=r"unknown backend 'nope'; known: auto, .*onnxruntime.*torch"):
        open_backend("nope", Source(specs=[]))


def test_load_committee_json_runs_on_torch(checkpoints):
    members, paths, root = checkpoints
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    ref = sum(m(torch.from_numpy(images).permute(0, 3, 1, 2)).detach().numpy() for m in members)
    for committee in (Committee.load(root), Committee.load(root / "committee.json"), Committee.from_checkpoints(paths)):
        assert committee.backend == "torch[cpu]" and committee.members == ["m0", "m1"]
        np.testing.assert_allclose(committee.predict_logits(images), ref, rtol=1e-5, atol=1e-6)


def test_auto_explains_why_nothing_can_run(checkpoints):
    _, _, root = checkpoints
    with pytest.raises(BackendUnavailable, match=r"(?s)onnxruntime: .*lsmha-export onnx.*torch: no torch weights"):
        open_backend("auto", Source(specs=[CCTSpec()]))
    with pytest.raises(BackendUnavailable, match=r"needs an export directory"):
        Committee.load(root, backend="onnxruntime")
    with pytest.raises(ValueError, match=r"precision='fp16' is not allowed: torch takes one of 'fp32'"):
        Committee.load(root, backend="torch", precision="fp16")


def test_load_refuses_a_tampered_checkpoint_and_missing_manifests(checkpoints):
    _, paths, root = checkpoints
    with open(paths[1], "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match=r"m1.safetensors does not match its sha256"):
        Committee.load(root)
    (root / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"neither manifest.json .* nor committee.json"):
        Committee.load(root / "empty")


def test_unknown_and_bad_options_are_refused_before_the_search(checkpoints):
    _, _, root = checkpoints
    with pytest.raises(ValueError, match=r"unknown backend option\(s\) \['bogus'\]"):
        Committee.load(root, backend="auto", bogus=1)
    with pytest.raises(ValueError, match=r"unknown backend option\(s\) \['threads'\]; the backends \['torch'\]"):
        Committee.load(root, backend="torch", threads=2)
    for bad in ("x", "2", -1, 0, 1000, True, 2.0):
        with pytest.raises(ValueError, match=rf"option threads={bad!r} is not allowed: .*takes an int in 1\.\."):
            Committee.load(root, backend="auto", threads=bad)
    with pytest.raises(ValueError, match=r"device='gpu' is not allowed: .*None or cpu, 'cuda', 'cuda:N'"):
        Committee.load(root, device="gpu")


@pytest.mark.parametrize("backend", ["auto", "torch", "onnxruntime", "openvino", "aoti", "tensorrt", "cuda-graph"])
def test_a_bad_precision_is_a_value_error_naming_it_whatever_the_backend(checkpoints, backend):
    _, _, root = checkpoints
    with pytest.raises(ValueError, match=r"backend option precision='fp61' is not allowed: .*takes one of .*'fp32'"):
        Committee.load(root, backend=backend, precision="fp61")


def test_each_backend_declares_typed_options():
    for name, kind in BACKENDS.items():
        defaults = kind.Options()  # every option has a default that its own check accepts
        assert "device" in kind.options(), name
        with pytest.raises(dataclasses.FrozenInstanceError):
            defaults.device = "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_gets_the_engines_message(checkpoints):
    _, _, root = checkpoints
    with pytest.raises(BackendUnavailable, match=r"device='cuda' asked for, but torch .* sees no CUDA device"):
        Committee.load(root, device="cuda")


def test_auto_hands_each_backend_only_its_options_and_logs_the_choice(checkpoints, caplog):
    _, _, root = checkpoints
    # threads is an onnxruntime option: the torch backend (all a committee.json has) must still open
    with caplog.at_level("INFO", logger="lsmha.engine"):
        committee = Committee.load(root, backend="auto", threads=1, device="cpu")
    assert committee.backend == "torch[cpu]"
    (line,) = [r.getMessage() for r in caplog.records if "backend auto chose" in r.getMessage()]
    assert "torch[cpu]" in line and "['threads'] do not apply" in line
    assert "; skipped " in line and "onnxruntime: " in line and "openvino: " in line


def test_auto_never_opens_a_native_package_unless_trusted(checkpoints, monkeypatch):
    from lsmha.artifacts import ExportManifest, file_entry, write_manifest

    members, paths, root = checkpoints
    export = root / "export"
    export.mkdir()
    entries = []
    for i, p in enumerate(paths):
        (export / p.name).write_bytes(p.read_bytes())
        entries.append(file_entry(export, p.name, format="safetensors", precision="fp32", scope=i))
    (export / "committee.cpu.pt2").write_bytes(b"PK\x03\x04 a package whose library would run on load")
    entries.append(file_entry(export, "committee.cpu.pt2", format="pt2", precision="fp32", scope="committee"))
    write_manifest(ExportManifest(export, [m.spec for m in members], entries))
    opened = []

    def spy(source, options):
        opened.append(options)
        raise BackendUnavailable("spy: the package was opened")

    monkeypatch.setitem(BACKENDS, "aoti", dataclasses.replace(BACKENDS["aoti"], open=spy, unavailable=lambda: None))
    assert Committee.load(export, device="cpu").backend == "torch[cpu]" and opened == []
    Committee.load(export, device="cpu", trust_native=True)  # trusted: auto tries it, then falls through
    assert len(opened) == 1
    with pytest.raises(BackendUnavailable, match="spy: the package was opened"):
        Committee.load(export, backend="aoti")  # asked for by name
    assert len(opened) == 2
