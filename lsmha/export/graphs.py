"""The modules every exporter traces, and the tensors their files take and give.

A member graph is raw float32 pixels (N, C, H, W) -> that member's logits (N, classes).
A committee graph standardises each image once (every member standardises alike) and
returns the sum of the members' raw logits (N, classes) and the members' own logits
(M, N, classes). ONNX and AOTInductor export the same modules, so their files take the
same input and give the same outputs (`io_tensors`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..artifacts import COMMITTEE, TensorInfo
from ..models import CCT, CCTSpec, Standardize

INPUT = "images"


class _Body(nn.Module):
    """One member without its standardisation, run in `dtype`, returning float32 logits."""

    def __init__(self, model: CCT, dtype: torch.dtype) -> None:
        super().__init__()
        body = model.without_standardize().eval()  # standardised once, in float32, by the graph
        self.model = body.to(dtype)
        self.dtype = dtype

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z.to(self.dtype)).float()


class MemberGraph(nn.Module):
    """Raw float32 pixels -> one member's logits (N, classes)."""

    def __init__(self, model: CCT, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.standardize = Standardize(model.standardize.eps)
        self.body = _Body(model, dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(self.standardize(images))


class CommitteeGraph(nn.Module):
    """Raw float32 pixels -> (sum of the members' raw logits (N, C), member logits (M, N, C))."""

    def __init__(self, models: Sequence[CCT], dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.standardize = Standardize(models[0].standardize.eps)
        self.bodies = nn.ModuleList(_Body(m, dtype) for m in models)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.standardize(images)
        outs = [body(z) for body in self.bodies]
        total = outs[0]
        for o in outs[1:]:
            total = total + o
        return total, torch.stack(outs)


def graph_for(models: Sequence[CCT], scope: str | int, dtype: torch.dtype) -> tuple[nn.Module, list[CCTSpec]]:
    """The module of `scope` ("committee": all members and their sum; i: member i) and its specs."""
    models = list(models)
    if scope == COMMITTEE:
        return CommitteeGraph(models, dtype), [m.spec for m in models]
    if isinstance(scope, int) and not isinstance(scope, bool) and 0 <= scope < len(models):
        return MemberGraph(models[scope], dtype), [models[scope].spec]
    raise ValueError(f"scope must be {COMMITTEE!r} or a member index in 0..{len(models) - 1}, got {scope!r}")


def output_names(scope: str | int) -> list[str]:
    """`logits` for a member graph; `logits` and `member_logits` for the committee graph."""
    return ["logits", "member_logits"] if scope == COMMITTEE else ["logits"]


def io_tensors(specs: Sequence[CCTSpec], scope: str | int) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """(inputs, outputs) of a file exported from `graph_for(..., scope)`: float32 throughout,
    the batch axis named "batch"."""
    s = specs[0]
    inputs = [TensorInfo(INPUT, "float32", ("batch", s.in_chans, s.img_size, s.img_size))]
    outputs = [TensorInfo("logits", "float32", ("batch", s.num_classes))]
    if scope == COMMITTEE:
        outputs.append(TensorInfo("member_logits", "float32", (len(specs), "batch", s.num_classes)))
    return inputs, outputs
