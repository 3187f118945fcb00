"""TETRIS: block sparsity by reordering (Ji et al., NeurIPS 2018), ALGORITHMS.md §6.

Given X = |W| and a block size per axis, prune the floor(rho * #blocks) blocks with the smallest
sums, after permuting each blocked axis so that small entries gather into the same blocks.
Alternates an E-step (choose the blocks for the current order) and an M-step (for the fixed block
mask, greedily swap slices of one axis while the swap lowers the pruned mass by >= tol).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class TetrisResult:
    """Outcome of block pruning.

    perms[a]: for a reordered axis, position -> original index (X_perm = X[np.ix_(*perms)]);
    None for an axis that is not reordered. mask: in the ORIGINAL order, 1 = kept, 0 = pruned.
    pruned_mass: sum of |W| pruned with the returned reordering; pruned_mass_unpermuted: the
    same prune rate and blocks without any reordering (the baseline).
    """

    perms: list
    mask: np.ndarray
    pruned_mass: float
    pruned_mass_unpermuted: float


def _block_sizes(shape: Sequence[int], block: Sequence[int]) -> list[int]:
    """Resolve block sizes: 0 (or anything >= the axis length) means the whole axis."""
    if len(block) != len(shape):
        raise ValueError(f"block {list(block)} must have one entry per axis of shape {shape}")
    return [n if (b <= 0 or b >= n) else int(b) for n, b in zip(shape, block)]


def _pad(x: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Zero-pad every axis to a multiple of its block size (partial last blocks allowed)."""
    pad = [(0, (-n) % b) for n, b in zip(x.shape, sizes)]
    return np.pad(x, pad) if any(p for _, p in pad) else x


def _e_step(xp: np.ndarray, sizes: list[int], prune_rate: float) -> tuple[float, np.ndarray]:
    """Mark the floor(rho * #blocks) smallest-sum blocks; returns (pruned mass, pruned mask).

    ``xp`` is padded; the mask (1 = pruned) has the padded shape. Ties -> lower block index.
    """
    grid = [n // b for n, b in zip(xp.shape, sizes)]
    split = [d for g, b in zip(grid, sizes) for d in (g, b)]
    sums = xp.reshape(split).sum(axis=tuple(range(1, 2 * len(grid), 2)))
    n_prune = int(math.floor(prune_rate * sums.size + 1e-9))
    pruned = np.zeros(sums.size, dtype=bool)
    pruned[np.argsort(sums.reshape(-1), kind="stable")[:n_prune]] = True
    m = pruned.reshape(grid)
    for axis, b in enumerate(sizes):
        m = np.repeat(m, b, axis=axis)
    return float((xp * m).sum()), m.astype(np.float64)


def _m_step_axis(
    xp: np.ndarray, mask: np.ndarray, axis: int, n_real: int, perm: np.ndarray, tol: float
) -> np.ndarray:
    """Greedy slice swaps along ``axis`` for a fixed pruned mask; returns the updated perm.

    S = X_axis @ M_axis^T: S[i, j] is the pruned mass if the slice now at position i sat at mask
    position j. Swapping slices i and j changes the pruned mass by -G[i, j] with
    G[i, j] = S[i, i] + S[j, j] - S[i, j] - S[j, i]. Padding slices are never moved.
    """
    xa = np.moveaxis(xp, axis, 0).reshape(xp.shape[axis], -1)[:n_real]
    ma = np.moveaxis(mask, axis, 0).reshape(mask.shape[axis], -1)[:n_real]
    s = xa @ ma.T
    perm = perm.copy()
    for _ in range(n_real * n_real):  # every swap gains >= tol, this cap is only a safeguard
        d = np.diag(s)
        gain = d[:, None] + d[None, :] - s - s.T
        i, j = np.unravel_index(int(np.argmax(gain)), gain.shape)
        if gain[i, j] < tol:
            break
        # The slice at position i moves to j and vice versa: swap the rows of S (its columns are
        # mask positions, which do not move) and the permutation entries.
        s[[i, j]] = s[[j, i]]
        perm[[i, j]] = perm[[j, i]]
    return perm


def _unpermute(mask_perm: np.ndarray, perms: list[np.ndarray]) -> np.ndarray:
    """Map a mask in permuted order back to the original order."""
    out = np.empty_like(mask_perm)
    out[np.ix_(*perms)] = mask_perm
    return out


def block_prune_without_reordering(
    weight_abs: np.ndarray, block: Sequence[int], prune_rate: float
) -> TetrisResult:
    """Baseline: prune the smallest-sum blocks of |W| in its given order (no permutation)."""
    x = np.abs(np.asarray(weight_abs, dtype=np.float64))
    sizes = _block_sizes(x.shape, block)
    mass, pruned = _e_step(_pad(x, sizes), sizes, prune_rate)
    keep = 1.0 - pruned[tuple(slice(0, n) for n in x.shape)]
    return TetrisResult([None] * x.ndim, keep, mass, mass)


def tetris(
    weight_abs: np.ndarray,
    block: Sequence[int],
    prune_rate: float,
    tol: float = 1e-3,
    max_rounds: int = 20,
) -> TetrisResult:
    """TETRIS block pruning with reordering (§6(a)).

    ``weight_abs``: |W| (abs is taken again anyway), any number of axes; ``block``: block size
    per axis, 0 = whole axis (e.g. [8, 8, 0, 0] for a conv weight); ``prune_rate``: fraction of
    blocks to prune. ``tol`` is absolute (in units of |W|): the minimum gain of a swap and the
    minimum improvement of a round. Axes whose block is 1 or the whole axis are not reordered
    (reordering cannot change their block sums).
    """
    x = np.abs(np.asarray(weight_abs, dtype=np.float64))
    sizes = _block_sizes(x.shape, block)
    reorder = [1 < b < n for n, b in zip(x.shape, sizes)]
    perms = [np.arange(n) for n in x.shape]
    baseline = block_prune_without_reordering(x, block, prune_rate).pruned_mass

    xp = _pad(x, sizes)
    mass, pruned = _e_step(xp, sizes, prune_rate)
    for _ in range(max_rounds):
        for axis in range(x.ndim):
            if reorder[axis]:
                perms[axis] = _m_step_axis(xp, pruned, axis, x.shape[axis], perms[axis], tol)
                xp = _pad(x[np.ix_(*perms)], sizes)
        new_mass, pruned = _e_step(xp, sizes, prune_rate)
        # The M-step never increases the pruned mass for a fixed mask and the E-step is optimal
        # for a fixed order, so the mass is monotone and this stops.
        improvement, mass = mass - new_mass, new_mass
        if improvement < tol:
            break

    keep_perm = 1.0 - pruned[tuple(slice(0, n) for n in x.shape)]
    mask = _unpermute(keep_perm, perms)
    return TetrisResult(
        [p if r else None for p, r in zip(perms, reorder)], mask, mass, baseline
    )
