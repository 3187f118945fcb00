"""Worked example of ALGORITHMS.md §6(c): TETRIS block pruning with reordering."""

import numpy as np
import pytest

from deploycompress.research.tetris import block_prune_without_reordering, tetris

SMALL = [(0, 0), (0, 2), (2, 0), (2, 2)]


def example():
    x = np.ones((4, 4))
    for i, j in SMALL:
        x[i, j] = 0.1
    return x


def test_unpermuted_baseline_is_3_1():
    res = block_prune_without_reordering(example(), [2, 2], 0.25)
    assert res.pruned_mass == pytest.approx(3.1, abs=1e-9)
    assert res.perms == [None, None]
    # Every block sums to 3.1; the tie goes to the first block.
    expected = np.ones((4, 4))
    expected[:2, :2] = 0
    assert np.array_equal(res.mask, expected)


def test_em_reaches_0_4_and_unpermuted_mask_hits_the_small_entries():
    x = example()
    res = tetris(x, [2, 2], 0.25)
    assert res.pruned_mass_unpermuted == pytest.approx(3.1, abs=1e-9)
    assert res.pruned_mass == pytest.approx(0.4, abs=1e-9)
    assert [p.tolist() for p in res.perms] == [[0, 2, 1, 3], [0, 2, 1, 3]]
    zeros = {tuple(int(v) for v in ij) for ij in np.argwhere(res.mask == 0)}
    assert zeros == set(SMALL)
    assert float((x * (1 - res.mask)).sum()) == pytest.approx(res.pruned_mass, abs=1e-12)


def test_whole_axis_block_is_not_reordered():
    x = example()
    res = tetris(x, [2, 0], 0.5)  # blocks are pairs of full rows
    assert res.perms[1] is None
    # Rows 0 and 2 have mass 2.2 each: reordering puts them in one block and prunes 4.4.
    assert res.pruned_mass == pytest.approx(4.4, abs=1e-9)
    assert res.pruned_mass_unpermuted == pytest.approx(6.2, abs=1e-9)
    assert np.array_equal(res.mask.sum(axis=1), [0, 4, 0, 4])


def test_random_conv_weight_invariants():
    rng = np.random.default_rng(0)
    w = np.abs(rng.normal(size=(8, 6, 3, 3)))
    res = tetris(w, [4, 3, 0, 0], 0.5)
    assert res.pruned_mass <= res.pruned_mass_unpermuted + 1e-12
    assert res.perms[2] is None and res.perms[3] is None
    for p, n in zip(res.perms[:2], (8, 6)):
        assert sorted(p.tolist()) == list(range(n))
    # 2 x 2 = 4 blocks of 4*3*3*3 = 108 entries; half of them pruned.
    assert int((res.mask == 0).sum()) == 2 * 108
    assert float((w * (1 - res.mask)).sum()) == pytest.approx(res.pruned_mass, rel=1e-12)
    # In permuted order the pruned entries form whole blocks.
    mp = res.mask[np.ix_(res.perms[0], res.perms[1], np.arange(3), np.arange(3))]
    blocks = mp.reshape(2, 4, 2, 3, 9).mean(axis=(1, 3, 4))
    assert set(np.unique(blocks).tolist()) == {0.0, 1.0}


def test_partial_blocks_and_zero_rate():
    rng = np.random.default_rng(1)
    w = rng.random((5, 7))
    res = tetris(w, [2, 3], 0.3)  # 3 x 3 grid with partial last blocks
    assert res.mask.shape == (5, 7)
    assert res.pruned_mass <= res.pruned_mass_unpermuted + 1e-12
    assert float((w * (1 - res.mask)).sum()) == pytest.approx(res.pruned_mass, rel=1e-12)
    none = tetris(w, [2, 3], 0.0)
    assert none.pruned_mass == 0.0 and none.mask.min() == 1.0


def test_block_count_rounds_down():
    # floor(0.3 * 4 blocks) = 1 block.
    res = tetris(example(), [2, 2], 0.3)
    assert res.pruned_mass == pytest.approx(0.4, abs=1e-9)
    assert int((res.mask == 0).sum()) == 4
