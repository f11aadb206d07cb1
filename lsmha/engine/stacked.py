"""Stacked members: committee members of equal weight shapes run as ONE batched set of GEMMs.

Members that agree on (n_conv, n_blocks, dim, mlp_dim, conv width, pooling, input,
classes) have weights of identical shapes; stacking them along a new leading axis G
turns G small GEMMs into one `bmm`, G LayerNorms into one, and so on — fewer, larger
kernels, which is what a GPU at batch 1 wants. Heads may differ between stacked
members: attention runs once per distinct head count within the group (one fused
SDPA call for all members sharing it).

Shapes: G stacked members, B images, N tokens, D = dim, F = mlp_dim, C = classes.

    shared image batch (B, 3, H, W), standardised once
      -> tokenizer: first conv's weights concatenated (one conv to G*width channels),
         later convs as ONE grouped conv (groups=G)            -> (G, B, N, D)
      -> blocks with stacked LayerNorm / bmm / GELU / residual  -> (G, B, N, D)
      -> LayerNorm, SeqPool, fc                                 -> (G, B, C)

Inference only (no dropout, no stochastic depth). `StackedCommittee` groups a
committee's members, keeps singletons as their own modules, and returns each
member's logits in committee order. It runs on any device and dtype.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models import CCT, CCTSpec
from ..models.layers import Standardize, padded_head_size


def shape_key(spec: CCTSpec) -> tuple:
    """What must agree for two members' weights to stack: every weight shape and the token count.
    Heads are absent on purpose (they change no weight shape)."""
    return (
        spec.n_conv,
        spec.n_blocks,
        spec.dim,
        spec.mlp_dim,
        spec.conv_width,
        spec.pool,
        spec.in_chans,
        spec.img_size,
        spec.num_classes,
        spec.seq_len,
    )


def group_members(specs: Sequence[CCTSpec]) -> list[list[int]]:
    """Member indices grouped by `shape_key`, groups in order of first appearance.

    Table 6's first five (dims 1024, 1024, 512, 512, 512) -> [[0, 1], [2, 3, 4]].
    """
    groups: dict[tuple, list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault(shape_key(spec), []).append(i)
    return list(groups.values())


def _stack(tensors: Sequence[torch.Tensor]) -> nn.Parameter:
    return nn.Parameter(torch.stack([t.detach() for t in tensors]).contiguous(), requires_grad=False)


def _linear_t(linears: Sequence[nn.Linear]) -> tuple[nn.Parameter, nn.Parameter | None]:
    """Stacked transposed weights (G, in, out) and biases (G, 1, out) for `baddbmm`."""
    weight = _stack([lin.weight.t() for lin in linears])
    bias = None if linears[0].bias is None else _stack([lin.bias.unsqueeze(0) for lin in linears])
    return weight, bias


def _index(order: Sequence[int]) -> torch.Tensor:
    """The gather index that puts items listed in `order` back in ascending order."""
    return torch.tensor([list(order).index(i) for i in sorted(order)])


def _bmm_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(G, M, in) @ (G, in, out) + (G, 1, out) -> (G, M, out)."""
    return torch.bmm(x, weight) if bias is None else torch.baddbmm(bias, x, weight)


class StackedLayerNorm(nn.Module):
    """G LayerNorms over the last dim, one kernel: normalise, then each member's affine."""

    def __init__(self, norms: Sequence[nn.LayerNorm]) -> None:
        super().__init__()
        eps = {n.eps for n in norms}
        if len(eps) != 1:
            raise ValueError(f"stacked LayerNorms must share eps, got {sorted(eps)}")
        self.eps = eps.pop()
        self.dim = norms[0].normalized_shape[-1]
        self.weight = _stack([n.weight.view(1, 1, -1) for n in norms])  # (G, 1, 1, D)
        self.bias = _stack([n.bias.view(1, 1, -1) for n in norms])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (G, B, N, D)
        return F.layer_norm(x, (self.dim,), eps=self.eps) * self.weight + self.bias


class StackedAttention(nn.Module):
    """G members' attention: one qkv bmm, one SDPA per distinct head count, one proj bmm.

    Head sizes that are not a multiple of 8 are zero-padded with the true size's
    scale, exactly as `lsmha.models.layers.Attention` does.
    """

    def __init__(self, attns: Sequence[nn.Module]) -> None:
        super().__init__()
        self.qkv_w, _ = _linear_t([a.qkv for a in attns])
        self.proj_w, self.proj_b = _linear_t([a.proj for a in attns])
        by_heads: dict[int, list[int]] = {}
        for g, a in enumerate(attns):
            by_heads.setdefault(a.heads, []).append(g)
        # (heads, member indices as a slice when contiguous, else the name of an index buffer).
        # Index tensors live in buffers (moved with the module): a Python-list index would build
        # a host tensor and copy it to the GPU with a sync on every call, illegal in CUDA-graph capture.
        self.parts: list[tuple[int, slice | str]] = []
        for h, idx in by_heads.items():
            if idx == list(range(idx[0], idx[-1] + 1)):
                self.parts.append((h, slice(idx[0], idx[-1] + 1)))
            else:
                self.register_buffer(f"part{len(self.parts)}", torch.tensor(idx), persistent=False)
                self.parts.append((h, f"part{len(self.parts)}"))
        order = [g for _, idx in by_heads.items() for g in idx]
        self.reorder = order != sorted(order)
        self.register_buffer("restore", _index(order) if self.reorder else None, persistent=False)

    @staticmethod
    def _sdpa(qkv: torch.Tensor, heads: int) -> torch.Tensor:
        g, B, N, three_d = qkv.shape
        D = three_d // 3
        hd = D // heads
        qkv = qkv.reshape(g * B, N, 3, heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (g*B, H, N, hd)
        pad = padded_head_size(hd) - hd
        if pad:
            q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))  # (g*B, H, N, hp)
        out = F.scaled_dot_product_attention(q, k, v, scale=hd**-0.5)[..., :hd]
        return out.transpose(1, 2).reshape(g, B, N, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (G, B, N, D)
        G, B, N, D = x.shape
        qkv = torch.bmm(x.reshape(G, B * N, D), self.qkv_w).view(G, B, N, 3 * D)
        outs = [
            self._sdpa(qkv[idx] if isinstance(idx, slice) else qkv.index_select(0, getattr(self, idx)), heads)
            for heads, idx in self.parts
        ]
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        if self.reorder:
            out = out.index_select(0, self.restore)
        return _bmm_linear(out.reshape(G, B * N, D), self.proj_w, self.proj_b).view(G, B, N, D)


class StackedBlock(nn.Module):
    """G CCT blocks: x = norm1(x + attn(pre_norm(x))); x = x + fc2(gelu(fc1(x)))."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.pre_norm = StackedLayerNorm([b.pre_norm for b in blocks])
        self.attn = StackedAttention([b.attn for b in blocks])
        self.norm1 = StackedLayerNorm([b.norm1 for b in blocks])
        self.fc1_w, self.fc1_b = _linear_t([b.fc1 for b in blocks])
        self.fc2_w, self.fc2_b = _linear_t([b.fc2 for b in blocks])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (G, B, N, D)
        G, B, N, D = x.shape
        x = self.norm1(x + self.attn(self.pre_norm(x)))
        h = F.gelu(_bmm_linear(x.reshape(G, B * N, D), self.fc1_w, self.fc1_b))  # (G, B*N, F)
        return x + _bmm_linear(h, self.fc2_w, self.fc2_b).view(G, B, N, D)


class StackedCCT(nn.Module):
    """G CCT members of equal weight shapes as one module: standardised images -> (G, B, C) logits.

    Args:
        models: members whose specs share `shape_key` (heads may differ). Their weights
            are copied; the members themselves are left untouched.
    """

    def __init__(self, models: Sequence[CCT]) -> None:
        super().__init__()
        keys = {shape_key(m.spec) for m in models}
        if len(keys) != 1:
            raise ValueError(
                f"StackedCCT needs members of equal weight shapes (same shape_key), got {len(keys)} different: "
                f"{sorted(keys)}; group them first with group_members()"
            )
        spec = models[0].spec
        self.size = len(models)
        self.grid = spec.grid_size
        convs = [[m for m in model.tokenizer.layers if isinstance(m, nn.Conv2d)] for model in models]
        # first conv: shared input, weights concatenated along output channels (G*c_out, c_in, 3, 3)
        self.convs = nn.ParameterList([_stack([c[0].weight for c in convs]).flatten(0, 1)])
        # later convs: grouped, member g reads channels [g*c_in, (g+1)*c_in)
        self.convs.extend(_stack([c[i].weight for c in convs]).flatten(0, 1) for i in range(1, spec.n_conv))
        self.pool_after = [i == 0 or spec.pool == "all" for i in range(spec.n_conv)]
        self.pos_embed = _stack([m.pos_embed[0] for m in models])  # (G, N, D)
        self.blocks = nn.ModuleList(StackedBlock([m.blocks[i] for m in models]) for i in range(spec.n_blocks))
        self.norm = StackedLayerNorm([m.norm for m in models])
        self.score_w, self.score_b = _linear_t([m.pool.score for m in models])  # (G, D, 1), (G, 1, 1)
        self.fc_w, self.fc_b = _linear_t([m.fc for m in models])  # (G, D, C), (G, 1, C)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised images (B, c, H, W) -> positioned tokens (G, B, N, D)."""
        for i, (weight, pool) in enumerate(zip(self.convs, self.pool_after)):
            x = F.relu(F.conv2d(x, weight, padding=1, groups=1 if i == 0 else self.size))
            if pool:
                x = F.max_pool2d(x, 3, 2, 1)
        B, GD, h, w = x.shape
        x = x.view(B, self.size, GD // self.size, h * w).permute(1, 0, 3, 2)  # (G, B, N, D)
        return x + self.pos_embed.unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised images (B, c, H, W) in the weights' dtype -> logits (G, B, C)."""
        x = self.tokens(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        G, B, N, D = x.shape
        score = _bmm_linear(x.reshape(G, B * N, D), self.score_w, self.score_b).view(G, B, N, 1)
        pooled = (score.softmax(dim=2).transpose(2, 3) @ x).view(G, B, D)  # SeqPool
        return _bmm_linear(pooled, self.fc_w, self.fc_b)  # (G, B, C)


class MemberUnit(nn.Module):
    """One member run from already standardised images: -> logits (1, B, C).
    Holds a copy of the member, so casting the unit leaves the caller's model alone."""

    def __init__(self, model: CCT) -> None:
        super().__init__()
        self.model = copy.deepcopy(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.tokenizer(x) + m.pos_embed
        for block in m.blocks:
            x = block(x)
        return m.forward_head(m.norm(x)).unsqueeze(0)


class StackedCommittee(nn.Module):
    """A committee as a few units: each group of equal-shape members stacked (`StackedCCT`),
    singletons as their own module (`MemberUnit`). Images are standardised once, in fp32.

    Args:
        models: the members (eval mode); their weights are copied, the members are left untouched.
        stack: False keeps every member as its own unit (the one-by-one reference).

    Attributes:
        units: the modules, each mapping standardised images (B, c, H, W) -> (g, B, C).
        groups: member indices of each unit, in unit order.
    """

    def __init__(self, models: Sequence[CCT], stack: bool = True) -> None:
        super().__init__()
        models = list(models)
        if any(m.training for m in models):
            raise ValueError("StackedCommittee is inference-only: call .eval() on every member first")
        groups = group_members([m.spec for m in models]) if stack else [[i] for i in range(len(models))]
        self.groups = groups
        self.standardize = Standardize()
        self.units = nn.ModuleList(
            StackedCCT([models[i] for i in g]) if len(g) > 1 else MemberUnit(models[g[0]]) for g in groups
        )
        order = [i for g in groups for i in g]
        self.reorder = order != list(range(len(order)))
        # a buffer, not a list: see StackedAttention (no host-to-device copy inside CUDA-graph capture)
        self.register_buffer("restore", _index(order) if self.reorder else None, persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Raw images (B, c, H, W), any dtype -> standardised, in the weights' dtype."""
        return self.standardize(images.float()).to(self.dtype)

    def combine(self, outs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Unit outputs (g, B, C) -> member logits (M, B, C) float32, in committee order."""
        member = torch.cat([o.float() for o in outs]) if len(outs) > 1 else outs[0].float()
        return member.index_select(0, self.restore) if self.reorder else member

    def member_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Raw images (B, c, H, W) -> each member's logits (M, B, C) float32."""
        x = self.prepare(images)
        return self.combine([unit(x) for unit in self.units])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw images -> the committee's summed logits (B, C) float32."""
        return self.member_logits(images).sum(0)
