import json
import re

import pytest
import torch

import lsmha
from lsmha.models import (
    PAPER_COMMITTEES,
    CCTSpec,
    committee_specs,
    count_macs,
    count_params,
    create_model,
    layer_latency,
    list_models,
    model_spec,
    parse_committee,
)
from lsmha.models.layers import Attention, Standardize


def test_cct_7_3x1_matches_official_parameter_count_and_macs():
    model = create_model("cct_7_3x1")
    assert count_params(model) == 3_783_269
    macs = count_macs(model.spec)
    assert 1.17e9 < macs < 1.19e9
    parts = count_macs(model.spec, breakdown=True)
    assert parts["attention"] == 7 * 2 * 256 * 256 * 256
    assert parts["total"] == macs == parts["conv"] + parts["linear"] + parts["attention"]


def test_paper_layer_latencies_and_tokens():
    latency = {name: layer_latency(model_spec(name)) for name in list_models()}
    assert latency == {"cct_7_3x1": 30, "cct_2_3x5": 14, "cct_2_3x2": 11, "cct_1_3x2": 7, "cct_1_3x1": 6}
    assert model_spec("cct_2_3x5").seq_len == 256
    assert model_spec("cct_2_3x5", pool="all").seq_len == 1  # 32 -> 16 -> 8 -> 4 -> 2 -> 1
    assert model_spec("cct_1_3x1").dim == 1024 and model_spec("cct_1_3x1").heads == 64
    assert model_spec("cct_2_3x2").dim == 512 and model_spec("cct_2_3x2").heads == 32


def test_committee_of_table6_costs_13_3_gmac_per_image():
    total = sum(count_macs(s) for s in committee_specs(parse_committee("table6:5")))
    assert round(total / 1e9, 1) == 13.3
    assert len(parse_committee("table7")) == 10
    members = parse_committee("cct_2_3x2:dim=1024:heads=64,cct_7_3x1:heads=4/4/4/4/4/4/16")
    assert members == [("cct_2_3x2", {"dim": 1024, "heads": 64}), ("cct_7_3x1", {"heads": [4] * 6 + [16]})]
    assert [s.dim for s in committee_specs(PAPER_COMMITTEES["table7"])][3] == 1023


def test_cct_2_3x5_keeps_256_tokens_through_the_model():
    model = create_model("cct_2_3x5", dim=32, heads=4, n_blocks=1).eval()
    tokens = model.forward_features(torch.rand(2, 3, 32, 32))
    assert tokens.shape == (2, 256, 32)


@pytest.mark.parametrize("head_size", [8, 11, 13, 16])
def test_padded_attention_equals_unpadded_in_float64(head_size):
    torch.manual_seed(0)
    heads = 3
    attn = Attention(heads * head_size, heads).double().eval()
    x = torch.randn(2, 10, heads * head_size, dtype=torch.float64)
    attn.fused_attn = True
    fused = attn(x)
    attn.fused_attn = False
    plain = attn(x)
    assert attn.padded_size % 8 == 0 and attn.padded_size >= head_size
    torch.testing.assert_close(fused, plain, rtol=1e-10, atol=1e-10)


def test_per_block_heads():
    model = create_model("cct_7_3x1", heads=[4] * 6 + [32], dim=64).eval()
    assert [b.attn.heads for b in model.blocks] == [4] * 6 + [32]
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 100)


def test_standardize_makes_scale_irrelevant_and_guards_constant_images(tiny_spec):
    model = lsmha.CCT(tiny_spec).eval()
    pixels = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        a = model(pixels)
        b = model(pixels.float() / 255.0)
        c = model(pixels.float() * 7.0 - 3.0)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)
    flat = Standardize()(torch.full((1, 3, 4, 4), 9.0))
    assert torch.isfinite(flat).all() and flat.abs().max() == 0


def test_truncation_returns_tokens_after_block_output_and_attention(tiny_spec):
    model = lsmha.CCT(tiny_spec).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        out2 = model.forward_truncated(x, 2, at="output")
        features = model.forward_features(x)
        attn1 = model.forward_truncated(x, 1, at="attn")
        expected = model.blocks[0].attn.attend(model.blocks[0].pre_norm(model.embed(x)))
    torch.testing.assert_close(model.norm(out2), features)
    torch.testing.assert_close(attn1, expected)
    assert attn1.shape == (2, tiny_spec.seq_len, 32)
    with pytest.raises(ValueError, match="block must be in 1..2"):
        model.forward_truncated(x, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 100, "heads": 3}, "not divisible by block 1's heads=3"),
        ({"heads": [4, 4]}, "heads has 2 entries but n_blocks=7"),
        ({"img_size": 4, "pool": "all", "n_conv": 3}, "too small for 3 max-pool"),
        ({"img_size": 8, "pool": "all", "n_conv": 3}, None),
        ({"pool": "sometimes"}, "pool must be 'first' or 'all'"),
        ({"dropout": 1.5}, "dropout must be in"),
        ({"n_blocks": 0}, "n_blocks must be a positive int"),
    ],
)
def test_bad_specs_fail_with_actionable_messages(kwargs, message):
    if message is None:  # 8 px through three pools leaves one token: valid
        model_spec("cct_7_3x1", **kwargs)
        return
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        model_spec("cct_7_3x1", **kwargs)


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="known models: cct_1_3x1, cct_1_3x2, cct_2_3x2, cct_2_3x5, cct_7_3x1"):
        create_model("cct_9_3x1")
    with pytest.raises(ValueError, match="bad override"):
        create_model("cct_7_3x1", depth=3)


def test_spec_json_round_trip():
    spec = model_spec("cct_7_3x1", heads=[4] * 6 + [16], dim=64)
    again = CCTSpec.from_json(spec.to_json())
    assert again == spec and again.block_heads == spec.block_heads
    assert json.loads(spec.to_json())["heads"] == [4, 4, 4, 4, 4, 4, 16]
    with pytest.raises(ValueError, match="unknown CCTSpec field"):
        CCTSpec.from_dict({**spec.to_dict(), "depth": 3})


def test_bad_committee_strings():
    with pytest.raises(ValueError, match="member count 1..6"):
        parse_committee("table6:9")
    with pytest.raises(ValueError, match="field=value"):
        parse_committee("cct_2_3x2:dim")


def test_the_docs_member_notation_example_parses():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    example = re.search(r"Or name the members yourself: `([^`]+)`", page).group(1)
    specs = committee_specs(parse_committee(example), num_classes=100)
    assert [(s.dim, s.heads) for s in specs] == [(1024, 64), (512, (4, 8))]
