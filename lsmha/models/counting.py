"""Counting a model: parameters, multiply-accumulates, and the paper's layer latency."""

from __future__ import annotations

from torch import nn

from .spec import CCTSpec


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (3,783,269 for CCT-7/3x1 with 100 classes)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(spec: CCTSpec, breakdown: bool = False) -> int | dict[str, int]:
    """Multiply-accumulates per image: convs, every linear, and both attention
    matmuls (q·kᵀ and attn·v). About 1.18 G for CCT-7/3x1 at 32x32.

    Args:
        spec: the model.
        breakdown: return {"conv", "linear", "attention", "total"} instead of the total.
    """
    conv = 0
    side = spec.img_size
    for i in range(spec.n_conv):
        c_in = spec.in_chans if i == 0 else spec.conv_width
        c_out = spec.dim if i == spec.n_conv - 1 else spec.conv_width
        conv += side * side * 9 * c_in * c_out
        if i == 0 or spec.pool == "all":
            side = (side - 1) // 2 + 1
    n, d, m = spec.seq_len, spec.dim, spec.mlp_dim
    per_block_linear = n * d * 3 * d + n * d * d + 2 * n * d * m
    per_block_attn = 2 * n * n * d
    linear = spec.n_blocks * per_block_linear + 2 * n * d + d * spec.num_classes  # + SeqPool + fc
    attention = spec.n_blocks * per_block_attn
    total = conv + linear + attention
    if breakdown:
        return {"conv": conv, "linear": linear, "attention": attention, "total": total}
    return total


def layer_latency(spec: CCTSpec) -> int:
    """The paper's latency in layers: C convs + 4 per block (QKV attention,
    projection, two FF layers) + 1 output layer. 30 for CCT-7/3x1, 11 for CCT-2/3x2."""
    return spec.n_conv + 4 * spec.n_blocks + 1
