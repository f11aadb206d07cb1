"""Attention with dropout on its weights, for training on a CPU, in cache-sized chunks.

With `dropout_p > 0`, `F.scaled_dot_product_attention` on a CPU falls back to its math
path: every head's N x N scores, softmax, float dropout mask and dropped weights go to
memory, and autograd keeps them for the backward pass. `chunked_dropout_attention`
computes the same thing, softmax(q kᵀ · scale) with each weight kept with probability
1 - p and scaled by 1 / (1 - p), over (batch x heads) in chunks that stay in cache.
It keeps only q, k, v, the output, each row's logsumexp and a one-byte drop mask;
the backward pass recomputes the weights chunk by chunk (as flash attention does).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

# bytes of one N x N float buffer per thread; three such buffers are live in backward
CHUNK_BYTES = 2**21


def _chunk_size(n_tokens: int, itemsize: int) -> int:
    return max(1, CHUNK_BYTES * torch.get_num_threads() // (n_tokens * n_tokens * itemsize))


class ChunkedDropoutAttention(torch.autograd.Function):
    """(BH, N, hd) q, k, v -> (BH, N, hd); see `chunked_dropout_attention`."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, q, k, v, p: float, scale: float, drop: torch.Tensor | None, chunk: int):
        BH, N, _ = q.shape
        keep = 1.0 - p
        qs, kt = q * scale, k.transpose(1, 2)
        out = torch.empty_like(q)
        lse = q.new_empty(BH, N, 1)
        sample = drop is None
        if sample:
            drop = torch.empty(BH, N, N, dtype=torch.bool, device=q.device)
        c = min(chunk, BH)
        s, u = q.new_empty(c, N, N), q.new_empty(c, N, N)
        for i in range(0, BH, c):
            j = min(i + c, BH)
            si = torch.bmm(qs[i:j], kt[i:j], out=s[: j - i])  # (c, N, N)
            m = si.amax(-1, keepdim=True)
            si.sub_(m).exp_()
            total = si.sum(-1, keepdim=True)
            torch.add(m, total.log(), out=lse[i:j])
            if sample:  # dropped where U >= 1 - p: kept with probability 1 - p, as F.dropout
                torch.ge(u[: j - i].uniform_(), keep, out=drop[i:j])
            si.masked_fill_(drop[i:j], 0.0)
            torch.bmm(si, v[i:j], out=out[i:j])
            out[i:j].div_(total.mul_(keep))  # the softmax's normaliser and 1 / (1 - p), on (c, N, hd)
        ctx.save_for_backward(q, k, v, out, lse, drop)
        ctx.p, ctx.scale, ctx.chunk = p, scale, c
        return out

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, dout):
        q, k, v, out, lse, drop = ctx.saved_tensors
        keep, scale, c = 1.0 - ctx.p, ctx.scale, ctx.chunk
        BH, N, _ = q.shape
        dout = dout.contiguous()
        # dS = P ∘ (dP - rowsum(dO ∘ O)), with dP = mask ∘ (dO vᵀ) / (1 - p); scaled by (1 - p) here
        neg_d = (dout * out).sum(-1, keepdim=True).mul_(-keep)  # (BH, N, 1)
        qs, kt = q * scale, k.transpose(1, 2)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        p_buf, pm_buf, dp_buf = (q.new_empty(c, N, N) for _ in range(3))
        zero = q.new_zeros(())
        for i in range(0, BH, c):
            j = min(i + c, BH)
            w = torch.bmm(qs[i:j], kt[i:j], out=p_buf[: j - i]).sub_(lse[i:j]).exp_()  # P
            wm = torch.where(drop[i:j], zero, w, out=pm_buf[: j - i])  # P with the same weights dropped
            torch.bmm(wm.transpose(1, 2), dout[i:j], out=dv[i:j])
            dw = torch.bmm(dout[i:j], v[i:j].transpose(1, 2), out=dp_buf[: j - i])
            ds = w.mul_(neg_d[i:j]).addcmul_(wm, dw)  # (1 - p) dS
            torch.bmm(ds, k[i:j], out=dq[i:j])
            torch.bmm(ds.transpose(1, 2), q[i:j], out=dk[i:j])
        dv.div_(keep)
        dq.mul_(scale / keep)
        dk.mul_(scale / keep)
        return dq, dk, dv, None, None, None, None


def chunked_dropout_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    p: float,
    scale: float,
    drop_mask: torch.Tensor | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """softmax(q kᵀ · scale) with dropout p on the weights, times v: (B, H, N, hd) -> (B, H, N, hd).

    The same distribution as `F.dropout(attn.softmax(-1), p) @ v`: each weight is kept
    independently with probability 1 - p (drawn from torch's default generator) and
    scaled by 1 / (1 - p). Float32 math (inputs are cast under autocast).

    Args:
        q, k, v: (B, H, N, hd) queries, keys and values.
        p: dropout probability, 0 <= p < 1.
        scale: the factor on q kᵀ (head_size ** -0.5).
        drop_mask: (B, H, N, N) bool, True where a weight is dropped; drawn when None
            (given in tests to compare with the plain path under the same mask).
        chunk: (batch x head) slices per chunk; by default about 2 MiB of weights per thread.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"attention dropout p must be in [0, 1), got {p}")
    B, H, N, hd = q.shape
    if drop_mask is not None:
        if drop_mask.shape != (B, H, N, N) or drop_mask.dtype != torch.bool:
            raise ValueError(
                f"drop_mask must be bool of shape {(B, H, N, N)}, got {drop_mask.dtype} {tuple(drop_mask.shape)}"
            )
        drop_mask = drop_mask.reshape(B * H, N, N)
    chunk = chunk or _chunk_size(N, 4)
    flat = (t.reshape(B * H, N, hd) for t in (q, k, v))
    return ChunkedDropoutAttention.apply(*flat, p, scale, drop_mask, chunk).view(B, H, N, hd)
