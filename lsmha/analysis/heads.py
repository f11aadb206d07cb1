"""Frozen truncated features and the bias-free classifier head trained on them.

The paper (§2, Fig. 2) freezes a trained CCT up to block m's QKV attention (or
block m's output), connects the (B, N, D) tokens to a classifier head — sequence
pooling (SP) and one fully connected layer — and trains only that head with
η = 1e-3, α = 6e-2 and a stepped schedule (0.78 every 10 epochs). Its validation
accuracy is the table's "Attn. Acc.".

The backbone is frozen, so its tokens are computed once per block (`token_source`)
and kept in memory when they fit in the cache budget; otherwise every batch runs
through the frozen backbone again. No augmentation: the head sees fixed tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lsmha.models import CCT


class ClassifierHead(nn.Module):
    """Bias-free SeqPool + Linear on (B, N, D) tokens.

    Silencing (`fields`): the pooling weights softmax(score(x)) are computed on the
    FULL tokens; only then are the FC inputs outside the kept columns zeroed. This
    is what the paper silences — the FC layer's inputs (Fig. 2, right: "all weights
    in the FC layer are silenced except those emerging from the selected head") —
    and it keeps the head exactly the one that was trained: every image is pooled
    as the trained head pools it. With no biases, the fields then decompose
    exactly: Σ_h fields(x, head h's columns) = logits(x), so the H SHP matrices of
    a block sum to the full head's mean-logit matrix. Scoring silenced tokens
    instead would pool each head with weights the head never learned and break
    that sum.
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1, bias=False)
        self.fc = nn.Linear(dim, num_classes, bias=False)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Sequence pooling: (B, N, D) -> (B, D)."""
        w = self.score(tokens).softmax(dim=1)  # (B, N, 1)
        return (w.transpose(1, 2) @ tokens).squeeze(1)  # (B, D)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(tokens))  # (B, L)

    def fields(self, tokens: torch.Tensor, columns: slice | torch.Tensor) -> torch.Tensor:
        """Output fields (B, L) with every FC input outside `columns` silenced."""
        pooled = self.pool(tokens)
        keep = torch.zeros_like(pooled)
        keep[:, columns] = pooled[:, columns]
        return self.fc(keep)


@dataclass(frozen=True)
class HeadRecipe:
    """The paper's classifier-head recipe; `epochs` is 100 (Tables 1-2) or 1000 (Tables 5-7)."""

    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 6e-2
    step_size: int = 10
    gamma: float = 0.78
    batch_size: int = 128
    seed: int = 0


class TokenSource(Protocol):
    """Frozen tokens of one block for a fixed set of images."""

    def __len__(self) -> int: ...

    def tokens(self, index: torch.Tensor) -> torch.Tensor:
        """float32 tokens (b, N, D) on the head's device for the images at `index`."""
        ...


class CachedTokens:
    """Tokens computed once and held in memory (optionally in a half type)."""

    def __init__(self, cache: torch.Tensor, device: torch.device | str) -> None:
        self.cache = cache
        self.device = torch.device(device)

    def __len__(self) -> int:
        return self.cache.shape[0]

    def tokens(self, index: torch.Tensor) -> torch.Tensor:
        return self.cache[index.to(self.cache.device)].to(self.device, torch.float32, non_blocking=True)


class LiveTokens:
    """Tokens recomputed through the frozen backbone for every batch (no cache)."""

    def __init__(self, model: CCT, images: torch.Tensor, block: int, at: str, device: torch.device | str) -> None:
        self.model, self.images, self.block, self.at = model, images, block, at
        self.device = torch.device(device)

    def __len__(self) -> int:
        return self.images.shape[0]

    @torch.no_grad()
    def tokens(self, index: torch.Tensor) -> torch.Tensor:
        x = self.images[index.to(self.images.device)].to(self.device, non_blocking=True)
        return self.model.forward_truncated(x, self.block, self.at).float()


def token_source(
    model: CCT,
    images: torch.Tensor,
    block: int,
    at: Literal["attn", "output"] = "attn",
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    cache_bytes: float = 8 * 2**30,
    cache_dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> TokenSource:
    """Frozen tokens of `block` (1-based) for `images`, cached on `device` when
    N·T·D·itemsize <= `cache_bytes`, else computed per batch.

    Args:
        model: the trained CCT (put in eval mode and moved to `device` here).
        images: (N, C, H, W) uint8 or float, kept where they are.
        at: "attn" (after the QKV attention) or "output" (after the block).
    """
    model.eval().to(device)
    spec = model.spec
    need = images.shape[0] * spec.seq_len * spec.dim * torch.empty((), dtype=cache_dtype).element_size()
    live = LiveTokens(model, images, block, at, device)
    if need > cache_bytes:
        return live
    cache = torch.empty((images.shape[0], spec.seq_len, spec.dim), dtype=cache_dtype, device=device)
    starts = range(0, images.shape[0], batch_size)
    for s in tqdm(starts, desc=f"block {block} tokens", leave=False, disable=not progress):
        index = torch.arange(s, min(s + batch_size, images.shape[0]))
        cache[s : s + len(index)] = live.tokens(index).to(cache_dtype)
    return CachedTokens(cache, device)


def train_head(
    source: TokenSource,
    labels: torch.Tensor,
    num_classes: int,
    dim: int,
    recipe: HeadRecipe = HeadRecipe(),
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_epoch: Callable[[int, float], None] | None = None,
) -> ClassifierHead:
    """Train a fresh `ClassifierHead` on frozen tokens with AdamW and
    StepLR(step_size, gamma), cross-entropy, shuffled batches (seeded).

    Args:
        source: the training images' tokens.
        labels: int64 (N,) in 0..num_classes-1.
        on_epoch: called with (epoch, mean training loss) after each epoch.
    """
    _check_labels(labels, num_classes, len(source))
    if recipe.epochs < 1:
        raise ValueError(f"head epochs must be >= 1, got {recipe.epochs}")
    gen = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    head = ClassifierHead(dim, num_classes).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=recipe.step_size, gamma=recipe.gamma)
    labels_dev = labels.to(device)
    bar = tqdm(range(recipe.epochs), desc="head", leave=False, disable=not progress)
    for epoch in bar:
        head.train()
        total, seen = 0.0, 0
        for index in torch.randperm(len(source), generator=gen).split(recipe.batch_size):
            logits = head(source.tokens(index))
            loss = F.cross_entropy(logits, labels_dev[index.to(device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(index)
            seen += len(index)
        sched.step()
        mean_loss = total / seen
        if not math.isfinite(mean_loss):
            raise FloatingPointError(
                f"classifier head loss became {mean_loss} at epoch {epoch + 1}; lower the learning rate "
                "or check the backbone's tokens for inf/NaN"
            )
        bar.set_postfix(loss=f"{mean_loss:.3f}")
        if on_epoch is not None:
            on_epoch(epoch + 1, mean_loss)
    return head.eval()


@dataclass(frozen=True)
class HeadEvaluation:
    """Validation accuracy and the per-label mean of the pooled FC inputs."""

    accuracy: float
    label_means: torch.Tensor  # (L, D) float64: mean over label-i images of pool(tokens)
    counts: torch.Tensor  # (L,) images per label


@torch.no_grad()
def evaluate_head(
    head: ClassifierHead, source: TokenSource, labels: torch.Tensor, num_classes: int, batch_size: int = 256
) -> HeadEvaluation:
    """Accuracy of `head` and per-label mean pooled vectors in one pass.

    Raises ValueError when a label has no validation image (its SHP row would be undefined)."""
    _check_labels(labels, num_classes, len(source))
    head.eval()
    dim = head.fc.in_features
    sums = torch.zeros(num_classes, dim, dtype=torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.int64)
    correct = 0
    for index in torch.arange(len(source)).split(batch_size):
        pooled = head.pool(source.tokens(index))
        y = labels[index]
        correct += int((head.fc(pooled).argmax(1).cpu() == y).sum())
        sums.index_add_(0, y, pooled.double().cpu())
        counts += torch.bincount(y, minlength=num_classes)
    missing = torch.nonzero(counts == 0).flatten().tolist()
    if missing:
        raise ValueError(
            f"labels {missing[:10]}{'...' if len(missing) > 10 else ''} have no validation image; "
            "every label needs at least one to define its SHP row (use the full validation split)"
        )
    return HeadEvaluation(correct / len(source), sums / counts[:, None].double(), counts)


def _check_labels(labels: torch.Tensor, num_classes: int, n: int) -> None:
    if labels.dtype != torch.int64 or labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"expected int64 labels of shape ({n},), got {labels.dtype} {tuple(labels.shape)}")
    if n and not (int(labels.min()) >= 0 and int(labels.max()) < num_classes):
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1}, found {int(labels.min())}..{int(labels.max())}; "
            "is num_classes right for this data set?"
        )
