"""Greedy forward selection of committee members (paper §4: the best committee is
not made of the best members, but of accurate members that disagree)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..metrics import accuracy, agreement_matrix, mean_agreement, soft_committee


@dataclass(frozen=True)
class Selection:
    """The chosen members, in the order they were added.

    Attributes:
        indices: member indices into the full committee.
        accuracy: committee accuracy after each addition (same length as `indices`).
        mean_agreement: mean pairwise agreement of the chosen set after each addition.
    """

    indices: list[int]
    accuracy: list[float]
    mean_agreement: list[float]


def select(member_logits: np.ndarray, labels: np.ndarray, k: int) -> Selection:
    """Greedy forward selection of `k` members maximising soft-committee accuracy.

    Each step adds the member whose addition gives the highest committee accuracy
    on (`member_logits`, `labels`); ties go to the lower mean pairwise agreement
    of the resulting set, then to the lower index.

    Args:
        member_logits: (M, N, C) raw logits of every candidate.
        labels: (N,) integer labels of held-out data.
        k: members to choose, 1 <= k <= M.
    """
    member_logits, labels = np.asarray(member_logits), np.asarray(labels)
    agree = agreement_matrix(member_logits, labels)  # validates shapes
    m = member_logits.shape[0]
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= m:
        raise ValueError(f"expected k in 1..{m} (the committee's members), got {k!r}")
    chosen: list[int] = []
    accs: list[float] = []
    agreements: list[float] = []
    for _ in range(k):
        best: tuple[float, float, int] | None = None
        for i in range(m):
            if i in chosen:
                continue
            trial = chosen + [i]
            acc = accuracy(soft_committee(member_logits[trial]), labels)
            agr = mean_agreement(agree[np.ix_(trial, trial)])
            key = (-acc, agr, i)
            if best is None or key < best:
                best = key
        assert best is not None
        chosen.append(best[2])
        accs.append(-best[0])
        agreements.append(best[1])
    return Selection(chosen, accs, agreements)
