"""SHP matrices by head silencing, and head performance (HP) by averaging SNP matrices.

For head h of a block with H heads and dim D, the classifier head's FC inputs
outside columns [h·D/H, (h+1)·D/H) are silenced (`ClassifierHead.fields`), and

    M_h[i, j] = mean over validation images of label i of the field on output j.

The head is bias-free and pooling weights come from the full tokens, so the field
is linear in the pooled vector: M_h = P̄[:, cols_h] · W[:, cols_h]ᵀ with P̄ the
per-label mean pooled vector (L, D) and W the FC weight (L, D). That is how the
matrices are computed here (exact, one pass over the data for all heads);
`ClassifierHead.fields` is the literal silencing it is tested against.

Each matrix is then divided by its maximum. A matrix whose maximum is not
positive cannot be normalised that way: `normalise` reports it (a warning, and
its raw maximum) and returns it as all NaN instead of dividing.

SNP (single-node performance) keeps one FC input node k: M_k = P̄[:, k] W[:, k]ᵀ.
HP via SNP (paper Fig. 4) averages the head's SNP matrices, each normalised by
its own maximum first (without that step the average would be SHP / (D/H)
exactly, by linearity), and normalises the average by its maximum.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def head_columns(dim: int, heads: int) -> list[slice]:
    """The FC-input columns of each head: head h owns [h·dim/H, (h+1)·dim/H)."""
    if heads < 1 or dim % heads:
        raise ValueError(f"dim={dim} must be a positive multiple of heads={heads}")
    size = dim // heads
    return [slice(h * size, (h + 1) * size) for h in range(heads)]


def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def shp_fields(label_means: torch.Tensor | np.ndarray, weight: torch.Tensor | np.ndarray, heads: int) -> np.ndarray:
    """Raw SHP matrices (H, L, L): M_h[i, j] = mean field on output j for label i with
    only head h's FC inputs alive.

    Args:
        label_means: (L, D) mean pooled FC input per label (`HeadEvaluation.label_means`).
        weight: (L, D) the classifier head's FC weight.
        heads: H, the block's number of heads.
    """
    p, w = _as_numpy(label_means), _as_numpy(weight)
    if p.ndim != 2 or w.ndim != 2 or p.shape[1] != w.shape[1]:
        raise ValueError(f"expected label_means (L, D) and weight (L, D), got {p.shape} and {w.shape}")
    return np.stack([p[:, c] @ w[:, c].T for c in head_columns(p.shape[1], heads)])


def snp_fields(
    label_means: torch.Tensor | np.ndarray, weight: torch.Tensor | np.ndarray, nodes: slice | list[int]
) -> np.ndarray:
    """Raw SNP matrices (k, L, L) of the given FC input nodes: M_k = P̄[:, k] W[:, k]ᵀ."""
    p, w = _as_numpy(label_means), _as_numpy(weight)
    idx = np.arange(p.shape[1])[nodes]
    return p[:, idx].T[:, :, None] * w[:, idx].T[:, None, :]


def normalise(raw: np.ndarray, what: str = "SHP matrix") -> tuple[np.ndarray, np.ndarray]:
    """Divide each (L, L) matrix of a (K, L, L) stack by its maximum.

    Returns (normalised, maxima). A matrix whose maximum is not positive (or not
    finite) is reported with a warning and returned as all NaN, never divided."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 3:
        raise ValueError(f"expected a (K, L, L) stack, got shape {raw.shape}")
    maxima = raw.reshape(raw.shape[0], -1).max(axis=1)
    out = np.full_like(raw, np.nan)
    for k, peak in enumerate(maxima):
        if np.isfinite(peak) and peak > 0:
            out[k] = raw[k] / peak
        else:
            warnings.warn(
                f"{what} {k + 1} of {raw.shape[0]} has maximum {peak:.4g} (not positive): it cannot be "
                "normalised by its maximum and is reported as all NaN (nothing above threshold)",
                stacklevel=2,
            )
    return out, maxima


def hp_from_snp(
    label_means: torch.Tensor | np.ndarray, weight: torch.Tensor | np.ndarray, heads: int, head: int
) -> np.ndarray:
    """Head performance of head `head` (0-based) via its SNP matrices, normalised (L, L).

    Nodes whose SNP matrix has no positive element are left out of the average."""
    cols = head_columns(_as_numpy(label_means).shape[1], heads)[head]
    snp = snp_fields(label_means, weight, cols)
    peaks = snp.reshape(snp.shape[0], -1).max(axis=1)
    alive = peaks > 0
    if not alive.any():
        return np.full(snp.shape[1:], np.nan)
    mean = (snp[alive] / peaks[alive, None, None]).mean(axis=0)
    return normalise(mean[None], what=f"HP matrix of head {head + 1}")[0][0]
