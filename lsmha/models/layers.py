"""The CCT building blocks: standardisation, tokenizer, attention, block, pooling.

Each block's `forward` reads as its equation. Shapes: B images, N tokens, D = dim,
H heads, hd = D / H head size, hp = hd padded up to a multiple of 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dropout_attention import chunked_dropout_attention


class Standardize(nn.Module):
    """Per-image standardisation (paper, Appendix): subtract each image's mean and
    divide by its standard deviation, over all its pixels and channels.

    Parameter-free and the model's first step, so every backend accepts raw pixels
    in any scale (uint8 0..255 or float 0..1 give the same logits). A constant
    image has std 0; the floor `eps` keeps it finite (it maps to all zeros).
    """

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() if not torch.is_floating_point(x) else x
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        centred = x - mean
        std = centred.square().mean(dim=(1, 2, 3), keepdim=True).sqrt()
        return centred / std.clamp_min(self.eps)


class ConvTokenizer(nn.Module):
    """`n_conv` x [Conv2d 3x3 s1 p1 (no bias) -> ReLU], MaxPool2d(3, 2, 1) after the
    first conv (`pool="first"`) or after every conv (`pool="all"`), then the grid
    flattened to tokens: (B, C, H, W) -> (B, N, D).

    With `members` = G > 1 it is G tokenizers side by side along channels, for stacked
    committees: the first conv reads the shared image and writes G x width channels, the
    later convs are grouped (groups=G), so member g owns channels [g*D, (g+1)*D) of the
    tokens (B, N, G*D).
    """

    def __init__(
        self, n_conv: int, in_chans: int, width: int, dim: int, pool: str = "first", members: int = 1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n_conv):
            c_in = in_chans if i == 0 else members * width
            c_out = members * (dim if i == n_conv - 1 else width)
            groups = 1 if i == 0 else members
            layers += [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False, groups=groups), nn.ReLU(inplace=True)]
            if i == 0 or pool == "all":
                layers.append(nn.MaxPool2d(3, 2, 1))
        self.layers = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    @property
    def convs(self) -> list[nn.Conv2d]:
        """The convolutions, first to last."""
        return [m for m in self.layers if isinstance(m, nn.Conv2d)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(2).transpose(1, 2)  # (B, N, members * D)


def _one_thread() -> bool:
    return torch.get_num_threads() == 1


def padded_head_size(head_size: int, multiple: int = 8) -> int:
    """Head size rounded up to `multiple`, the granularity fused SDPA kernels want."""
    return -(-head_size // multiple) * multiple


def split_heads(qkv: torch.Tensor, heads: int, head_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qkv projections (B, N, 3 * heads * head_size), laid out [q | k | v] -> q, k, v, each (B, H, N, hd)."""
    B, N, _ = qkv.shape
    return qkv.reshape(B, N, 3, heads, head_size).permute(2, 0, 3, 1, 4).unbind(0)


def merge_heads(out: torch.Tensor) -> torch.Tensor:
    """Per-head outputs (B, H, N, hd) -> (B, N, H * hd)."""
    B, H, N, hd = out.shape
    return out.transpose(1, 2).reshape(B, N, H * hd)


def fused_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout_p: float = 0.0
) -> torch.Tensor:
    """softmax(q kᵀ · scale) v through `F.scaled_dot_product_attention`: (B, H, N, hd) -> (B, H, N, hd).

    A head size that is not a multiple of 8 is zero-padded to the next one (the zeros add
    nothing to q·k and give zero output columns, cut off again) so fused kernels apply;
    `scale` is the caller's, normally the TRUE head size's hd**-0.5."""
    hd = q.shape[-1]
    pad = padded_head_size(hd) - hd
    if pad:
        q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))  # (B, H, N, hp)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    return out[..., :hd] if pad else out


class Attention(nn.Module):
    """Multi-head self-attention: qkv Linear (no bias) -> SDPA -> proj Linear.

    With `fused_attn` it calls `F.scaled_dot_product_attention`; head sizes that are
    not a multiple of 8 (Table 7 has 11 and 13) are zero-padded to the next multiple
    of 8 with the scale of the TRUE size, so q·k and the weighted sum of v are
    unchanged while fused kernels apply. The plain path is kept beside it for
    checking.

    Training on a CPU with attention dropout and one torch thread, `chunked_dropout`
    runs `chunked_dropout_attention` (the same dropout, in cache-sized chunks) instead of
    SDPA, whose CPU math fallback writes every head's N x N weights to memory. With more
    threads SDPA stays: the chunk loop's many short parallel regions made it slower there.
    """

    fused_attn: bool = True
    chunked_dropout: bool | None = None  # None: with one torch thread; True / False: always / never

    def __init__(self, dim: int, heads: int, attn_dropout: float = 0.0, proj_dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.head_size = dim // heads
        self.padded_size = padded_head_size(self.head_size)
        self.scale = self.head_size**-0.5
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_dropout)

    def _chunked(self) -> bool:
        return _one_thread() if self.chunked_dropout is None else self.chunked_dropout

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The QKV attention before the projection: (B, N, D) -> (B, N, D)."""
        q, k, v = split_heads(self.qkv(x), self.heads, self.head_size)  # (B, H, N, hd)
        p = self.attn_dropout if self.training else 0.0
        if self.fused_attn and p > 0 and x.device.type == "cpu" and self._chunked():
            out = chunked_dropout_attention(q, k, v, p, self.scale)
        elif self.fused_attn:
            out = fused_attention(q, k, v, self.scale, p)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
            attn = F.dropout(attn.softmax(dim=-1), p)
            out = attn @ v
        return merge_heads(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_drop(self.proj(self.attend(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample in training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class ResidualBlock(nn.Module):
    """CCT's block equation, in CCT's own order (norm1 sits on the residual stream), over the
    parts a subclass provides (`pre_norm`, `attn`, `norm1`, `mlp`, `drop_path`):
    x = x + attn(pre_norm(x)); x = norm1(x); x = x + mlp(x). `Block` is one member's;
    the stacked committee's block (`lsmha.engine.stacked`) is G members' at once."""

    pre_norm: nn.Module
    attn: nn.Module
    norm1: nn.Module
    drop_path: nn.Module

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop_path(self.attn(self.pre_norm(x))))
        return x + self.drop_path(self.mlp(x))


class Block(ResidualBlock):
    """CCT's encoder block: x = x + attn(pre_norm(x)); x = norm1(x); x = x + fc2(gelu(fc1(x)))."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_dim: int,
        dropout: float = 0.0,
        attn_dropout: float = 0.1,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.pre_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, attn_dropout, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)
        self.drop = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


def seq_pool(x: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """CCT's sequence pooling over tokens: softmax(score, over N)ᵀ x: (..., N, D), (..., N, 1) -> (..., D)."""
    return (score.softmax(dim=-2).transpose(-2, -1) @ x).squeeze(-2)


class SeqPool(nn.Module):
    """CCT's sequence pooling: softmax(Linear(D, 1)(x), over tokens)ᵀ x -> (B, D)."""

    def __init__(self, dim: int, bias: bool = True) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return seq_pool(x, self.score(x))  # (B, D)


def init_weights(module: nn.Module) -> None:
    """CCT's init for linears and norms (convs keep Kaiming-normal)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
