"""SHP figures (matplotlib, Agg backend, PNG files).

- `plot_head`: the paper's Fig. 3 for one head — the normalised matrix, the
  Boolean clipped matrix, and the permuted clipped matrix with the clusters along
  the diagonal and the above-threshold noise outside them in yellow.
- `plot_shp_vs_hp`: the paper's Fig. 4 — one head's clipped SHP beside its HP via SNP.
- `plot_blocks`: Attn. Acc. and SNR along the blocks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .clusters import BlockRow, HeadStats, clip

CLUSTER = "#1f3a93"
NOISE = "#f2c80f"
EMPTY = "#ffffff"


def pyplot():
    """matplotlib's pyplot on the Agg backend (files, no display), or ImportError saying what to install."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("figures need matplotlib: pip install 'lsmha[analysis]' (or matplotlib)") from err
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _axes_labels(ax, labels: int, order: Sequence[int] | None = None) -> None:
    if labels <= 20:
        ticks = np.arange(labels)
        names = [str(i) for i in (order if order is not None else ticks)]
        ax.set_xticks(ticks, names, fontsize=7)
        ax.set_yticks(ticks, names, fontsize=7)
    ax.set_xlabel("output unit j")
    ax.set_ylabel("input label i")


def permuted_categories(b: np.ndarray, stats: HeadStats) -> np.ndarray:
    """The permuted clipped matrix as categories: 0 below threshold, 1 in a cluster, 2 noise."""
    p = np.array(stats.permutation)
    laid = b[np.ix_(p, p)].astype(np.int64) * 2
    start = 0
    for c in stats.clusters:
        k = len(c)
        laid[start : start + k, start : start + k] = 1
        start += k
    return laid


def plot_head(
    matrix: np.ndarray,
    theta: float,
    stats: HeadStats,
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """Fig. 3 for one head: normalised matrix | clipped at θ | permuted with clusters and noise."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    plt = pyplot()
    m = np.asarray(matrix, dtype=np.float64)
    labels = m.shape[0]
    b = clip(m, theta)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6), constrained_layout=True)
    ax = axes[0]
    if np.isnan(m).all():
        ax.text(0.5, 0.5, "maximum not positive:\nnot normalised", ha="center", va="center", transform=ax.transAxes)
    else:
        im = ax.imshow(m, cmap="viridis", vmax=1.0, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    ax.set_title("normalised matrix value")
    _axes_labels(ax, labels)

    ax = axes[1]
    ax.imshow(b, cmap=ListedColormap([EMPTY, CLUSTER]), vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(f"clipped, θ = {theta:g}  (Diag = {stats.diag}, ΣB = {int(b.sum())})")
    _axes_labels(ax, labels)

    ax = axes[2]
    laid = permuted_categories(b, stats)
    ax.imshow(laid, cmap=ListedColormap([EMPTY, CLUSTER, NOISE]), vmin=0, vmax=2, interpolation="nearest")
    c_s = "—" if math.isnan(stats.c_s) else f"{stats.c_s:.2f}"
    # frame each cluster so that a k×k cluster reads apart from k singletons
    start, edge = 0, 1.2 if labels <= 30 else 0.4
    for c in stats.clusters:
        k = len(c)
        ax.add_patch(Rectangle((start - 0.5, start - 0.5), k, k, fill=False, edgecolor="black", linewidth=edge))
        start += k
    ax.set_title(f"permuted: N_c = {stats.n_c}, C_s = {c_s}, n = {stats.n}")
    _axes_labels(ax, labels, stats.permutation)
    ax.legend(
        handles=[Patch(color=CLUSTER, label="clusters"), Patch(color=NOISE, label="noise n")],
        loc="upper right",
        fontsize=8,
        framealpha=0.9,
    )
    for a in axes:
        a.set_facecolor("#dddddd")
        for s in a.spines.values():
            s.set_edgecolor("#888888")
    if title:
        fig.suptitle(title, fontsize=13, fontweight="bold")
    return _save(fig, path, plt)


def plot_shp_vs_hp(
    shp: np.ndarray, hp: np.ndarray, thetas: Sequence[float], path: str | os.PathLike, title: str = ""
) -> Path:
    """Fig. 4: clipped SHP (left) and clipped HP via SNP (right), one row per θ."""
    from matplotlib.colors import ListedColormap

    plt = pyplot()
    fig, axes = plt.subplots(len(thetas), 2, figsize=(9, 4.3 * len(thetas)), squeeze=False, constrained_layout=True)
    for row, theta in zip(axes, thetas):
        bs, bh = clip(shp, theta), clip(hp, theta)
        agree = float((bs == bh).mean())
        for ax, b, name in ((row[0], bs, "SHP"), (row[1], bh, "HP via SNP")):
            ax.imshow(b, cmap=ListedColormap([EMPTY, CLUSTER]), vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"{name}, θ = {theta:g} (ΣB = {int(b.sum())}, agree {agree:.1%})")
            _axes_labels(ax, b.shape[0])
    if title:
        fig.suptitle(title)
    return _save(fig, path, plt)


def plot_blocks(rows: Sequence[BlockRow], path: str | os.PathLike, title: str = "") -> Path:
    """Attn. Acc. (left axis) and SNR per θ (right axis, log scale) along the blocks."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    by_block = {r.block: r for r in rows}
    blocks = sorted(b for b in by_block if b is not None)
    acc = [by_block[b].attn_acc for b in blocks]
    ax.plot(blocks, acc, "o-", color="black", label="Attn. Acc.")
    ax.set_xlabel("block m")
    ax.set_ylabel("Attn. Acc.")
    ax.set_xticks(blocks)
    right = ax.twinx()
    skipped = []
    for k, theta in enumerate(sorted({r.theta for r in rows})):
        pts = [(r.block, r.snr) for r in sorted(rows, key=lambda r: r.block or 0) if r.theta == theta]
        finite = [(b, s) for b, s in pts if math.isfinite(s) and s > 0]
        skipped += [f"block {b} θ={theta:g}: SNR {s}" for b, s in pts if (b, s) not in finite]
        if finite:
            right.plot(*zip(*finite), "s--", color=f"C{k}", label=f"SNR, θ = {theta:g}")
    shown = [s for line in right.get_lines() for s in line.get_ydata()]
    if shown and max(shown) / min(shown) > 10:
        right.set_yscale("log")
    right.set_ylabel("SNR")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", fontsize=8)
    if skipped:
        ax.text(0.99, 0.01, "not plotted: " + "; ".join(skipped), transform=ax.transAxes, ha="right", fontsize=7)
    ax.set_title(title or "Attn. Acc. and SNR along the blocks")
    return _save(fig, path, plt)


def _save(fig, path: str | os.PathLike, plt) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
