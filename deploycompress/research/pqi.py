"""PQ Index (PQI) and Sparsity-informed Adaptive Pruning (SAP), ALGORITHMS.md §2.

Diao et al., ICLR 2023. The PQ Index of the d surviving entries of a vector measures how
compressible it is; SAP turns it into "how many entries to prune this iteration". §2(b) is our
channel adaptation: the entries are per-channel importances of a group instead of weights.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

# Absolute slack when rounding r up to m = ceil(r): r is computed through fractional powers, so an
# exact integer bound (e.g. r = 1 for a 1-sparse vector) can come out as 1.0000000000000002.
_CEIL_SLACK = 1e-9


def _as_abs_numpy(w) -> np.ndarray:
    """Flatten a tensor / array / sequence into a float64 numpy vector of magnitudes."""
    if isinstance(w, torch.Tensor):
        w = w.detach().cpu().to(torch.float64).numpy()
    return np.abs(np.asarray(w, dtype=np.float64).reshape(-1))


def _check_pq(p: float, q: float) -> None:
    if not (0 < p < q):
        raise ValueError(f"PQ Index needs 0 < p < q, got p={p}, q={q}")


def pq_index(w, p: float = 0.5, q: float = 1.0) -> float:
    """PQ Index I(w) = 1 - d^(1/q - 1/p) * ||w||_p / ||w||_q of the d entries of ``w``.

    Uses |w|. 0 for a constant-magnitude vector, approaching 1 for very sparse ones; invariant to
    scale and permutation. Returns 0 for an empty or all-zero vector.
    """
    _check_pq(p, q)
    a = _as_abs_numpy(w)
    d = a.size
    if d == 0:
        return 0.0
    norm_q = float(np.sum(a**q) ** (1.0 / q))
    if norm_q == 0.0:
        return 0.0  # all-zero: nothing to measure, treat as "not compressible"
    # Normalise by the max first so that the powers neither overflow nor underflow (I is
    # scale-invariant, so this changes nothing mathematically).
    a = a / a.max()
    norm_p = float(np.sum(a**p) ** (1.0 / p))
    norm_q = float(np.sum(a**q) ** (1.0 / q))
    index = 1.0 - d ** (1.0 / q - 1.0 / p) * norm_p / norm_q
    # ||w||_p <= d^(1/p - 1/q) ||w||_q, so I >= 0; round-off can give -1e-16: clamp it.
    return max(index, 0.0)


def retain_bound(d: int, index: float, p: float = 0.5, q: float = 1.0, eta_r: float = 0.0) -> float:
    """Retain bound r = d * (1 + eta_r)^(-q/(q-p)) * (1 - I)^(q*p/(q-p)).

    r is the (fractional) number of entries SAP believes the vector needs; larger eta_r
    (compression tolerance) lowers it.
    """
    _check_pq(p, q)
    if d <= 0:
        return 0.0
    return d * (1.0 + eta_r) ** (-q / (q - p)) * (1.0 - index) ** (q * p / (q - p))


def retain_count(d: int, index: float, p: float = 0.5, q: float = 1.0, eta_r: float = 0.0) -> int:
    """m = ceil(r): the integer number of entries to retain according to the retain bound."""
    if d <= 0:
        return 0
    return math.ceil(retain_bound(d, index, p, q, eta_r) - _CEIL_SLACK)


def prune_count(
    d: int,
    index: float,
    p: float = 0.5,
    q: float = 1.0,
    eta_r: float = 0.0,
    gamma: float = 1.0,
    beta: float = 0.9,
) -> int:
    """Number of survivors to prune this iteration: c = floor(d * clamp(gamma*(1 - m/d), 0, beta)).

    m = ceil(r) with r the retain bound. gamma scales the rate, beta caps it.
    """
    if d <= 0:
        return 0
    m = retain_count(d, index, p, q, eta_r)
    rate = min(max(gamma * (1.0 - m / d), 0.0), beta)
    # Same slack as above: d * rate can be 2.9999999999999996 when the exact value is 3.
    return int(math.floor(d * rate + _CEIL_SLACK))


def _scores_numpy(scores) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().to(torch.float64).numpy()
    return np.asarray(scores, dtype=np.float64).reshape(-1)


def sap_drop_indices(
    scores_per_group: Sequence,
    scope: str = "layer",
    p: float = 0.5,
    q: float = 1.0,
    eta_r: float = 0.0,
    gamma: float = 1.0,
    beta: float = 0.9,
) -> list[list[int]]:
    """SAP as a channel allocation policy (§2(b)): which channels of each group to drop.

    ``scores_per_group[g]`` holds one importance per remaining channel of group g (magnitudes are
    used). scope='layer': each group gets its own I and c and drops its c lowest channels.
    scope='global': every group's scores are divided by that group's mean (so groups with
    different scales compete fairly), concatenated, one I and c are computed on the
    concatenation and the c globally lowest are dropped. A group never loses all its channels:
    if dropping a channel would empty its group it is skipped and the next lowest is taken.
    Returns sorted per-group lists of channel indices to drop.
    """
    groups = [np.abs(_scores_numpy(s)) for s in scores_per_group]
    kw = dict(p=p, q=q, eta_r=eta_r, gamma=gamma, beta=beta)
    if scope == "layer":
        out = []
        for v in groups:
            c = min(prune_count(v.size, pq_index(v, p, q), **kw), max(v.size - 1, 0))
            order = np.argsort(v, kind="stable")  # stable: ties drop the lower index first
            out.append(sorted(int(i) for i in order[:c]))
        return out
    if scope != "global":
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")

    normed, owner, local = [], [], []
    for g, v in enumerate(groups):
        mean = v.mean() if v.size else 0.0
        normed.append(v / mean if mean > 0 else v)  # all-zero group: leave as zeros
        owner.append(np.full(v.size, g))
        local.append(np.arange(v.size))
    if not normed:
        return []
    allv, owner, local = np.concatenate(normed), np.concatenate(owner), np.concatenate(local)
    c = prune_count(allv.size, pq_index(allv, p, q), **kw)
    remaining = [v.size for v in groups]
    out = [[] for _ in groups]
    for k in np.argsort(allv, kind="stable"):
        if c == 0:
            break
        g = int(owner[k])
        if remaining[g] <= 1:
            continue  # keep at least one channel per group
        out[g].append(int(local[k]))
        remaining[g] -= 1
        c -= 1
    return [sorted(x) for x in out]


def sap_prune_counts(
    scores_per_group: Sequence,
    scope: str = "layer",
    p: float = 0.5,
    q: float = 1.0,
    eta_r: float = 0.0,
    gamma: float = 1.0,
    beta: float = 0.9,
) -> list[int]:
    """Number of channels SAP drops from each group this iteration (see ``sap_drop_indices``)."""
    return [
        len(x)
        for x in sap_drop_indices(scores_per_group, scope, p, q, eta_r, gamma, beta)
    ]
