"""Per-image standardisation runs in float32 in every precision: float images far from zero (pixels
+ 10,000, where fp16 and bf16 keep no pixel detail) give the logits of torch fp32 on every backend
and precision this machine runs."""

import numpy as np
import pytest
import torch

from lsmha.engine import Committee
from lsmha.engine.backends import available_backends
from lsmha.models import CCT, CCTSpec


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from lsmha.export import export_onnx

    torch.manual_seed(0)
    spec = CCTSpec(n_conv=2, n_blocks=1, dim=64, heads=4, num_classes=10, img_size=16, attn_dropout=0.0)
    members = [CCT(spec.replace(name=f"m{i}")).eval() for i in range(2)]
    directory = tmp_path_factory.mktemp("offset_export")
    export_onnx(members, directory, precisions=("fp32", "fp16"))
    return members, directory


@pytest.mark.parametrize(
    ("backend", "precision", "tolerance"),
    [("onnxruntime", "fp32", 1e-4), ("onnxruntime", "fp16", 2e-2), ("openvino", "auto", 2e-2)],
)
def test_offset_images_match_torch_fp32(export, backend, precision, tolerance):
    if available_backends()[backend]:
        pytest.skip(available_backends()[backend])
    members, directory = export
    images = np.random.default_rng(3).integers(0, 256, (16, 3, 16, 16)).astype(np.float32) + 10_000
    with torch.inference_mode():
        want = sum(m(torch.from_numpy(images)) for m in members).numpy()  # torch fp32
    committee = Committee.load(directory, backend, precision=precision)
    got = committee.predict_logits(images)
    committee.close()
    assert np.abs(got - want).max() / np.abs(want).max() <= tolerance
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
