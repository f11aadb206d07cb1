"""Classifier head, head silencing, SHP/SNP/HP matrices and the block record."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsmha.analysis.block import BlockResult, analyse_block
from lsmha.analysis.heads import (
    CachedTokens,
    ClassifierHead,
    HeadRecipe,
    LiveTokens,
    evaluate_head,
    token_source,
    train_head,
)
from lsmha.analysis.matrices import head_columns, hp_from_snp, normalise, shp_fields, snp_fields
from lsmha.models import CCT


def random_head(dim=16, labels=5, seed=0) -> ClassifierHead:
    torch.manual_seed(seed)
    head = ClassifierHead(dim, labels).double()
    torch.nn.init.normal_(head.score.weight)
    torch.nn.init.normal_(head.fc.weight)
    return head


def test_head_is_bias_free_and_fields_sum_to_logits():
    head = random_head()
    assert head.score.bias is None and head.fc.bias is None
    x = torch.randn(7, 9, 16, dtype=torch.float64)
    fields = sum(head.fields(x, c) for c in head_columns(16, 4))
    torch.testing.assert_close(fields, head(x))


def test_silencing_uses_full_token_pooling_weights():
    head = random_head()
    x = torch.randn(3, 9, 16, dtype=torch.float64)
    cols = head_columns(16, 4)[1]
    w = head.score(x).softmax(dim=1)  # pooling weights of the FULL tokens
    pooled = (w * x).sum(1)
    expected = pooled[:, cols] @ head.fc.weight[:, cols].T
    torch.testing.assert_close(head.fields(x, cols), expected)


def test_shp_fields_equal_literal_silencing_averaged_per_label():
    head = random_head(dim=16, labels=5, seed=1).float()
    x = torch.randn(40, 9, 16)
    y = torch.arange(40) % 5
    ev = evaluate_head(head, CachedTokens(x, "cpu"), y, 5)
    raw = shp_fields(ev.label_means, head.fc.weight, heads=4)
    for h, cols in enumerate(head_columns(16, 4)):
        with torch.no_grad():
            f = head.fields(x, cols).double()
        literal = torch.stack([f[y == i].mean(0) for i in range(5)]).numpy()
        np.testing.assert_allclose(raw[h], literal, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        logits = head(x).double()
    full = torch.stack([logits[y == i].mean(0) for i in range(5)]).numpy()
    np.testing.assert_allclose(raw.sum(0), full, rtol=1e-5, atol=1e-6)  # heads add up to the full head
    assert ev.accuracy == pytest.approx(float((logits.argmax(1) == y).double().mean()))


def test_normalise_divides_by_max_and_reports_non_positive_maxima():
    raw = np.stack([np.array([[1.0, 4.0], [-2.0, 2.0]]), np.array([[-1.0, -3.0], [-0.5, -2.0]]), np.zeros((2, 2))])
    with pytest.warns(UserWarning, match="not positive"):
        out, maxima = normalise(raw)
    np.testing.assert_allclose(out[0], [[0.25, 1.0], [-0.5, 0.5]])
    assert np.isnan(out[1]).all() and np.isnan(out[2]).all()
    np.testing.assert_allclose(maxima, [4.0, -0.5, 0.0])


def test_snp_matrices_sum_to_shp_and_hp_equals_shp_when_node_peaks_are_equal():
    rng = np.random.default_rng(0)
    p = np.abs(rng.normal(size=(6, 8)))
    w = np.abs(rng.normal(size=(6, 8)))
    snp = snp_fields(p, w, slice(4, 8))
    np.testing.assert_allclose(snp.sum(0), shp_fields(p, w, heads=2)[1])
    # scale each node's FC column so every SNP matrix of head 2 peaks at 1: HP = normalised SHP
    w_eq = w.copy()
    w_eq[:, 4:] /= snp.reshape(4, -1).max(1)
    shp = normalise(shp_fields(p, w_eq, heads=2))[0][1]
    np.testing.assert_allclose(hp_from_snp(p, w_eq, heads=2, head=1), shp)
    hp = hp_from_snp(p, w, heads=2, head=1)
    assert hp.max() == pytest.approx(1.0) and not np.allclose(hp, normalise(shp_fields(p, w, 2))[0][1])


def test_train_head_learns_label_dependent_tokens():
    torch.manual_seed(0)
    labels = torch.arange(200) % 4
    centres = torch.randn(4, 1, 16) * 2
    x = centres[labels] + torch.randn(200, 6, 16)
    head = train_head(
        CachedTokens(x, "cpu"), labels, 4, 16, HeadRecipe(epochs=10, batch_size=25, lr=1e-2), progress=False
    )
    assert evaluate_head(head, CachedTokens(x, "cpu"), labels, 4).accuracy > 0.9


def test_evaluate_head_refuses_a_label_without_images():
    head = ClassifierHead(8, 3)
    with pytest.raises(ValueError, match=r"labels \[2\] have no validation image"):
        evaluate_head(head, CachedTokens(torch.randn(4, 5, 8), "cpu"), torch.tensor([0, 1, 0, 1]), 3)
    with pytest.raises(ValueError, match="0..2"):
        evaluate_head(head, CachedTokens(torch.randn(2, 5, 8), "cpu"), torch.tensor([0, 5]), 3)


def test_cached_and_live_tokens_agree(tiny_spec):
    model = CCT(tiny_spec).eval()
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    cached = token_source(model, images, block=2, at="attn", batch_size=2, progress=False)
    live = token_source(model, images, block=2, at="attn", cache_bytes=0)
    assert isinstance(cached, CachedTokens) and isinstance(live, LiveTokens)
    index = torch.tensor([4, 0, 2])
    torch.testing.assert_close(cached.tokens(index), live.tokens(index))
    with torch.no_grad():
        torch.testing.assert_close(cached.tokens(index), model.forward_truncated(images[index], 2, "attn"))


def test_analyse_block_record_round_trips(tiny_spec, tmp_path):
    model = CCT(tiny_spec).eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (30, 3, 16, 16), dtype=torch.uint8, generator=gen)
    labels = torch.arange(30) % 10
    result = analyse_block(
        model, (images, labels), (images, labels), 1, 10, recipe=HeadRecipe(epochs=1), progress=False, meta={"x": 1}
    )
    assert result.raw.shape == (4, 10, 10) and result.heads == 4 and 0 <= result.attn_acc <= 1
    assert result.meta["x"] == 1 and result.meta["n_train"] == 30
    back = BlockResult.load(result.save(tmp_path / "b1.npz"))
    np.testing.assert_array_equal(back.raw, result.raw)
    np.testing.assert_array_equal(back.weight, result.weight)
    assert (back.block, back.at, back.heads, back.attn_acc, back.meta) == (1, "attn", 4, result.attn_acc, result.meta)
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_analyse_block_on_cuda_matches_cpu_tokens(tiny_spec):
    model = CCT(tiny_spec).eval()
    images = torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8)
    labels = torch.arange(20) % 10
    on_gpu = token_source(model, images, block=2, at="attn", device="cuda", progress=False)
    index = torch.tensor([3, 0, 7])
    gpu_tokens = on_gpu.tokens(index).cpu()
    with torch.no_grad():
        cpu_tokens = model.cpu().forward_truncated(images[index], 2, "attn")
    torch.testing.assert_close(gpu_tokens, cpu_tokens, rtol=1e-3, atol=1e-3)
    result = analyse_block(
        model, (images, labels), (images, labels), 2, 10, recipe=HeadRecipe(epochs=2), device="cuda", progress=False
    )
    assert result.raw.shape == (4, 10, 10) and np.isfinite(result.raw).all()
