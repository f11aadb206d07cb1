"""Backend registry and `Committee.load` from a committee.json of checkpoints."""

import numpy as np
import pytest
import torch

from lsmha.artifacts import write_committee
from lsmha.engine import (
    AUTO_ORDER,
    BACKENDS,
    CPU_AUTO_ORDER,
    BackendUnavailable,
    Committee,
    Source,
    auto_order,
    open_backend,
)
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
    assert auto_order("cpu") == CPU_AUTO_ORDER == ("onnxruntime", "aoti", "torch")
    assert auto_order(None) == (AUTO_ORDER if torch.cuda.is_available() else CPU_AUTO_ORDER)
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
    with pytest.raises(BackendUnavailable, match=r"fp32 only"):
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
