"""SHP clusters and statistics on constructed matrices with hand-counted answers,
and the paper's Tables 1 and 2 reproduced from their primary columns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lsmha.analysis.clusters import (
    aggregate,
    aggregate_from_table,
    block_row,
    clip,
    cluster_permutation,
    find_clusters,
    head_stats,
    head_stats_boolean,
)


def boolean(labels: int, ones: list[tuple[int, int]]) -> np.ndarray:
    b = np.zeros((labels, labels), dtype=bool)
    for i, j in ones:
        b[i, j] = True
    return b


def square(labels: list[int]) -> list[tuple[int, int]]:
    return [(i, j) for i in labels for j in labels]


def test_block_diagonal_with_planted_noise():
    # clusters {0,1,2}, {3,4}, {5}; labels 6, 7 below threshold on the diagonal;
    # planted noise at (0,5) [0.5], (6,1) [0.7]; every other element 0.1.
    m = np.full((8, 8), 0.1)
    for block in ([0, 1, 2], [3, 4], [5]):
        for i, j in square(block):
            m[i, j] = 0.9
    m[1, 1] = 1.0
    m[0, 5], m[6, 1] = 0.5, 0.7
    s = head_stats(m, 0.3)
    assert s.clusters == ((0, 1, 2), (3, 4), (5,))
    assert (s.n_c, s.c_s, s.diag, s.n, s.in_cluster_pairs) == (3, 2.0, 6, 2, 4)
    assert s.permutation == (0, 1, 2, 3, 4, 5, 6, 7)
    # at 0.6 the (0,5) noise falls below threshold, (6,1) stays
    s6 = head_stats(m, 0.6)
    assert (s6.n_c, s6.diag, s6.n) == (3, 6, 1)


def test_scrambled_clusters_are_permuted_onto_the_diagonal():
    rng = np.random.default_rng(0)
    perm = rng.permutation(10)
    b = np.zeros((10, 10), dtype=bool)
    for block in ([0, 1, 2], [3, 4], [5], [6]):
        for i, j in square(block):
            b[i, j] = True
    scrambled = np.zeros_like(b)
    scrambled[np.ix_(perm, perm)] = b  # label perm[i] in scrambled plays label i
    s = head_stats_boolean(scrambled)
    assert sorted(sorted(c) for c in s.clusters) == sorted(
        sorted(int(perm[i]) for i in c) for c in ([0, 1, 2], [3, 4], [5], [6])
    )
    p = np.array(s.permutation)
    laid = scrambled[np.ix_(p, p)]
    start = 0
    for c in s.clusters:
        k = len(c)
        assert laid[start : start + k, start : start + k].all()
        start += k
    assert laid.sum() == 9 + 4 + 1 + 1 and s.n == 0


def test_one_directional_pair_is_noise_not_a_cluster():
    b = boolean(3, [(0, 0), (1, 1), (0, 1)])
    s = head_stats_boolean(b)
    assert s.clusters == ((0,), (1,))
    assert (s.n_c, s.c_s, s.diag, s.n, s.in_cluster_pairs) == (2, 1.0, 2, 1, 0)


def test_below_threshold_diagonal_cannot_join_and_its_links_are_noise():
    # label 2 links both ways to 0 but its own diagonal is below threshold
    b = boolean(4, [(0, 0), (1, 1), (0, 1), (1, 0), (0, 2), (2, 0), (3, 2)])
    s = head_stats_boolean(b)
    assert s.clusters == ((0, 1),)
    assert (s.n_c, s.c_s, s.diag, s.n, s.in_cluster_pairs) == (1, 2.0, 2, 3, 1)
    assert s.permutation == (0, 1, 2, 3)


def test_chain_a_b_b_c_without_a_c():
    # A=0, B=1, C=2: A–B and B–C both ways, A–C missing
    b = boolean(3, square([0, 1]) + square([1, 2]))
    s = head_stats_boolean(b)
    assert s.clusters == ((0, 1), (2,))
    assert (s.n_c, s.c_s, s.diag, s.n, s.in_cluster_pairs) == (2, 1.5, 3, 2, 1)
    # the seed order decides: with B as the lowest label, B absorbs A, C is alone
    b2 = boolean(3, square([1, 0]) + square([0, 2]))  # B=0 linked to A=1 and C=2
    assert find_clusters(b2) == [[0, 1], [2]]


def test_empty_and_full_matrices():
    s = head_stats_boolean(np.zeros((5, 5), dtype=bool))
    assert (s.n_c, s.diag, s.n, s.in_cluster_pairs) == (0, 0, 0, 0) and math.isnan(s.c_s)
    assert s.permutation == (0, 1, 2, 3, 4)
    f = head_stats_boolean(np.ones((5, 5), dtype=bool))
    assert f.clusters == ((0, 1, 2, 3, 4),) and (f.n, f.in_cluster_pairs) == (0, 10)


def test_block_row_means_and_aggregates_by_hand():
    # head 1: clusters {0,1}, {2}; noise 1.  head 2: clusters {3}; noise 2.  head 3: degenerate.
    L = 5
    m1 = np.zeros((L, L))
    for i, j in square([0, 1]) + [(2, 2), (4, 0)]:
        m1[i, j] = 1.0
    m2 = np.zeros((L, L))
    for i, j in [(3, 3), (0, 4), (1, 4)]:
        m2[i, j] = 1.0
    m3 = np.full((L, L), np.nan)
    row, stats = block_row([m1, m2, m3], 0.3, attn_acc=0.5, block=2)
    assert [(s.n_c, s.diag, s.n) for s in stats] == [(2, 3, 1), (1, 1, 2), (0, 0, 0)]
    assert row.heads == 3 and row.labels == L and row.block == 2 and row.attn_acc == 0.5
    assert row.n_c == pytest.approx(1.0) and row.diag == pytest.approx(4 / 3) and row.n == pytest.approx(1.0)
    assert row.c_s == pytest.approx((1.5 + 1.0) / 2)  # the degenerate head has no mean cluster size
    assert row.n_label == pytest.approx(4 / 5)
    assert row.n_noise == pytest.approx(3 / 25)
    assert row.n_inter == pytest.approx(1 / 25)
    assert row.snr == pytest.approx((4 / 5) / (4 / 25))
    assert row.degenerate_heads == (3,)


def test_snr_edge_cases():
    assert aggregate(3, 0, 0, 10).snr == math.inf
    assert math.isnan(aggregate(0, 0, 0, 10).snr)


def test_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="square"):
        clip(np.zeros((2, 3)), 0.3)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        clip(np.zeros((2, 2)), 1.5)
    with pytest.raises(ValueError, match="Boolean"):
        head_stats_boolean(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="overlap"):
        cluster_permutation([[0, 1], [1]], 3)
    with pytest.raises(ValueError, match=r"\(H, L, L\)"):
        block_row(np.zeros((3, 3)), 0.3)


# The paper's primary columns (Diag, n, N_inter) and printed aggregates (N_label, N_noise, SNR), L = 100.
TABLE_1 = [  # block: Diag, n, N_label, N_noise, N_inter, SNR  (H = 4)
    (7, 37.5, 12.5, "1.5", "0.005", 0.0004, 277.2),
    (6, 48.5, 39.7, "1.9", "0.016", 0.0014, 112.2),
    (5, 61.0, 53.0, "2.4", "0.021", 0.0027, 102.2),
    (4, 72.5, 146.0, "2.9", "0.058", 0.0062, 44.9),
    (3, 70.5, 198.5, "2.8", "0.079", 0.0065, 32.8),
    (2, 38.0, 220.5, "1.5", "0.088", 0.0045, 16.4),
    (1, 36.0, 235.2, "1.4", "0.094", 0.0057, 14.4),
]
TABLE_2 = [  # H(7): Diag, n, N_label, N_noise, N_inter, SNR
    (4, 37.5, 12.5, "1.5", "0.0050", 0.0004, 277.2),
    (8, 32.4, 11.1, "2.6", "0.0089", 0.0016, 246.8),
    (16, 18.0, 55.3, "2.9", "0.0885", 0.0051, 30.9),
    (32, 15.4, 139.3, "4.9", "0.4458", 0.0149, 10.7),
]


def agrees_to_printed_digits(value: float, printed: str) -> bool:
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return abs(value - float(printed)) <= 0.5 * 10**-decimals + 1e-12


@pytest.mark.parametrize("block, diag, n, n_label, n_noise, n_inter, snr", TABLE_1)
def test_table_1_aggregates(block, diag, n, n_label, n_noise, n_inter, snr):
    agg = aggregate_from_table(diag, n, heads=4, labels=100, n_inter=n_inter)
    assert agrees_to_printed_digits(agg.n_label, n_label)
    assert agrees_to_printed_digits(agg.n_noise, n_noise)
    assert agg.snr == pytest.approx(snr, rel=0.01)


@pytest.mark.parametrize("heads, diag, n, n_label, n_noise, n_inter, snr", TABLE_2)
def test_table_2_aggregates(heads, diag, n, n_label, n_noise, n_inter, snr):
    agg = aggregate_from_table(diag, n, heads=heads, labels=100, n_inter=n_inter)
    assert agrees_to_printed_digits(agg.n_label, n_label)
    assert agrees_to_printed_digits(agg.n_noise, n_noise)
    assert agg.snr == pytest.approx(snr, rel=0.01)


def test_table_1_block_7_worked_example():
    agg = aggregate_from_table(37.5, 12.5, heads=4, labels=100, n_inter=0.0004)
    assert (agg.n_label, agg.n_noise) == pytest.approx((1.5, 0.005))
    assert agg.snr == pytest.approx(1.5 / 0.0054)


def test_table_1_block_7_n_inter_is_one_pair_per_head():
    # N_c 36.5, Diag 37.5: one cluster of size 2 per head -> 4 pairs / 100² = 0.0004
    assert aggregate(4 * 37.5, 4 * 12.5, 4, 100).n_inter == pytest.approx(0.0004)
