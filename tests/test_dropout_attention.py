"""chunked_dropout_attention: the plain path's math under the same mask (values and
gradients), the drop rate p, the Attention module's training path, eval and p=0 unchanged,
bad arguments named, and `lsmha-bench train --attention`."""

import json

import pytest
import torch

from lsmha.bench.cli import main
from lsmha.models.dropout_attention import chunked_dropout_attention
from lsmha.models.layers import Attention


def plain(q, k, v, p, scale, drop):
    """The reference: dropout on the post-softmax weights with a given mask, scaled by 1 / (1 - p)."""
    attn = ((q * scale) @ k.transpose(-2, -1)).softmax(-1)
    return attn.masked_fill(drop, 0.0) / (1 - p) @ v


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("chunk", [1, 4, 100])
def test_chunked_matches_plain_path_under_the_same_mask(dtype, tol, chunk):
    gen = torch.Generator().manual_seed(0)
    B, H, N, hd, p = 2, 3, 17, 5, 0.1
    q, k, v = (torch.randn(B, H, N, hd, generator=gen, dtype=dtype, requires_grad=True) for _ in range(3))
    drop = torch.rand(B, H, N, N, generator=gen) < 0.3
    grad = torch.randn(B, H, N, hd, generator=gen, dtype=dtype)
    out = chunked_dropout_attention(q, k, v, p, hd**-0.5, drop_mask=drop, chunk=chunk)
    ref = plain(q, k, v, p, hd**-0.5, drop)
    assert (out - ref).abs().max() <= tol
    for got, want in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        assert (got - want).abs().max() <= tol


def test_chunked_drop_rate_is_p():
    # q = k = 0 gives uniform weights 1/N and v = I reads them out: out * N * (1 - p) is the keep mask
    B, H, N, p = 4, 8, 64, 0.1
    q = k = torch.zeros(B, H, N, N)
    v = torch.eye(N).expand(B, H, N, N)
    torch.manual_seed(0)
    keep = chunked_dropout_attention(q, k, v, p, 1.0, chunk=5) * N * (1 - p)
    assert torch.allclose(keep, keep.round(), atol=1e-5) and set(keep.round().unique().tolist()) == {0.0, 1.0}
    n = keep.numel()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs((1 - keep.mean().item()) - p) < 5 * sigma
    torch.manual_seed(1)
    again = chunked_dropout_attention(q, k, v, p, 1.0, chunk=5) * N * (1 - p)
    assert not torch.equal(keep.round(), again.round())  # a fresh mask every call


def test_attention_trains_through_the_chunked_path_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # the chunked path is for one thread
    B, N, D, H, p = 3, 10, 32, 4, 0.1
    attn = Attention(D, H, attn_dropout=p).train()
    x = torch.randn(B, N, D)
    torch.manual_seed(7)
    got = attn.attend(x)
    torch.manual_seed(7)  # the mask drawn as documented: dropped where U >= 1 - p
    drop = torch.rand(B * H, N, N) >= 1 - p
    q, k, v = attn.qkv(x).reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)
    want = plain(q, k, v, p, attn.scale, drop.view(B, H, N, N)).transpose(1, 2).reshape(B, N, D)
    assert (got - want).abs().max() <= 1e-5


def test_with_several_threads_sdpa_stays(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    attn = Attention(32, 4, attn_dropout=0.1).train()
    calls = []
    monkeypatch.setattr("lsmha.models.layers.chunked_dropout_attention", lambda q, k, v, p, s: calls.append(p) or q)
    attn.attend(torch.randn(2, 10, 32))
    assert calls == []
    attn.chunked_dropout = True  # asked for by name (lsmha-bench train --attention chunked): taken
    attn.attend(torch.randn(2, 10, 32))
    assert len(calls) == 1


@pytest.mark.parametrize("training, p", [(False, 0.1), (True, 0.0)])
def test_eval_and_no_dropout_are_unchanged(training, p):
    attn = Attention(40, 4, attn_dropout=p).train(training)  # head size 10: padded for SDPA
    x = torch.randn(2, 9, 40)
    attn.chunked_dropout = True
    new = attn(x)
    attn.chunked_dropout = False
    assert torch.equal(new, attn(x))
    attn.fused_attn = False
    assert torch.allclose(new, attn(x), atol=1e-6)


def test_chunked_refuses_bad_arguments():
    q = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\), got 1.0"):
        chunked_dropout_attention(q, q, q, 1.0, 0.5)
    with pytest.raises(ValueError, match=r"drop_mask must be bool of shape \(1, 2, 3, 3\)"):
        chunked_dropout_attention(q, q, q, 0.1, 0.5, drop_mask=torch.zeros(1, 2, 3, 3))


def test_bench_train_compares_attention_paths(tmp_path):
    out = tmp_path / "train.json"
    model = "cct_1_3x1:dim=32:heads=4:num_classes=10"
    args = ["train", "--model", model, "--batch-size", "2", "--steps", "1", "--warmup", "0"]
    assert main([*args, "--device", "cpu", "--attention", "sdpa,chunked", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["machine"]) >= {"cpu_model", "isa_flags", "torch", "threads", "load_average_before"}
    m = r["models"][model]
    assert m["sdpa"]["images_per_s"] > 0 and m["chunked"]["images_per_s"] > 0
    assert m["ratio"]["chunked"] == pytest.approx(m["chunked"]["images_per_s"] / m["sdpa"]["images_per_s"])
    assert main([*args, "--attention", "sdpa,flash"]) == 2
