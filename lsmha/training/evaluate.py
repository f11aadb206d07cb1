"""Validation: logits of a model over in-memory images, and the `eval` of a saved checkpoint."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..metrics import accuracy
from ..models import load
from .data import load_dataset
from .distributed import DistContext, gather_strided


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    amp: bool = False,
    ctx: DistContext | None = None,
) -> torch.Tensor:
    """float32 logits (N, C) on the CPU, in input order. Under `ctx`, rank r computes
    images r, r+W, ... and the rows are gathered on every rank."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    mine = images[rank::world]
    rows = []
    for start in range(0, mine.shape[0], batch_size):
        x = mine[start : start + batch_size].to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            rows.append(model(x).float())
    logits = torch.cat(rows) if rows else torch.empty(0, device=device)
    if ctx is not None:
        logits = gather_strided(ctx, logits, images.shape[0])
    model.train(was_training)
    return logits.cpu()


def evaluate_checkpoint(
    path: str | os.PathLike,
    dataset: str,
    data_dir: str | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    limit: int | None = None,
    split: str = "val",
) -> dict[str, Any]:
    """Accuracy of an lsmha checkpoint on one split of `dataset` (`accuracy`; also
    `val_accuracy` for the validation split)."""
    model = load(path, device=device)
    images, labels = load_dataset(dataset, split, data_dir, limit=limit)
    if int(labels.max()) >= model.spec.num_classes:
        raise ValueError(
            f"{path} has {model.spec.num_classes} classes but {dataset} labels reach {int(labels.max())}; "
            "evaluate it on the data set it was trained on"
        )
    logits = predict_logits(model, images, batch_size, device)
    acc = accuracy(logits.numpy(), labels.numpy())
    return {
        "checkpoint": str(path),
        "dataset": dataset,
        "split": split,
        "images": int(labels.shape[0]),
        "accuracy": acc,
        **({"val_accuracy": acc} if split == "val" else {}),
        "facts": dict(model.facts),
        "logits": np.asarray(logits.numpy()),
    }
