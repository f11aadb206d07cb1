"""Soft-committee arithmetic on logits, as numpy: the decision, accuracy, agreement.

The paper's soft committee sums raw logits (no softmax, activation or
normalisation) and decides by argmax. Agreement of two members is the fraction
of inputs on which both are right or both are wrong (paper §4).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def soft_committee(member_logits: Any) -> Any:
    """Sum of the members' raw logits: (M, N, C) -> (N, C). The one committee sum of lsmha (only the
    exported graphs spell it in their own ops): numpy arrays give numpy, torch tensors give torch
    on their device (a compiler traces it), a sequence of (N, C) arrays is stacked first."""
    if not hasattr(member_logits, "ndim"):
        member_logits = np.asarray(member_logits)
    if member_logits.ndim != 3:
        raise ValueError(f"expected member logits of shape (members, N, classes), got {tuple(member_logits.shape)}")
    return member_logits.sum(0)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of (N, C) logits against (N,) integer labels."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"expected logits (N, C) and labels (N,), got {logits.shape} and {labels.shape}")
    return float((logits.argmax(axis=1) == labels).mean())


def agreement_matrix(member_logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(M, M) fraction of inputs on which members i and j are both right or both wrong."""
    member_logits, labels = np.asarray(member_logits), np.asarray(labels)
    if member_logits.ndim != 3 or labels.shape != (member_logits.shape[1],):
        raise ValueError(
            f"expected member logits (M, N, C) and labels (N,), got {member_logits.shape} and {labels.shape}"
        )
    right = (member_logits.argmax(axis=2) == labels[None, :]).astype(np.float64)  # (M, N)
    both_right = right @ right.T
    both_wrong = (1 - right) @ (1 - right).T
    return (both_right + both_wrong) / labels.shape[0]


def mean_agreement(matrix: np.ndarray) -> float:
    """Mean of the off-diagonal entries of an agreement matrix (1.0 for one member)."""
    m = np.asarray(matrix)
    if m.shape[0] < 2:
        return 1.0
    return float(m[~np.eye(m.shape[0], dtype=bool)].mean())
