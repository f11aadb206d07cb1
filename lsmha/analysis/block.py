"""One block's SHP measurement, end to end, and its resumable on-disk record.

`analyse_block` freezes the model up to block m (its QKV attention or its
output), trains the classifier head on the training split, evaluates it on the
validation split and forms the block's H raw SHP matrices. `BlockResult` holds
everything later steps need (raw matrices, per-label mean FC inputs, FC weight),
so thresholds, tables, figures and HP via SNP never need the data again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lsmha.models import CCT

from .heads import HeadRecipe, evaluate_head, token_source, train_head
from .matrices import normalise, shp_fields

FORMAT = "lsmha-shp-block-1"


@dataclass
class BlockResult:
    """The SHP measurement of one block.

    Attributes:
        block: 1-based block index m.
        at: "attn" or "output".
        heads: the block's number of heads H.
        attn_acc: validation accuracy of the classifier head ("Attn. Acc.").
        raw: (H, L, L) raw SHP matrices (mean fields).
        label_means: (L, D) mean pooled FC input per validation label.
        weight: (L, D) the trained classifier head's FC weight.
        meta: what the result was computed from (checked on resume).
    """

    block: int
    at: str
    heads: int
    attn_acc: float
    raw: np.ndarray
    label_means: np.ndarray
    weight: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> int:
        return self.raw.shape[1]

    def normalised(self) -> tuple[np.ndarray, np.ndarray]:
        """(H, L, L) matrices divided by their maxima, and the maxima (see `normalise`)."""
        return normalise(self.raw, what=f"block {self.block} SHP matrix of head")

    def save(self, path: str | os.PathLike) -> Path:
        """Write to `path` (.npz) via a temporary file, so an interrupted run leaves no half record."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        header = {"format": FORMAT, "block": self.block, "at": self.at, "heads": self.heads}
        header |= {"attn_acc": self.attn_acc, "meta": self.meta}
        np.savez(
            tmp,
            header=np.array(json.dumps(header, sort_keys=True)),
            raw=self.raw,
            label_means=self.label_means,
            weight=self.weight,
        )
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> BlockResult:
        """Read a record written by `save` (no pickle)."""
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            if header.get("format") != FORMAT:
                raise ValueError(f"{path} is not an SHP block record (format {header.get('format')!r}, want {FORMAT})")
            return cls(
                block=int(header["block"]),
                at=str(header["at"]),
                heads=int(header["heads"]),
                attn_acc=float(header["attn_acc"]),
                raw=z["raw"],
                label_means=z["label_means"],
                weight=z["weight"],
                meta=header["meta"],
            )


def analyse_block(
    model: CCT,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    block: int,
    num_classes: int,
    at: Literal["attn", "output"] = "attn",
    recipe: HeadRecipe | None = None,
    device: torch.device | str = "cpu",
    cache_bytes: float = 8 * 2**30,
    cache_dtype: torch.dtype = torch.float32,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
) -> BlockResult:
    """Measure block `block` (1-based) of a trained `model`.

    Args:
        train, val: (uint8 images (N, C, H, W), int64 labels (N,)) of each split.
        num_classes: L, the data set's labels (the head is fresh, so L need not equal the model's).
        at: "attn" (the paper's per-head measurement) or "output".
        recipe: the head's optimiser recipe (default: `HeadRecipe()`, the paper's).
        cache_bytes, cache_dtype: token cache budget and storage type (`token_source`).
        meta: recorded in the result (checkpoint hash, data set, ...) for resume checks.
    """
    if not 1 <= block <= model.spec.n_blocks:
        raise ValueError(f"block must be in 1..{model.spec.n_blocks} for this model, got {block}")
    recipe = recipe or HeadRecipe()
    kw = dict(block=block, at=at, device=device, cache_bytes=cache_bytes, cache_dtype=cache_dtype, progress=progress)
    source = token_source(model, train[0], **kw)
    head = train_head(source, train[1], num_classes, model.spec.dim, recipe, device, progress)
    del source
    evaluation = evaluate_head(head, token_source(model, val[0], **kw), val[1], num_classes)
    heads = model.spec.block_heads[block - 1]
    weight = head.fc.weight.detach().cpu().double().numpy()
    label_means = evaluation.label_means.numpy()
    record = {"recipe": asdict(recipe), "n_train": int(train[0].shape[0]), "n_val": int(val[0].shape[0])}
    return BlockResult(
        block=block,
        at=at,
        heads=heads,
        attn_acc=evaluation.accuracy,
        raw=shp_fields(label_means, weight, heads),
        label_means=label_means,
        weight=weight,
        meta=record | (meta or {}),
    )
