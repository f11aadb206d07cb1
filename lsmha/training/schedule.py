"""Per-epoch schedule of learning rate and weight decay (paper Appendix).

Cosine: η_e = η·f(e), α_e = α·f(e) with f(e) = m + (1-m)·½(1 + cos(π·e/E)).
Stepped (q, Δt): η_e = η·q^⌊e/Δt⌋, α constant. A linear warm-up of w epochs
scales both by (e+1)/(w+1) first. State is the epoch alone, so resuming is exact.
"""

from __future__ import annotations

import math

import torch

from .recipe import Recipe


class EpochSchedule:
    """Sets `lr` and `weight_decay` of every param group at the start of each epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, recipe: Recipe) -> None:
        self.optimizer = optimizer
        self.recipe = recipe
        self.epoch = 0

    def factors(self, epoch: int) -> tuple[float, float]:
        """(lr factor, weight-decay factor) for 0-based `epoch`."""
        r = self.recipe
        if epoch < r.warmup_epochs:
            w = (epoch + 1) / (r.warmup_epochs + 1)
            return w, w
        e, total = epoch - r.warmup_epochs, r.epochs - r.warmup_epochs
        if r.schedule == "step":
            return r.step_q ** (e // r.step_dt), 1.0
        f = r.min_factor + (1 - r.min_factor) * 0.5 * (1 + math.cos(math.pi * e / total))
        return f, f

    def set_epoch(self, epoch: int) -> tuple[float, float]:
        """Apply the schedule for `epoch`; returns (lr, weight_decay) now in force."""
        self.epoch = epoch
        lr_f, wd_f = self.factors(epoch)
        lr, wd = self.recipe.lr * lr_f, self.recipe.weight_decay * wd_f
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            group["weight_decay"] = wd
        return lr, wd

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.set_epoch(int(state["epoch"]))
