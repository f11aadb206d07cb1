"""The torch backend: eager PyTorch, the reference every other backend is checked against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Backend, BackendOptions, Devices, OneOf, Source, option

NAME = "torch"


@dataclass(frozen=True)
class Options(BackendOptions):
    """device: torch device (default: where the members are); precision: fp32 only."""

    device: str | None = option(None, Devices())
    precision: str = option("fp32", OneOf(("fp32",)))


def unavailable() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed (pip install torch)"
    return None


class TorchBackend(Backend):
    """Runs each member in eager mode under `torch.inference_mode`, one after the other.

    Args:
        models: the members (moved to `device` and put in eval mode).
        device: torch device; default the first member's device.
    """

    def __init__(self, models: list[Any], device: str | None = None) -> None:
        import torch

        self.device = torch.device(device) if device else next(models[0].parameters()).device
        self.models = [m.to(self.device).eval() for m in models]
        self.num_members = len(models)
        self.name = f"torch[{self.device.type}]"

    def _input(self, images: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(images).to(self.device, non_blocking=True)

    def member_logits(self, images: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = self._input(images)
            return torch.stack([m(x).float() for m in self.models]).cpu().numpy()


def open(source: Source, options: Options) -> TorchBackend:
    """Open the torch backend on `source`'s models (loaded from checkpoints or the export's safetensors)."""
    return TorchBackend(source.torch_models(), device=options.device)
