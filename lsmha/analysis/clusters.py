"""Clusters and statistics of SHP matrices (definitions: docs/shp.md).

For one head: B = M > θ (M normalised by its maximum). Clusters: the labels with
B[i, i] = 1, in ascending order; each label not yet used seeds a cluster that
greedily absorbs every later unused diagonal label j for which the cluster plus j
is still an all-ones square block of B (both directions, diagonal included).
Singletons count. Per head:

    N_c = #clusters, C_s = mean cluster size, Diag = trace(B) = Σ|C|,
    n = ΣB − Σ|C|²  (above-threshold elements outside the clusters' squares).

Over the H heads of a block with L labels:

    N_label = Σ_h Diag_h / L,  N_noise = Σ_h n_h / L²,
    N_inter = Σ_h Σ_C |C|(|C|−1)/2 / L²,  SNR = N_label / (N_noise + N_inter).

Table rows report N_c, C_s, Diag and n as means over heads; C_s is averaged over
the heads that have at least one cluster (a head without clusters has no mean
cluster size). A head whose matrix could not be normalised (maximum not
positive, see `lsmha.analysis.matrices.normalise`) is all NaN: nothing in it is
above threshold, it still counts in H, and the row lists it in `degenerate_heads`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


def clip(matrix: np.ndarray, theta: float) -> np.ndarray:
    """The Boolean clipped matrix B = M > θ of a normalised (L, L) matrix (NaN -> False)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"expected a square (L, L) matrix, got shape {m.shape}")
    if not 0.0 <= theta < 1.0:
        raise ValueError(f"threshold θ must be in [0, 1) for a matrix normalised by its maximum, got {theta}")
    with np.errstate(invalid="ignore"):
        return m > theta


def find_clusters(b: np.ndarray) -> list[list[int]]:
    """Greedy clusters of a Boolean (L, L) matrix, each a list of labels in ascending order.

    Clusters come in the order of their seeds (their smallest label)."""
    b = _boolean_square(b)
    candidates = [int(i) for i in np.flatnonzero(np.diagonal(b))]
    used: set[int] = set()
    clusters: list[list[int]] = []
    for seed in candidates:
        if seed in used:
            continue
        cluster = [seed]
        used.add(seed)
        for j in candidates:
            if j <= seed or j in used:
                continue
            # cluster ∪ {j} stays an all-ones square iff j links both ways to every member
            if all(b[i, j] and b[j, i] for i in cluster):
                cluster.append(j)
                used.add(j)
        clusters.append(cluster)
    return clusters


def cluster_permutation(clusters: Sequence[Sequence[int]], labels: int) -> np.ndarray:
    """The label order that lays the clusters along the diagonal (in seed order),
    followed by the labels outside every cluster in ascending order.

    `M[np.ix_(p, p)]` is the permuted matrix of the paper's Fig. 3 (right)."""
    order = [int(i) for c in clusters for i in c]
    if len(set(order)) != len(order):
        raise ValueError(f"clusters overlap: {list(map(list, clusters))}")
    if order and not 0 <= min(order) <= max(order) < labels:
        raise ValueError(f"cluster labels must lie in 0..{labels - 1}, got {sorted(order)}")
    inside = set(order)
    return np.array(order + [i for i in range(labels) if i not in inside], dtype=np.int64)


@dataclass(frozen=True)
class HeadStats:
    """Statistics of one head's clipped SHP matrix."""

    n_c: int
    c_s: float  # NaN when the head has no cluster
    diag: int
    n: int
    in_cluster_pairs: int  # Σ_C |C|(|C|−1)/2
    clusters: tuple[tuple[int, ...], ...]
    permutation: tuple[int, ...]
    degenerate: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["clusters"] = [list(c) for c in self.clusters]
        d["permutation"] = list(self.permutation)
        return d


def head_stats_boolean(b: np.ndarray, degenerate: bool = False) -> HeadStats:
    """`HeadStats` of a Boolean clipped (L, L) matrix."""
    b = _boolean_square(b)
    clusters = find_clusters(b)
    sizes = [len(c) for c in clusters]
    return HeadStats(
        n_c=len(clusters),
        c_s=float(np.mean(sizes)) if sizes else math.nan,
        diag=int(np.trace(b)),
        n=int(b.sum()) - sum(s * s for s in sizes),
        in_cluster_pairs=sum(s * (s - 1) // 2 for s in sizes),
        clusters=tuple(tuple(c) for c in clusters),
        permutation=tuple(int(i) for i in cluster_permutation(clusters, b.shape[0])),
        degenerate=degenerate,
    )


def head_stats(matrix: np.ndarray, theta: float) -> HeadStats:
    """`HeadStats` of a normalised (L, L) SHP matrix at threshold θ (all-NaN = degenerate)."""
    m = np.asarray(matrix, dtype=np.float64)
    return head_stats_boolean(clip(m, theta), degenerate=bool(np.isnan(m).all()))


@dataclass(frozen=True)
class Aggregate:
    """Block-level signal and noise (the formulas of docs/shp.md)."""

    n_label: float
    n_noise: float
    n_inter: float
    snr: float  # inf when there is signal and no noise; NaN when there is neither


def aggregate(diag_sum: float, noise_sum: float, pairs_sum: float, labels: int) -> Aggregate:
    """N_label, N_noise, N_inter, SNR from the sums over a block's heads of Diag, n and
    in-cluster pairs, with L = `labels`."""
    if labels < 1:
        raise ValueError(f"labels must be >= 1, got {labels}")
    n_label = diag_sum / labels
    n_noise = noise_sum / labels**2
    n_inter = pairs_sum / labels**2
    return Aggregate(n_label, n_noise, n_inter, _snr(n_label, n_noise + n_inter))


def aggregate_from_table(diag: float, n: float, heads: int, labels: int, n_inter: float) -> Aggregate:
    """N_label, N_noise and SNR from a table's per-head means Diag and n, its head
    count H and its own N_inter (the paper's tables print N_inter but not the
    cluster pairs it comes from): N_label = H·Diag/L, N_noise = H·n/L²."""
    n_label = heads * diag / labels
    n_noise = heads * n / labels**2
    return Aggregate(n_label, n_noise, n_inter, _snr(n_label, n_noise + n_inter))


@dataclass(frozen=True)
class BlockRow:
    """One Table-1-style row: means over the block's heads plus the aggregates."""

    block: int | None
    theta: float
    heads: int
    labels: int
    attn_acc: float | None
    n_c: float
    c_s: float
    diag: float
    n: float
    n_label: float
    n_noise: float
    n_inter: float
    snr: float
    degenerate_heads: tuple[int, ...] = ()  # 1-based head numbers

    def to_dict(self) -> dict:
        d = asdict(self)
        d["degenerate_heads"] = list(self.degenerate_heads)
        return d


def block_row(
    matrices: Sequence[np.ndarray] | np.ndarray,
    theta: float,
    attn_acc: float | None = None,
    block: int | None = None,
) -> tuple[BlockRow, list[HeadStats]]:
    """The table row of one block and the per-head statistics behind it.

    Args:
        matrices: the block's H normalised SHP matrices, (H, L, L).
        theta: threshold θ.
        attn_acc: the classifier head's validation accuracy, copied into the row.
        block: 1-based block index, copied into the row.
    """
    stack = np.asarray(matrices, dtype=np.float64)
    if stack.ndim != 3 or stack.shape[1] != stack.shape[2] or stack.shape[0] < 1:
        raise ValueError(f"expected H >= 1 square matrices stacked as (H, L, L), got shape {stack.shape}")
    heads, labels = stack.shape[0], stack.shape[1]
    stats = [head_stats(m, theta) for m in stack]
    sizes = [s.c_s for s in stats if not math.isnan(s.c_s)]
    agg = aggregate(sum(s.diag for s in stats), sum(s.n for s in stats), sum(s.in_cluster_pairs for s in stats), labels)
    row = BlockRow(
        block=block,
        theta=float(theta),
        heads=heads,
        labels=labels,
        attn_acc=attn_acc,
        n_c=float(np.mean([s.n_c for s in stats])),
        c_s=float(np.mean(sizes)) if sizes else math.nan,
        diag=float(np.mean([s.diag for s in stats])),
        n=float(np.mean([s.n for s in stats])),
        n_label=agg.n_label,
        n_noise=agg.n_noise,
        n_inter=agg.n_inter,
        snr=agg.snr,
        degenerate_heads=tuple(h + 1 for h, s in enumerate(stats) if s.degenerate),
    )
    return row, stats


def _snr(signal: float, noise: float) -> float:
    if noise > 0:
        return signal / noise
    return math.inf if signal > 0 else math.nan


def _boolean_square(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b)
    if b.ndim != 2 or b.shape[0] != b.shape[1]:
        raise ValueError(f"expected a square (L, L) Boolean matrix, got shape {b.shape}")
    if b.dtype != np.bool_:
        raise ValueError(f"expected a Boolean matrix (use clip(M, θ)), got dtype {b.dtype}")
    return b
