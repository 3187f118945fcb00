"""SPDY-style latency-constrained allocation by dynamic programming.

Implements section 1 of ``ALGORITHMS.md`` (SPDY, Frantar & Alistarh, ICML 2022).

Problem
-------
A model has ``L`` prunable units.  Unit ``l`` can be compressed to one of
``K_l`` levels; level ``0`` is dense.  For every (unit, level) pair we have a
*measured* latency ``t[l][k]`` and an error estimate ``err[l][k]``.  We want one
level per unit such that the summed latency fits a budget ``B`` and the summed
error is minimal.  The budget for the prunable part follows from the speedup
target ``X``::

    B = T_base / X - (T_base - T_prunable)

where ``T_base`` is the dense model's measured latency and ``T_prunable`` the
summed dense latency of the prunable units; the non-prunable remainder
``T_base - T_prunable`` cannot shrink, so it is charged against the target
first (see :func:`prunable_budget`).

Discretisation
--------------
Latencies are real numbers, so they are mapped onto ``buckets`` (default
10,000) integer time slots of width ``B / buckets``::

    t_hat[l][k] = round(t[l][k] / (B / buckets))

Rounding is half-up (``floor(x + 0.5)``).  The budget itself is exactly
``buckets`` slots.  Because of the rounding, a solution feasible in slots can
overshoot the real budget by at most ``L * B / (2 * buckets)`` (half a slot per
unit), and conversely a real-feasible assignment can be rejected by the same
amount; with 10,000 slots this is negligible next to measurement noise.  The
result therefore reports ``predicted_time``, the sum of the *un-discretised*
latencies of the chosen levels, so callers can compare it with the budget and
with a real measurement.

Dynamic programme
-----------------
``D[l][tau]`` is the least total error of units ``0..l`` whose slot times sum
to *exactly* ``tau``::

    D[-1][0] = 0,  D[-1][tau > 0] = inf
    D[l][tau] = min_k D[l-1][tau - t_hat[l][k]] + err[l][k]

The answer is ``argmin_{tau <= buckets} D[L-1][tau]``, and the levels are
recovered by backtracking through the stored argmin ``k`` of each cell.  The
work is ``O(sum_l K_l * buckets)``; the loop is over units and levels only, each
step being one vectorised numpy operation over all ``tau`` (a shifted copy of
the previous row plus a constant), so L=60, K=12, 10,000 slots takes a few
milliseconds.

Ties are broken towards the lower total error, then the smaller (slot) time;
within one slot, levels are tried in order of increasing real latency so the
faster of two equally good levels wins.

Coefficient search
------------------
The per-level errors are not known a priori.  SPDY parameterises them as
``err[l][k] = c_l * (k / (K_l - 1))^2`` (:func:`quadratic_errors`) with one
coefficient ``c_l in [0, 1]`` per unit and searches ``c`` so that the DP's
solution, when actually built and evaluated on calibration data, has minimal
loss.  :func:`coefficient_search` is the shrinking-neighbourhood random search
of the paper: uniform random draws first, then repeated resampling of ``m``
random coordinates of the incumbent, accepting any improvement, with ``m``
decreasing from ``round(0.1 * L)`` to 1 whenever ``patience`` consecutive tries
fail.  Scoring (DP + build + evaluate) is the caller's, including any caching
of repeated level assignments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = [
    "DPResult",
    "SearchResult",
    "prunable_budget",
    "solve_dp",
    "quadratic_errors",
    "coefficient_search",
]


@dataclass(frozen=True)
class DPResult:
    """Outcome of :func:`solve_dp`.

    ``levels[l]`` is the chosen level of unit ``l``; ``error`` the summed error
    of those levels; ``predicted_time`` the summed *un-discretised* latency;
    ``feasible`` whether the assignment fits the budget (in slot units).  When
    ``feasible`` is False, ``levels`` are the fastest level of every unit.
    """

    levels: tuple[int, ...]
    error: float
    predicted_time: float
    feasible: bool


@dataclass(frozen=True)
class SearchResult:
    """Outcome of :func:`coefficient_search`: the best coefficients found,
    their score and the number of score evaluations spent."""

    coefficients: np.ndarray
    score: float
    evaluations: int


def prunable_budget(t_base: float, t_prunable: float, target_speedup: float) -> float:
    """Latency budget of the prunable units for a whole-model speedup target.

    The whole model must run in ``t_base / target_speedup``; the part that is
    not prunable (``t_base - t_prunable``) keeps its latency, so only the rest
    of the target is available to the prunable units::

        B = t_base / target_speedup - (t_base - t_prunable)

    A result ``<= 0`` means the target is unreachable by pruning alone.
    """
    if not target_speedup > 0:
        raise ValueError(f"target_speedup must be > 0, got {target_speedup}")
    return t_base / target_speedup - (t_base - t_prunable)


def _round_half_up(x: np.ndarray) -> np.ndarray:
    # Half-up rather than numpy's half-to-even: deterministic and, on exact
    # halves, charges the slightly larger time (the conservative side).
    return np.floor(x + 0.5)


def _validate_tables(
    times: Sequence[Sequence[float]], errors: Sequence[Sequence[float]]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if len(times) != len(errors):
        raise ValueError(
            f"times has {len(times)} units but errors has {len(errors)}"
        )
    t_out: list[np.ndarray] = []
    e_out: list[np.ndarray] = []
    for l, (t_row, e_row) in enumerate(zip(times, errors)):
        t = np.asarray(t_row, dtype=np.float64).reshape(-1)
        e = np.asarray(e_row, dtype=np.float64).reshape(-1)
        if t.size == 0:
            raise ValueError(f"unit {l} has no levels")
        if t.size != e.size:
            raise ValueError(
                f"unit {l}: {t.size} times but {e.size} errors"
            )
        if not np.all(np.isfinite(t)) or np.any(t < 0):
            raise ValueError(f"unit {l}: times must be finite and >= 0")
        if not np.all(np.isfinite(e)):
            raise ValueError(f"unit {l}: errors must be finite")
        t_out.append(t)
        e_out.append(e)
    return t_out, e_out


def _fastest_levels(t: list[np.ndarray], e: list[np.ndarray]) -> tuple[int, ...]:
    # Per unit: minimum time, ties broken by lower error, then lower index.
    return tuple(int(np.lexsort((np.arange(tl.size), el, tl))[0]) for tl, el in zip(t, e))


def _result(
    levels: Sequence[int], t: list[np.ndarray], e: list[np.ndarray], feasible: bool
) -> DPResult:
    levels = tuple(int(k) for k in levels)
    err = float(sum(float(el[k]) for el, k in zip(e, levels)))
    time = float(sum(float(tl[k]) for tl, k in zip(t, levels)))
    return DPResult(levels=levels, error=err, predicted_time=time, feasible=feasible)


def solve_dp(
    times: Sequence[Sequence[float]],
    errors: Sequence[Sequence[float]],
    budget: float,
    buckets: int = 10000,
) -> DPResult:
    """Pick one level per unit minimising summed error under a latency budget.

    ``times[l][k]`` / ``errors[l][k]`` are the latency and error of level
    ``k`` of unit ``l``; units may have different numbers of levels.  Times
    are discretised into ``buckets`` slots of width ``budget / buckets`` (see
    the module docstring), and the exact-time DP is solved over the slots.

    If no assignment fits, or ``budget <= 0`` (slots undefined), the fastest
    level of every unit is returned with ``feasible=False``.  The one
    exception: ``budget == 0`` with a zero-time level in every unit is
    feasible, and the least-error zero-time levels are returned.
    """
    if isinstance(buckets, bool) or int(buckets) != buckets or buckets < 1:
        raise ValueError(f"buckets must be a positive integer, got {buckets}")
    buckets = int(buckets)
    budget = float(budget)
    if not math.isfinite(budget):
        raise ValueError(f"budget must be finite, got {budget}")
    t, e = _validate_tables(times, errors)
    num_units = len(t)

    if budget <= 0:
        # The slot width B / buckets is meaningless; only an all-zero-time
        # assignment can fit, and only when the budget is exactly zero.
        if budget == 0 and all(np.any(tl == 0) for tl in t):
            levels = [
                int(np.flatnonzero(tl == 0)[np.argmin(el[tl == 0])])
                for tl, el in zip(t, e)
            ]
            return _result(levels, t, e, True)
        return _result(_fastest_levels(t, e), t, e, False)

    width = budget / buckets
    n = buckets + 1  # slot totals 0..buckets inclusive
    t_hat = [_round_half_up(tl / width).astype(np.int64) for tl in t]

    # Row of the DP table: best error for each exact slot total so far.
    # Only the current row is kept; the per-cell argmin level is stored for
    # every unit so that the assignment can be recovered by backtracking.
    best = np.full(n, np.inf)
    best[0] = 0.0
    choice = np.empty((num_units, n), dtype=np.int32)
    for l in range(num_units):
        new = np.full(n, np.inf)
        pick = np.full(n, -1, dtype=np.int32)
        # Try faster levels first: with strict '<' below, the faster of two
        # levels landing on the same slot total with the same error is kept.
        order = np.lexsort((np.arange(t[l].size), e[l], t[l]))
        for k in order:
            shift = int(t_hat[l][k])
            if shift >= n:
                continue  # this level alone exceeds the budget
            cand = best[: n - shift] + e[l][k]
            seg = new[shift:]
            improved = cand < seg  # inf < inf is False: unreachable stays so
            np.copyto(seg, cand, where=improved)
            np.copyto(pick[shift:], np.int32(k), where=improved)
        best = new
        choice[l] = pick

    reachable = np.isfinite(best)
    if not reachable.any():
        return _result(_fastest_levels(t, e), t, e, False)

    # Lowest error, then smallest slot total.  A tiny relative tolerance makes
    # sums that are equal up to floating-point reassociation count as ties.
    min_err = best[reachable].min()
    tol = 1e-12 * max(1.0, abs(min_err))
    tau = int(np.flatnonzero(reachable & (best <= min_err + tol))[0])

    levels = [0] * num_units
    for l in range(num_units - 1, -1, -1):
        k = int(choice[l, tau])
        assert k >= 0, "backtracking reached an unreachable cell"
        levels[l] = k
        tau -= int(t_hat[l][k])
    assert tau == 0, "backtracking did not return to slot 0"
    return _result(levels, t, e, True)


def quadratic_errors(
    coefficients: Sequence[float], level_counts: Sequence[int]
) -> list[list[float]]:
    """SPDY's error model: ``err[l][k] = c_l * (k / (K_l - 1))^2``.

    Level 0 (dense) has error 0 and the most compressed level ``K_l - 1`` has
    error ``c_l``; a unit with a single level (``K_l = 1``) gets ``[0.0]``.
    The quadratic shape only fixes the *relative* cost of levels within a
    unit; the coefficients, found by :func:`coefficient_search`, set how
    sensitive each unit is relative to the others.
    """
    if len(coefficients) != len(level_counts):
        raise ValueError(
            f"{len(coefficients)} coefficients for {len(level_counts)} units"
        )
    out: list[list[float]] = []
    for c, count in zip(coefficients, level_counts):
        count = int(count)
        if count < 1:
            raise ValueError(f"level counts must be >= 1, got {count}")
        if count == 1:
            out.append([0.0])
            continue
        c = float(c)
        out.append([c * (k / (count - 1)) ** 2 for k in range(count)])
    return out


def coefficient_search(
    num_units: int,
    score: Callable[[np.ndarray], float],
    rng: np.random.Generator,
    initial_draws: int = 100,
    patience: int = 100,
    on_step: Callable[[int, float], None] | None = None,
    max_evaluations: int | None = None,
    seeds: Sequence[np.ndarray] = (),
) -> SearchResult:
    """Shrinking-neighbourhood random search over ``c in [0, 1]^L`` (minimises ``score``).

    1. ``initial_draws`` uniform draws of ``c``; keep the best.
    2. For ``m = round(0.1 * L)`` (at least 1, at most ``L``) down to 1: resample
       ``m`` distinct random coordinates of the incumbent uniformly in [0, 1];
       accept a strict improvement and reset the failure count; after
       ``patience`` consecutive failures decrement ``m``.

    Large ``m`` explores far from the incumbent; shrinking it refines the
    solution coordinate by coordinate.  ``score`` receives a fresh copy of the
    candidate, so it may keep or modify it.  A NaN score counts as +inf.

    ``max_evaluations`` caps the number of ``score`` calls.  When the cap is
    smaller than the full schedule would need, the random phase gets at most
    half of it (rounded up) so that the local refinement, which is where most
    of the gain comes from once a reasonable start is found, still runs; the
    search then stops as soon as the cap is reached and returns the best so
    far.  ``on_step(evaluations, best_score)`` is called after every score
    call.  ``seeds`` are informed starting points (clipped to [0, 1]) evaluated
    before the random draws and counted among them.
    """
    num_units = int(num_units)
    if num_units < 1:
        raise ValueError(f"num_units must be >= 1, got {num_units}")
    if initial_draws < 1:
        raise ValueError(f"initial_draws must be >= 1, got {initial_draws}")
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    if max_evaluations is not None and max_evaluations < 1:
        raise ValueError(f"max_evaluations must be >= 1, got {max_evaluations}")

    cap = math.inf if max_evaluations is None else int(max_evaluations)
    n_init = int(initial_draws)
    if max_evaluations is not None:
        n_init = min(n_init, max(1, math.ceil(cap / 2)))

    evaluations = 0
    best_c: np.ndarray | None = None
    best_s = math.inf

    def evaluate(c: np.ndarray) -> float:
        nonlocal evaluations
        s = float(score(c.copy()))
        evaluations += 1
        return math.inf if math.isnan(s) else s

    def report() -> None:
        if on_step is not None:
            on_step(evaluations, best_s)

    # Phase 1: the caller's seeds, then global random draws.
    seeds = [np.clip(np.asarray(c, dtype=float), 0.0, 1.0) for c in seeds]
    for i in range(max(n_init, len(seeds))):
        c = seeds[i] if i < len(seeds) else rng.uniform(0.0, 1.0, size=num_units)
        s = evaluate(c)
        if best_c is None or s < best_s:
            best_c, best_s = c, s
        report()
    assert best_c is not None

    # Phase 2: shrinking neighbourhood.  Half-up rounding of 0.1 * L (so
    # L = 5 gives m = 1 and L = 25 gives m = 3).
    m = min(num_units, max(1, int(math.floor(0.1 * num_units + 0.5))))
    while m >= 1 and evaluations < cap:
        failures = 0
        while failures < patience and evaluations < cap:
            cand = best_c.copy()
            idx = rng.choice(num_units, size=m, replace=False)
            cand[idx] = rng.uniform(0.0, 1.0, size=m)
            s = evaluate(cand)
            if s < best_s:
                best_c, best_s = cand, s
                failures = 0
            else:
                failures += 1
            report()
        m -= 1

    return SearchResult(coefficients=best_c, score=best_s, evaluations=evaluations)
