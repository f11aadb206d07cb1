"""The compact convolutional transformer (CCT), readable top to bottom.

images (B, C, H, W), raw pixels in any scale
  -> Standardize -> ConvTokenizer (B, N, D) -> + positional embedding
  -> n_blocks x Block -> LayerNorm            = forward_features
  -> SeqPool (B, D) -> Linear (B, classes)     = forward_head
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from .layers import Block, ConvTokenizer, SeqPool, Standardize, init_weights
from .spec import CCTSpec


class CCT(nn.Module):
    """A CCT built from a `CCTSpec` (see `lsmha.models.spec`)."""

    def __init__(self, spec: CCTSpec) -> None:
        super().__init__()
        self.spec = spec
        self.standardize = Standardize()
        self.tokenizer = ConvTokenizer(spec.n_conv, spec.in_chans, spec.conv_width, spec.dim, spec.pool)
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.seq_len, spec.dim))
        self.pos_drop = nn.Dropout(spec.dropout)
        rates = torch.linspace(
            0, spec.drop_path, spec.n_blocks, device="cpu"
        ).tolist()  # plain floats, also under a meta device
        self.blocks = nn.ModuleList(
            Block(spec.dim, h, spec.mlp_dim, spec.dropout, spec.attn_dropout, r)
            for h, r in zip(spec.block_heads, rates)
        )
        self.norm = nn.LayerNorm(spec.dim)
        self.pool = SeqPool(spec.dim)
        self.fc = nn.Linear(spec.dim, spec.num_classes)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.2)

    def without_standardize(self) -> CCT:
        """A copy that takes images already standardised (its `standardize` an identity): for
        engines and exported graphs that standardise once, in float32, for all members."""
        body = copy.deepcopy(self)
        body.standardize = nn.Identity()
        return body

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Raw images -> positioned tokens (B, N, D)."""
        return self.pos_drop(self.tokenizer(self.standardize(x)) + self.pos_embed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)  # (B, N, D)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x))  # (B, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_truncated(self, x: torch.Tensor, block: int, at: Literal["output", "attn"] = "attn") -> torch.Tensor:
        """Tokens (B, N, D) for single-head performance (SHP).

        Args:
            x: raw images (B, C, H, W).
            block: 1-based block index m.
            at: "output" stops after block m's output (the paper's first
                measurement); "attn" after block m's QKV attention, before its
                projection (the paper's second, per-head measurement).
        """
        if not 1 <= block <= len(self.blocks):
            raise ValueError(f"block must be in 1..{len(self.blocks)}, got {block}")
        if at not in ("output", "attn"):
            raise ValueError(f"at must be 'output' or 'attn', got {at!r}")
        x = self.embed(x)
        for blk in self.blocks[: block - 1]:
            x = blk(x)
        last = self.blocks[block - 1]
        return last(x) if at == "output" else last.attn.attend(last.pre_norm(x))
