"""Property tests (hypothesis) for the SHP cluster algorithm."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lsmha.analysis.clusters import block_row, head_stats, head_stats_boolean


@st.composite
def clustered_booleans(draw) -> np.ndarray:
    """Boolean matrices with planted clusters, random noise, scrambled labels."""
    labels = draw(st.integers(1, 14))
    b = draw(arrays(np.bool_, (labels, labels), elements=st.booleans()))
    sizes = draw(st.lists(st.integers(1, 4), max_size=4))
    start = 0
    for k in sizes:
        b[start : start + k, start : start + k] = True
        start += k
        if start >= labels:
            break
    perm = np.array(draw(st.permutations(range(labels))), dtype=np.int64)
    return b[np.ix_(perm, perm)]


@settings(max_examples=200, deadline=None)
@given(clustered_booleans())
def test_cluster_invariants(b):
    labels = b.shape[0]
    s = head_stats_boolean(b)
    members = [i for c in s.clusters for i in c]
    sizes = [len(c) for c in s.clusters]
    assert s.diag == sum(sizes) == int(np.trace(b))  # Diag = Σ cluster sizes
    assert s.n >= 0
    assert len(set(members)) == len(members)  # clusters disjoint
    assert sorted(s.permutation) == list(range(labels))  # a true permutation
    assert s.n_c == len(s.clusters) and s.in_cluster_pairs == sum(k * (k - 1) // 2 for k in sizes)
    inside = np.zeros_like(b)
    for c in s.clusters:
        assert b[np.ix_(c, c)].all()  # each cluster an all-ones square
        inside[np.ix_(c, c)] = True
    assert s.n == int((b & ~inside).sum())  # n = above-threshold elements outside the squares
    # greedy maximality: a diagonal label outside cluster C is in an earlier cluster or cannot join C
    for k, c in enumerate(s.clusters):
        earlier = {i for e in s.clusters[:k] for i in e}
        for j in np.flatnonzero(np.diagonal(b)):
            if j in c or j in earlier:
                continue
            assert not all(b[i, j] and b[j, i] for i in c)
    # the permuted matrix carries the clusters along its diagonal
    p = np.array(s.permutation)
    laid = b[np.ix_(p, p)]
    start = 0
    for k in sizes:
        assert laid[start : start + k, start : start + k].all()
        start += k


@st.composite
def normalised_stacks(draw) -> np.ndarray:
    heads, labels = draw(st.integers(1, 4)), draw(st.integers(1, 10))
    stack = draw(arrays(np.float64, (heads, labels, labels), elements=st.floats(-1, 1)))
    peak = draw(st.tuples(*(st.integers(0, labels * labels - 1) for _ in range(heads))))
    for h, k in enumerate(peak):
        stack[h].flat[k] = 1.0  # normalised: every head's maximum is 1
    return stack


@settings(max_examples=50, deadline=None)
@given(normalised_stacks(), st.sampled_from([0.3, 0.6]))
def test_block_row_is_consistent_with_its_heads(stack, theta):
    heads, labels = stack.shape[:2]
    row, stats = block_row(stack, theta)
    assert [s.diag for s in stats] == [head_stats(m, theta).diag for m in stack]
    assert abs(row.n_label * labels - sum(s.diag for s in stats)) < 1e-9
    assert abs(row.n_noise * labels**2 - sum(s.n for s in stats)) < 1e-9
    assert row.n >= 0 and row.n_noise >= 0 and row.n_inter >= 0
    assert abs(row.diag * heads - sum(s.diag for s in stats)) < 1e-9
    assert row.degenerate_heads == ()
