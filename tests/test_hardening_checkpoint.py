"""Checkpoints whose spec metadata disagrees with the tensors they hold."""

import json

import pytest
import torch
from safetensors.torch import save_file

import lsmha
from lsmha.models import checkpoint


def _forged(tmp_path, tiny_spec, **changes):
    """A checkpoint holding `tiny_spec`'s tensors, its metadata claiming a changed spec."""
    state = {k: v.contiguous() for k, v in lsmha.CCT(tiny_spec).state_dict().items()}
    spec = {**json.loads(tiny_spec.to_json()), **changes}
    meta = {"format": checkpoint.FORMAT, "spec": json.dumps(spec), "facts": "{}"}
    path = tmp_path / "forged.safetensors"
    save_file(state, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"img_size": 4096}, r"pos_embed.*the spec needs \(1, 4194304, 32\)"),
        ({"dim": 32768, "heads": 4}, r"has shape .*32.*the spec needs .*32768"),
        ({"num_classes": 100_000_000}, r"fc.weight.*the spec needs \(100000000, 32\)"),
        ({"n_blocks": 100_000, "heads": 4}, r"holds 2 blocks, the spec says n_blocks=100000"),
        ({"mlp_ratio": 4096.0}, r"fc1.weight.*the spec needs \(131072, 32\)"),
    ],
)
def test_forged_spec_is_refused_before_any_weight_is_allocated(tmp_path, tiny_spec, monkeypatch, changes, message):
    """the header's tensor shapes are compared with the spec before the model
    is built; only a meta-device model (no memory) may be built from an unchecked spec."""
    path = _forged(tmp_path, tiny_spec, **changes)
    real_cct = checkpoint.CCT

    def meta_only(spec):
        if torch.empty(0).device.type != "meta" and spec != tiny_spec:
            raise AssertionError(f"a model was allocated from the unchecked spec {spec}")
        return real_cct(spec)

    monkeypatch.setattr(checkpoint, "CCT", meta_only)
    with pytest.raises(ValueError, match=message):
        lsmha.load(path)


def test_matching_checkpoint_still_loads(tmp_path, tiny_spec):
    model = lsmha.CCT(tiny_spec).eval()
    path = lsmha.save(model, tmp_path / "ok.safetensors")
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(lsmha.load(path)(x), model(x))
