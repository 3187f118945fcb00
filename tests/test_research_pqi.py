"""Worked examples of ALGORITHMS.md §2(c): PQ Index and SAP."""

import numpy as np
import pytest
import torch

from deploycompress.research.pqi import (
    pq_index,
    prune_count,
    retain_bound,
    retain_count,
    sap_drop_indices,
    sap_prune_counts,
)

W8 = [0.9, 0.5, 0.1, 0.1, 0.05, 0.05, 0.02, 0.01]


def test_constant_vector_has_zero_index():
    assert pq_index([1, 1, 1, 1]) == pytest.approx(0.0, abs=1e-12)
    assert prune_count(4, pq_index([1, 1, 1, 1])) == 0


def test_one_sparse_vector():
    i = pq_index(torch.tensor([1.0, 0, 0, 0]))
    assert i == pytest.approx(0.75, abs=1e-9)
    assert i == pytest.approx(1 - 4 ** (1 / 1 - 1 / 0.5), abs=1e-9)  # the upper bound
    assert retain_bound(4, i) == pytest.approx(1.0, abs=1e-9)
    assert retain_count(4, i) == 1
    assert prune_count(4, i) == 3


def test_eight_vector_example():
    i = pq_index(np.array(W8), p=0.5, q=1.0)
    assert i == pytest.approx(0.3597, abs=1e-4)
    assert retain_bound(8, i) == pytest.approx(5.12, abs=3e-3)
    assert retain_count(8, i) == 6
    assert prune_count(8, i) == 2
    # The two pruned are the smallest: .01 (index 7) and .02 (index 6).
    assert sap_drop_indices([torch.tensor(W8)]) == [[6, 7]]


def test_eight_vector_with_tolerance():
    i = pq_index(W8)
    assert retain_bound(8, i, eta_r=0.1) == pytest.approx(4.23, abs=4e-3)
    assert retain_count(8, i, eta_r=0.1) == 5
    assert prune_count(8, i, eta_r=0.1) == 3
    assert sap_prune_counts([W8], eta_r=0.1) == [3]


def test_p1_q2_example():
    i = pq_index([4, 2, 1, 1], p=1, q=2)
    assert i == pytest.approx(0.1472, abs=1e-4)
    assert retain_bound(4, i, p=1, q=2) == pytest.approx(2.909, abs=1e-3)
    assert prune_count(4, i, p=1, q=2) == 1


def test_scale_and_permutation_invariance_and_sign():
    w = np.array(W8)
    base = pq_index(w)
    for k in (1e-6, 0.3, 7.0, 1e6):
        assert pq_index(k * w) == pytest.approx(base, abs=1e-12)
    assert pq_index(w[::-1]) == pytest.approx(base, abs=1e-12)
    assert pq_index(-w) == pytest.approx(base, abs=1e-12)  # uses |w|


def test_degenerate_inputs():
    assert pq_index([]) == 0.0
    assert pq_index([0.0, 0.0]) == 0.0
    assert prune_count(0, 0.0) == 0
    assert pq_index([2.0, 2.0, 2.0]) >= 0.0  # round-off clamped
    with pytest.raises(ValueError):
        pq_index([1.0], p=1, q=1)


def test_gamma_and_beta():
    i = pq_index([1, 0, 0, 0])  # rate 1 - m/d = 0.75
    assert prune_count(4, i, beta=0.5) == 2  # capped at beta
    assert prune_count(4, i, gamma=0.5) == 1  # floor(4 * 0.375)
    assert prune_count(4, i, gamma=-1.0) == 0  # clamped at 0


def test_layer_scope_counts_and_indices():
    groups = [torch.tensor([1.0, 1, 1, 1]), torch.tensor([0.0, 0.0, 5.0, 0.0])]
    assert sap_prune_counts(groups, scope="layer") == [0, 3]
    assert sap_drop_indices(groups, scope="layer") == [[], [0, 1, 3]]
    # beta = 1 would allow c = d - 1 at most; never the whole group.
    assert sap_prune_counts([[5.0]], scope="layer", beta=1.0) == [0]


def test_global_scope_normalises_by_group_mean():
    # Same shape, very different scales: after mean normalisation they are identical, so the
    # global drop must split evenly (without normalisation the small group would lose all).
    # Powers of two keep the normalised copies bit-identical (ties break to the first group).
    small = np.array(W8) * 2.0**-10
    big = np.array(W8) * 2.0**10
    concat = np.concatenate([small / small.mean(), big / big.mean()])
    # Two copies of W8: same I, so r = 2 * 5.12 = 10.24, m = 11, c = 5.
    assert pq_index(concat) == pytest.approx(0.3597, abs=1e-4)
    assert prune_count(16, pq_index(concat)) == 5
    drops = sap_drop_indices([small, big], scope="global")
    assert drops == [[4, 6, 7], [6, 7]]  # .01, .01, .02, .02, .05 (first group first)
    assert sap_prune_counts([small, big], scope="global") == [3, 2]


def test_global_scope_keeps_one_channel_per_group():
    zero = [0.0, 0.0, 0.0]
    other = [float(k) for k in range(1, 9)]
    norm_other = np.array(other) / np.mean(other)
    c = prune_count(11, pq_index(np.concatenate([np.zeros(3), norm_other])))
    assert c == 3
    # The three zeros are globally smallest, but one must stay; the next smallest is taken.
    assert sap_drop_indices([zero, other], scope="global") == [[0, 1], [0]]
    assert sap_prune_counts([zero, other], scope="global") == [2, 1]
    with pytest.raises(ValueError):
        sap_prune_counts([zero], scope="neuron")
