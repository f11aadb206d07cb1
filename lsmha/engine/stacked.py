"""Stacked members: committee members run as ONE batched set of GEMMs.

Members that agree on depth and token count (n_conv, n_blocks, pooling, input, classes)
can be stacked along a new leading axis G: G small GEMMs become one `bmm`, G LayerNorms
one, and so on — fewer, larger kernels, which is what a GPU at batch 1 wants. Members of
equal weight shapes stack as they are; members of different widths (dim, MLP, conv width)
are zero-padded to the widest, with each LayerNorm's statistics taken over the member's
true width and each head's attention scale that of its true head size, so every padded
channel stays exactly zero.

Shapes: G stacked members, B images, N tokens, D = the widest dim, F = the widest mlp_dim,
C = classes.

    shared image batch (B, 3, H, W), standardised once
      -> tokenizer: first conv's weights concatenated (one conv to G*width channels),
         later convs as ONE grouped conv (groups=G)            -> (G, B, N, D)
      -> blocks with stacked LayerNorm / bmm / GELU / residual  -> (G, B, N, D)
      -> LayerNorm, SeqPool, fc                                 -> (G, B, C)

The levers, each exact in fp32 against the members run one by one (`StackedCommittee`'s
options; the cuda-graph backend times them):

- stack: "shape" stacks members of equal weight shapes (one unit per shape), "pad" stacks
  every member of equal depth and token count into one unit, zero-padded to the widest,
  "off" keeps one unit per member;
- sdpa: "per-heads" calls SDPA once per distinct (heads, head size) in a unit; "one" pads
  every head to the unit's largest head size (a multiple of 8), folds each head's true
  hd**-0.5 into the q weights and calls SDPA once per block with scale=1 (exact; costs
  heads x padded size / dim more qkv and proj FLOPs, which pays where launches dominate);
- bias: "baddbmm" adds a broadcast bias inside the GEMM; "fused" runs `bmm` and then
  `+ bias`, which inductor fuses into the following GELU or residual + LayerNorm.

Inference only (no dropout, no stochastic depth). `StackedCommittee` groups a
committee's members, keeps singletons as their own modules, and returns each
member's logits in committee order. It runs on any device and dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import soft_committee
from ..models import CCT, CCTSpec
from ..models.layers import (
    ConvTokenizer,
    ResidualBlock,
    Standardize,
    fused_attention,
    merge_heads,
    padded_head_size,
    seq_pool,
    split_heads,
)

STACK_MODES = ("shape", "pad", "off")
SDPA_MODES = ("per-heads", "one")
BIAS_MODES = ("baddbmm", "fused")


def pad_key(spec: CCTSpec) -> tuple:
    """What must agree for two members to stack at all (widths and heads may differ)."""
    return (spec.n_conv, spec.n_blocks, spec.pool, spec.in_chans, spec.img_size, spec.num_classes, spec.seq_len)


def shape_key(spec: CCTSpec) -> tuple:
    """What must agree for two members' weights to stack unpadded: every weight shape and the
    token count. Heads are absent on purpose (they change no weight shape)."""
    return (*pad_key(spec), spec.dim, spec.mlp_dim, spec.conv_width)


def group_members(specs: Sequence[CCTSpec], by: str = "shape") -> list[list[int]]:
    """Member indices grouped by `shape_key` (by="shape") or `pad_key` (by="pad"), groups in
    order of first appearance.

    Table 6's first five (dims 1024, 1024, 512, 512, 512): "shape" -> [[0, 1], [2, 3, 4]],
    "pad" -> [[0, 1, 2, 3, 4]].
    """
    key = {"shape": shape_key, "pad": pad_key}[by]
    groups: dict[tuple, list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault(key(spec), []).append(i)
    return list(groups.values())


def _padded(t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """`t` zero-padded at the end of every axis to `shape`."""
    pads: list[int] = []
    for have, want in zip(reversed(t.shape), reversed(shape)):
        pads += [0, want - have]
    return F.pad(t.detach(), pads)


def _stack(tensors: Sequence[torch.Tensor], flatten: tuple[int, int] | None = None) -> nn.Parameter:
    """Tensors of one rank stacked on a new axis 0, each zero-padded to the largest size per axis,
    axes `flatten` (first, last) of the result then merged."""
    shape = [max(t.shape[i] for t in tensors) for i in range(tensors[0].ndim)]
    stacked = torch.stack([_padded(t, shape) for t in tensors])
    if flatten:
        stacked = stacked.flatten(*flatten)
    return nn.Parameter(stacked.contiguous(), requires_grad=False)


def _linear_t(linears: Sequence[nn.Linear]) -> tuple[nn.Parameter, nn.Parameter | None]:
    """Stacked transposed weights (G, in, out) and biases (G, 1, out), zero-padded to the widest."""
    weight = _stack([lin.weight.t() for lin in linears])
    bias = None if linears[0].bias is None else _stack([lin.bias.unsqueeze(0) for lin in linears])
    return weight, bias


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, fused: bool) -> torch.Tensor:
    """(G, M, in) @ (G, in, out) + (G, 1, out) -> (G, M, out); `fused`: bmm, then the bias as a
    pointwise add that a compiler merges into the next pointwise op."""
    if bias is None:
        return torch.bmm(x, weight)
    return torch.bmm(x, weight) + bias if fused else torch.baddbmm(bias, x, weight)


def _index(order: Sequence[int]) -> torch.Tensor:
    """The gather index that puts items listed in `order` back in ascending order."""
    return torch.tensor([list(order).index(i) for i in sorted(order)])


class StackedLayerNorm(nn.Module):
    """G LayerNorms over the last dim, one kernel: normalise, then each member's affine.
    Members narrower than the widest take their statistics over their own width only; their
    zero-padded affine keeps the padding at zero."""

    def __init__(self, norms: Sequence[nn.LayerNorm]) -> None:
        super().__init__()
        eps = {n.eps for n in norms}
        if len(eps) != 1:
            raise ValueError(f"stacked LayerNorms must share eps, got {sorted(eps)}")
        self.eps = eps.pop()
        dims = [n.normalized_shape[-1] for n in norms]
        self.dim = max(dims)
        self.weight = _stack([n.weight.view(1, 1, -1) for n in norms])  # (G, 1, 1, D)
        self.bias = _stack([n.bias.view(1, 1, -1) for n in norms])
        self.padded = len(set(dims)) > 1
        if self.padded:
            mask = torch.stack([(torch.arange(self.dim) < d).float().view(1, 1, -1) for d in dims])
            self.register_buffer("mask", mask, persistent=False)  # (G, 1, 1, D)
            self.register_buffer("inv_dim", torch.tensor([1.0 / d for d in dims]).view(-1, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (G, B, N, D)
        if not self.padded:
            return F.layer_norm(x, (self.dim,), eps=self.eps) * self.weight + self.bias
        centred = (x - x.sum(-1, keepdim=True) * self.inv_dim) * self.mask
        var = centred.square().sum(-1, keepdim=True) * self.inv_dim
        return centred * torch.rsqrt(var + self.eps) * self.weight + self.bias


class StackedAttention(nn.Module):
    """G members' attention: one qkv bmm, SDPA, one proj bmm (see the module doc for `sdpa`).

    qkv columns are laid out [q | k | v], each D wide, a narrower member's in front. Heads are
    split, attended and merged by the functions `lsmha.models.layers.Attention` runs
    (`split_heads`, `fused_attention` with the true head size's scale, `merge_heads`).
    """

    def __init__(self, attns: Sequence[nn.Module], sdpa: str = "per-heads", bias: str = "baddbmm") -> None:
        super().__init__()
        self.dim = max(a.qkv.in_features for a in attns)
        self.one_sdpa = sdpa == "one"
        self.fused_bias = bias == "fused"
        _, self.proj_b = _linear_t([a.proj for a in attns])
        if self.one_sdpa:
            self.heads = max(a.heads for a in attns)
            self.head_size = padded_head_size(max(a.head_size for a in attns))
            self.qkv_w = _stack([self._qkv_heads(a) for a in attns])  # (G, D, 3 * heads * hp)
            # (G, heads * hp, D): rows of padded heads and head dims are zero
            self.proj_w = _stack([a.proj.weight.t().reshape(a.heads, a.head_size, -1) for a in attns], flatten=(1, 2))
            return
        self.qkv_w = _stack([a.qkv.weight.t().reshape(-1, 3, a.qkv.in_features) for a in attns], flatten=(2, 3))
        self.proj_w, _ = _linear_t([a.proj for a in attns])
        by_heads: dict[tuple[int, int], list[int]] = {}
        for g, a in enumerate(attns):
            by_heads.setdefault((a.heads, a.head_size), []).append(g)
        # ((heads, head size), member indices as a slice when contiguous, else the name of an index
        # buffer). Index tensors live in buffers (moved with the module): a Python-list index would
        # build a host tensor and copy it to the GPU with a sync on every call, illegal in CUDA-graph capture.
        self.parts: list[tuple[tuple[int, int], slice | str]] = []
        for key, idx in by_heads.items():
            if idx == list(range(idx[0], idx[-1] + 1)):
                self.parts.append((key, slice(idx[0], idx[-1] + 1)))
            else:
                self.register_buffer(f"part{len(self.parts)}", torch.tensor(idx), persistent=False)
                self.parts.append((key, f"part{len(self.parts)}"))
        order = [g for idx in by_heads.values() for g in idx]
        self.reorder = order != sorted(order)
        self.register_buffer("restore", _index(order) if self.reorder else None, persistent=False)

    def _qkv_heads(self, attn: nn.Module) -> torch.Tensor:
        """One member's qkv weight (D_g, 3, heads_g, hd_g), q pre-scaled by hd_g**-0.5, padded to
        (D_g, 3, heads, hp) and flattened to (D_g, 3 * heads * hp)."""
        w = attn.qkv.weight.t().reshape(-1, 3, attn.heads, attn.head_size).clone()
        w[:, 0] *= attn.scale
        return _padded(w, (w.shape[0], 3, self.heads, self.head_size)).flatten(1)

    def _sdpa(self, qkv: torch.Tensor, heads: int, hd: int) -> torch.Tensor:
        g, B, N, _ = qkv.shape
        width = heads * hd  # this part's true dim; the rest of D is padding
        qkv = qkv.view(g, B, N, 3, self.dim)[..., :width].reshape(g * B, N, 3 * width)
        q, k, v = split_heads(qkv, heads, hd)  # (g*B, H, N, hd)
        out = merge_heads(fused_attention(q, k, v, hd**-0.5)).view(g, B, N, width)
        return F.pad(out, (0, self.dim - width)) if width < self.dim else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (G, B, N, D)
        G, B, N, D = x.shape
        qkv = torch.bmm(x.reshape(G, B * N, D), self.qkv_w)
        if self.one_sdpa:  # (G*B, heads, N, hp) each; padded heads are all-zero and attend to zeros
            q, k, v = split_heads(qkv.view(G * B, N, -1), self.heads, self.head_size)
            out = merge_heads(fused_attention(q, k, v, scale=1.0)).view(G, B * N, -1)
        else:
            qkv = qkv.view(G, B, N, 3 * D)
            outs = [
                self._sdpa(qkv[idx] if isinstance(idx, slice) else qkv.index_select(0, getattr(self, idx)), h, hd)
                for (h, hd), idx in self.parts
            ]
            out = outs[0] if len(outs) == 1 else torch.cat(outs)
            if self.reorder:
                out = out.index_select(0, self.restore)
            out = out.reshape(G, B * N, D)
        return _linear(out, self.proj_w, self.proj_b, self.fused_bias).view(G, B, N, D)


class StackedBlock(ResidualBlock):
    """G CCT blocks: the block equation of `lsmha.models.layers.ResidualBlock` over stacked parts
    (LayerNorms, attention, and an MLP of two bmm's)."""

    def __init__(self, blocks: Sequence[nn.Module], sdpa: str = "per-heads", bias: str = "baddbmm") -> None:
        super().__init__()
        self.fused_bias = bias == "fused"
        self.pre_norm = StackedLayerNorm([b.pre_norm for b in blocks])
        self.attn = StackedAttention([b.attn for b in blocks], sdpa, bias)
        self.norm1 = StackedLayerNorm([b.norm1 for b in blocks])
        self.fc1_w, self.fc1_b = _linear_t([b.fc1 for b in blocks])
        self.fc2_w, self.fc2_b = _linear_t([b.fc2 for b in blocks])
        self.drop_path = nn.Identity()  # inference only

    def mlp(self, x: torch.Tensor) -> torch.Tensor:  # (G, B, N, D)
        G, B, N, D = x.shape
        h = F.gelu(_linear(x.reshape(G, B * N, D), self.fc1_w, self.fc1_b, self.fused_bias))  # (G, B*N, F)
        return _linear(h, self.fc2_w, self.fc2_b, self.fused_bias).view(G, B, N, D)


class StackedCCT(nn.Module):
    """G CCT members of equal depth and token count as one module: standardised images ->
    (G, B, C) logits.

    Args:
        models: members whose specs share `pad_key` (widths and heads may differ: narrower
            members are zero-padded). Their weights are copied; the members are left untouched.
        sdpa, bias: the levers of the module doc.
    """

    def __init__(self, models: Sequence[CCT], sdpa: str = "per-heads", bias: str = "baddbmm") -> None:
        super().__init__()
        keys = {pad_key(m.spec) for m in models}
        if len(keys) != 1:
            raise ValueError(
                f"StackedCCT needs members of equal depth and token count (same pad_key), got {len(keys)} "
                f"different: {sorted(keys)}; group them first with group_members()"
            )
        if sdpa not in SDPA_MODES or bias not in BIAS_MODES:
            raise ValueError(f"sdpa must be one of {SDPA_MODES} and bias one of {BIAS_MODES}, got {sdpa!r}, {bias!r}")
        spec = models[0].spec
        self.size = len(models)
        self.fused_bias = bias == "fused"
        width, dim = max(m.spec.conv_width for m in models), max(m.spec.dim for m in models)
        self.tokenizer = ConvTokenizer(spec.n_conv, spec.in_chans, width, dim, spec.pool, members=self.size)
        # first conv: shared input, weights concatenated along output channels (G*c_out, c_in, 3, 3);
        # later convs grouped, member g reading channels [g*c_in, (g+1)*c_in)
        for i, conv in enumerate(self.tokenizer.convs):
            conv.weight = _stack([m.tokenizer.convs[i].weight for m in models], flatten=(0, 1))
        self.pos_embed = _stack([m.pos_embed[0] for m in models])  # (G, N, D)
        self.blocks = nn.ModuleList(
            StackedBlock([m.blocks[i] for m in models], sdpa, bias) for i in range(spec.n_blocks)
        )
        self.norm = StackedLayerNorm([m.norm for m in models])
        self.score_w, self.score_b = _linear_t([m.pool.score for m in models])  # (G, D, 1), (G, 1, 1)
        self.fc_w, self.fc_b = _linear_t([m.fc for m in models])  # (G, D, C), (G, 1, C)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised images (B, c, H, W) -> positioned tokens (G, B, N, D)."""
        x = self.tokenizer(x)  # (B, N, G*D)
        x = x.unflatten(-1, (self.size, -1)).permute(2, 0, 1, 3)  # (G, B, N, D)
        return x + self.pos_embed.unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised images (B, c, H, W) in the weights' dtype -> logits (G, B, C)."""
        x = self.tokens(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        G, B, N, D = x.shape
        score = _linear(x.reshape(G, B * N, D), self.score_w, self.score_b, self.fused_bias).view(G, B, N, 1)
        pooled = seq_pool(x, score)  # (G, B, D)
        return _linear(pooled, self.fc_w, self.fc_b, self.fused_bias)  # (G, B, C)


class MemberUnit(nn.Module):
    """One member run from already standardised images: -> logits (1, B, C). Holds the
    member's own copy without its standardisation, so casting the unit leaves the caller's
    model alone."""

    def __init__(self, model: CCT) -> None:
        super().__init__()
        self.model = model.without_standardize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).unsqueeze(0)


class StackedCommittee(nn.Module):
    """A committee as a few units: each group of stackable members one `StackedCCT`,
    singletons as their own module (`MemberUnit`). Images are standardised once, in fp32.

    Args:
        models: the members (eval mode); their weights are copied, the members are left untouched.
        stack: "shape" (one unit per weight shape), "pad" (members of equal depth and token
            count in one unit, zero-padded to the widest) or "off" (one unit per member, the
            one-by-one reference).
        sdpa, bias: the levers of the module doc.

    Attributes:
        units: the modules, each mapping standardised images (B, c, H, W) -> (g, B, C).
        groups: member indices of each unit, in unit order.
    """

    def __init__(
        self, models: Sequence[CCT], stack: str = "shape", sdpa: str = "per-heads", bias: str = "baddbmm"
    ) -> None:
        super().__init__()
        models = list(models)
        if any(m.training for m in models):
            raise ValueError("StackedCommittee is inference-only: call .eval() on every member first")
        if stack not in STACK_MODES:
            raise ValueError(f"stack must be one of {STACK_MODES}, got {stack!r}")
        specs = [m.spec for m in models]
        groups = [[i] for i in range(len(models))] if stack == "off" else group_members(specs, by=stack)
        self.groups = groups
        self.standardize = Standardize(models[0].standardize.eps)  # every member standardises alike
        self.units = nn.ModuleList(
            StackedCCT([models[i] for i in g], sdpa, bias) if len(g) > 1 else MemberUnit(models[g[0]]) for g in groups
        )
        order = [i for g in groups for i in g]
        self.reorder = order != list(range(len(order)))
        # a buffer, not a list: see StackedAttention (no host-to-device copy inside CUDA-graph capture)
        self.register_buffer("restore", _index(order) if self.reorder else None, persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Raw images (B, c, H, W), any dtype (uint8 is cast here) -> standardised, in the weights' dtype."""
        return self.standardize(images.float()).to(self.dtype)

    def combine(self, outs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Unit outputs (g, B, C) -> member logits (M, B, C) float32, in committee order."""
        member = torch.cat([o.float() for o in outs]) if len(outs) > 1 else outs[0].float()
        return member.index_select(0, self.restore) if self.reorder else member

    def member_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Raw images (B, c, H, W) -> each member's logits (M, B, C) float32."""
        x = self.prepare(images)
        return self.combine([unit(x) for unit in self.units])

    def member_and_sum(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw images -> (member logits (M, B, C), their sum (B, C)), float32: the whole
        committee as one function, for a compiler to see as one graph."""
        member = self.member_logits(images)
        return member, soft_committee(member)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw images -> the committee's summed logits (B, C) float32."""
        return soft_committee(self.member_logits(images))
