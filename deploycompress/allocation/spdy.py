"""SPDY-style allocation (Frantar & Alistarh, ICML 2022) on channel groups, against latencies measured on
the deployment runtime. ALGORITHMS.md section 1 specifies it; this module adapts it to channels:

1. Levels: each group's candidate widths, multiples of the width ORT rewards (8), dense first.
2. Timing table: t[g][k] from the operator latency table (latency/table.py). An operator whose input
   and output widths come from two groups is split half to each, so the dense times add up exactly.
3. DP (spdy_dp.solve_dp) under the budget B = T_base / X - (T_base - T_prunable).
4. The additive table is an approximation (a conv between two pruned groups shrinks on both sides),
   so the solved plan is *measured*, and the speedup the DP aims for is corrected (secant steps, then
   bisection) until the measured speedup lands in the problem's window (a margin inside [target,
   target * (1 + max_overshoot)]). The DP's plan jumps as the aim moves, so when every plan it
   proposed overshot, single-level widenings of the least-overshooting plan close the gap
   (`widen_into_window`).
5. The error coefficients c are searched (spdy_dp.coefficient_search) at that aim, each candidate
   scored by the calibration loss of the model masked to the DP's plan; then step 4 runs once more.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import TargetUnreachable
from ..progress import bar as progress_bar
from .base import AllocationPolicy, AllocationProblem, AllocationResult, policies
from .latency_model import LatencyModel, build_latency_model
from .spdy_dp import coefficient_search, prunable_budget, quadratic_errors, solve_dp

MAX_LEVELS = 16
CALIBRATION_STEPS = 8
POLISH_STEPS = 5


def level_widths(channels: int, multiple: int, max_levels: int = MAX_LEVELS) -> list[int]:
    """Candidate widths, dense first, on multiples of `multiple` (or quarters for narrow groups)."""
    if channels >= 2 * multiple:
        widths = list(range(channels - channels % multiple if channels % multiple else channels, multiple - 1, -multiple))
        if widths[0] != channels:
            widths.insert(0, channels)
    else:
        widths = sorted({max(1, round(channels * r)) for r in (1.0, 0.75, 0.5, 0.25)}, reverse=True)
    if len(widths) > max_levels:  # keep dense and the narrowest, thin the middle evenly
        picks = np.linspace(0, len(widths) - 1, max_levels).round().astype(int)
        widths = [widths[i] for i in sorted(set(picks))]
    return widths


def widen_into_window(start: dict[str, int], start_speedup: float, levels: dict[str, list[int]],
                      errors: dict[str, list[float]], predict_speedup: Callable[[dict[str, int]], float],
                      measure: Callable[[dict[str, int]], float], goal: float, ceiling: float,
                      steps: int = POLISH_STEPS) -> tuple[float, dict[str, int]] | None:
    """Walk from a plan measured above `ceiling` down into [goal, ceiling] by giving one group one level
    back at a time. Each step takes the move expected to stay at or above `goal` that buys the most
    error reduction per unit of speed given up (the expected speedup is the current measured one
    scaled by the latency model's predicted ratio, so the model's absolute error cancels); a move
    measured below `goal` is not tried again. Returns (speedup, widths) of the first plan measured in
    the window, or None when `steps` measurements did not find one."""
    current, current_speedup = dict(start), start_speedup
    rejected: set[tuple] = set()
    for _ in range(steps):
        base = predict_speedup(current)
        moves = []
        for name, widths in levels.items():
            k = widths.index(current[name])
            trial = {**current, name: widths[k - 1]} if k > 0 else None
            if trial is None or tuple(sorted(trial.items())) in rejected:
                continue
            expected = current_speedup * predict_speedup(trial) / base
            lost = max(1 / expected - 1 / current_speedup, 1e-12)  # latency added, in units of dense latency
            moves.append((expected >= goal, (errors[name][k] - errors[name][k - 1]) / lost, expected, trial))
        if not moves:
            return None
        safe = [m for m in moves if m[0]]
        # Nothing expected to stay above the goal: take the smallest step and let the measurement decide.
        _, _, _, trial = max(safe, key=lambda m: m[1]) if safe else max(moves, key=lambda m: m[2])
        speedup = measure(trial)
        if speedup < goal:
            rejected.add(tuple(sorted(trial.items())))
        elif speedup <= ceiling:
            return speedup, trial
        else:
            current, current_speedup = trial, speedup
    return None


@policies.register("spdy")
class SPDY(AllocationPolicy):
    def allocate(self, problem: AllocationProblem) -> AllocationResult:
        groups = problem.graph.groups
        levels = {g.name: level_widths(g.channels, g.unit_multiple(problem.channel_multiple)) for g in groups}
        model: LatencyModel = build_latency_model(problem)
        times = [model.unit_times(g.name, levels[g.name]) for g in groups]
        t_base = problem.meter.dense_ms
        t_prunable = sum(t[0] for t in times)
        counts = [len(levels[g.name]) for g in groups]
        goal, ceiling = problem.window
        trace: list[dict] = []

        def widths_for(level_choice) -> dict[str, int]:
            return {g.name: levels[g.name][k] for g, k in zip(groups, level_choice)}

        def solve(coefficients, aim: float):
            budget = prunable_budget(t_base, t_prunable, aim)
            return solve_dp(times, quadratic_errors(coefficients, counts), budget)

        def measure(widths: dict[str, int], aim: float, phase: str, confirm: bool = False) -> float:
            predicted_ms = model.predict_ms(widths)
            plan = problem.plan_from_widths(widths)
            measured = problem.meter.confirm(plan) if confirm else problem.meter.measure(plan)
            model.add_measurement(widths, measured.speedup)
            trace.append({"phase": phase, "aim": aim, "measured_speedup": measured.speedup,
                          "predicted_speedup": t_base / predicted_ms, "predicted_ms": predicted_ms,
                          "measured_ms": t_base / measured.speedup})
            return measured.speedup

        def aim_for(coefficients, wanted: float) -> tuple[float, dict[str, int]]:
            """The DP aim whose plan the latency model predicts closest to `wanted` (bisection)."""
            low, high = 1.0001, 50.0
            best = None
            for _ in range(18):
                aim = (low * high) ** 0.5
                result = solve(coefficients, aim)
                widths = widths_for(result.levels)
                predicted = t_base / model.predict_ms(widths)
                if best is None or abs(predicted - wanted) < abs(best[2] - wanted):
                    best = (aim, widths, predicted)
                if predicted < wanted and result.feasible:
                    low = aim
                else:
                    high = aim
            return best[0], best[1]

        def calibrate(coefficients, phase: str):
            """Plan, measure, refit the latency model, re-plan, until the measured speedup lands in
            [goal, ceiling]. Returns the least-overshooting plan that met the goal (or None)."""
            best = None  # (speedup, aim, widths)
            wanted = (goal + ceiling) / 2
            seen: set[tuple] = set()
            progress = progress_bar(CALIBRATION_STEPS, f"spdy {phase}", unit="candidate")
            for _ in range(CALIBRATION_STEPS):
                aim, widths = aim_for(coefficients, wanted)
                key = tuple(sorted(widths.items()))
                if key in seen:  # the model keeps proposing a measured plan: push the request instead
                    wanted *= 1.03 if best is None else 0.98
                    continue
                seen.add(key)
                speedup = measure(widths, aim, phase)
                if goal <= speedup <= ceiling:  # about to be accepted: confirm with a longer measurement
                    speedup = measure(widths, aim, phase + " (confirm)", confirm=True)
                progress.update(1)
                progress.set_postfix(aim=f"{aim:.2f}", measured=f"{speedup:.2f}x")
                if speedup >= goal and (best is None or speedup < best[0]):
                    best = (speedup, aim, widths)
                if best is not None and best[0] <= ceiling:
                    break
            progress.close()
            if best is not None and best[0] > ceiling:
                errors = quadratic_errors(coefficients, counts)
                speedup, aim, widths = best

                def measure_confirmed(trial: dict[str, int]) -> float:
                    measured = measure(trial, aim, phase + " (widen)")
                    if goal <= measured <= ceiling:
                        measured = measure(trial, aim, phase + " (widen, confirm)", confirm=True)
                    return measured

                widened = widen_into_window(widths, speedup, levels,
                                            {g.name: errors[i] for i, g in enumerate(groups)},
                                            lambda w: t_base / model.predict_ms(w), measure_confirmed, goal, ceiling)
                if widened is not None:
                    best = (widened[0], aim, widened[1])
            return best

        c0 = np.full(len(groups), 0.5)
        best = calibrate(c0, "calibrate")
        if best is None:
            top = max(t["measured_speedup"] for t in trace)
            raise TargetUnreachable(f"target {problem.target:g}x is out of reach: the best plan measured {top:.2f}x",
                                    best_speedup=top)
        aim = best[1]

        # Coefficient search at the calibrated aim; scores are cached by the DP's level choice.
        scores: dict[tuple, float] = {}

        def score(coefficients: np.ndarray) -> float:
            choice = solve(coefficients, aim).levels
            if choice not in scores:
                scores[choice] = problem.calibration_loss(problem.plan_from_widths(widths_for(choice)))
            return scores[choice]

        # Seed the search with each group's measured sensitivity: the calibration loss with that group
        # alone cut to about half its width. Random draws alone rarely find a good shape in a few
        # dozen evaluations; the sensitivity point usually starts far better than any of them.
        dense_widths = {g.name: levels[g.name][0] for g in groups}
        base_loss = problem.calibration_loss(problem.plan_from_widths(dense_widths))
        sensitivity = []
        for g in groups:
            half = min(levels[g.name], key=lambda w: abs(w - levels[g.name][0] / 2))
            loss = problem.calibration_loss(problem.plan_from_widths({**dense_widths, g.name: half}))
            sensitivity.append(max(loss - base_loss, 0.0))
        top = max(sensitivity) or 1.0
        sensitivity_seed = np.array([max(v / top, 0.01) for v in sensitivity])
        evaluations = problem.spdy_evaluations
        progress = progress_bar(evaluations, "spdy coefficient search", unit="eval")
        rng = np.random.default_rng(problem.seed)
        search = coefficient_search(len(groups), score, rng, initial_draws=min(100, max(1, evaluations // 2)),
                                    max_evaluations=evaluations, seeds=[sensitivity_seed, c0],
                                    on_step=lambda n, s: (progress.update(1), progress.set_postfix(loss=f"{s:.4f}")))
        progress.close()
        final = calibrate(search.coefficients, "verify")
        if final is None:  # the searched shape would not meet the target at any aim tried: keep the first
            final = best
        speedup, aim, widths = final
        predicted_ms = model.predict_ms_excluding(widths)
        return AllocationResult(
            problem.plan_from_widths(widths), speedup, predicted_speedup=t_base / predicted_ms,
            details={"aim": aim, "budget_ms": prunable_budget(t_base, t_prunable, aim),
                     "latency_fit": {"offset_ms": model.offset, "scale": model.scale, "points": len(model.points)},
                     "t_base_ms": t_base, "t_prunable_ms": t_prunable, "levels": {k: v for k, v in levels.items()},
                     "coefficients": search.coefficients.round(4).tolist(), "search_loss": search.score,
                     "sensitivity": [round(v, 5) for v in sensitivity],
                     "search_evaluations": search.evaluations, "distinct_plans_scored": len(scores),
                     "trace": trace, "predicted_latency_ms": predicted_ms})
