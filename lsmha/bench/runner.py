"""What `lsmha-bench` times: a `Runner`, built by a factory from a committee's members.

A runner factory takes the members (CCT modules, fp32, eval mode), the device and the
largest batch it will see, and returns a `Runner`: `prepare` turns uint8 NCHW images into
whatever the runner consumes (done once, outside the timed region) and `run` computes the
summed logits. `note` says what was measured, for the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..metrics import soft_committee
from ..models import CCT


@dataclass
class Runner:
    prepare: Callable[[np.ndarray], Any]
    run: Callable[[Any], Any]
    note: str = ""


RunnerFactory = Callable[[list[CCT], torch.device, int], Runner]


def to_device(device: torch.device, dtype: torch.dtype | None = None) -> Callable[[np.ndarray], torch.Tensor]:
    """`prepare` for torch runners: the images as a tensor on `device` (cast to `dtype`, if given)."""
    if dtype is None:
        return lambda images: torch.from_numpy(images).to(device)
    return lambda images: torch.from_numpy(images).to(device).to(dtype)


def sum_logits(models: list[Any], x: torch.Tensor) -> torch.Tensor:
    """The members' logits summed (`soft_committee`), in float32."""
    return soft_committee(torch.stack([m(x).float() for m in models]))


def require_cuda(name: str, device: torch.device) -> None:
    """A CUDA-only runner refuses another device, naming itself."""
    if device.type != "cuda":
        raise ValueError(f"runner {name!r} needs --device cuda, got {device}")
