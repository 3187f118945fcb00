"""SAP: sparsity-informed adaptive pruning as an allocation policy (`--policy sap`), ALGORITHMS.md §2.

Each round, for every group, take the importance scores v of its d surviving channels, compute the
PQ Index I(v) and SAP's retain bound r = d (1 + eta_r)^(-q/(q-p)) (1 - I)^(qp/(q-p)), drop the lowest
d * clamp(gamma (1 - r/d), 0, beta) channels, then finetune briefly (problem.finetune_round) and
rescore. Defaults p = 0.5, q = 1, eta_r = 0, gamma = 1, beta = 0.9, layer scope (one I per group).

Bent to a *measured* target (our adaptation):
- Rounds continue until the measured speedup of the round's plan reaches the target; the last round
  is then bisected between the previous plan and its own (the fraction of the round's removals
  taken), so the plan does not overshoot by more than max_overshoot where the width grid allows.
- Widths are rounded to the channel multiple only when a plan is built; SAP's running survivor
  counts stay fractional, so small rates add up over rounds instead of being rounded away.
- The rate uses the unrounded retain bound r (the paper rounds it up to m = ceil(r)): on channel
  scores I is often tiny (about 5e-4 for the built-in ResNet's L2 group norms, whose BatchNorms
  make conv filter norms nearly equal), so ceil(r) = d and SAP would never remove anything.
- When SAP's own rates would remove less than MIN_ROUND_FRACTION of the surviving channels in a
  round, gamma is scaled up for that round so that they remove that much, keeping the ratios
  between groups that the PQ Index gave. This is recorded in the notes: it means the scores say
  the model is hardly compressible and the target, not SAP, sets the pace.
The PQ Index of every round is recorded (details.pqi_trajectory) with the round where the mean index
turns upward, the paper's sign that pruning has reached the model's compressibility limit.
"""
from __future__ import annotations

import dataclasses

import torch

from ..errors import TargetUnreachable
from ..graph import GroupGraph, Plan, round_channels
from ..importance import criteria, keep_top
from ..research.pqi import pq_index, retain_bound
from .base import AllocationPolicy, AllocationProblem, AllocationResult, policies, search_monotone

MIN_ROUND_FRACTION = 0.10  # least share of surviving channels a round removes (see the module doc)
MAX_ROUNDS = 40


def layer_pqi(graph: GroupGraph, plan: Plan | None = None, p: float = 0.5, q: float = 1.0) -> dict[str, float]:
    """PQ Index of each group's L2 magnitude scores, over the plan's kept units (all units without one)."""
    l2 = criteria.get("l2")()
    result = {}
    for group in graph.groups:
        scores = group.unit_scores(l2)
        if plan is not None and group.name in plan:
            scores = scores[plan[group.name]]
        result[group.name] = round(pq_index(scores, p, q), 6)
    return result


def turning_round(trajectory: list[dict]) -> int | None:
    """The first round whose mean PQI rises above the previous round's after having fallen: where
    pruning starts to remove more than it regularises. None if it never falls and then rises."""
    means = [t["pqi_mean"] for t in trajectory]
    fell = False
    for k in range(1, len(means)):
        if means[k] < means[k - 1] - 1e-9:
            fell = True
        elif means[k] > means[k - 1] + 1e-9 and fell:
            return trajectory[k]["round"]
    return None


@policies.register("sap")
class SAP(AllocationPolicy):
    p, q, eta_r, gamma, beta = 0.5, 1.0, 0.0, 1.0, 0.9

    def rates(self, survivors: dict[str, torch.Tensor]) -> tuple[dict[str, float], dict[str, float]]:
        """(PQ Index, SAP's unclamped base rate 1 - r/d) per group."""
        pqi, base = {}, {}
        for name, v in survivors.items():
            d = len(v)
            pqi[name] = pq_index(v, self.p, self.q)
            base[name] = max(0.0, 1.0 - retain_bound(d, pqi[name], self.p, self.q, self.eta_r) / d) if d else 0.0
        return pqi, base

    def allocate(self, problem: AllocationProblem) -> AllocationResult:
        goal, ceiling = problem.window
        groups = {g.name: g for g in problem.graph.groups}
        kept = {name: list(range(g.channels)) for name, g in groups.items()}
        virtual = {name: float(g.channels) for name, g in groups.items()}
        scores = problem.scores
        trajectory: list[dict] = []
        boosted = []
        for number in range(1, MAX_ROUNDS + 1):
            survivors = {name: scores[name][kept[name]] for name in groups}
            pqi, base = self.rates(survivors)
            total = sum(virtual.values())
            own = sum(min(self.gamma * base[n], self.beta) * virtual[n] for n in groups)
            gamma = self.gamma
            if own < MIN_ROUND_FRACTION * total:
                if not any(base.values()):  # every group perfectly uniform: no preference, prune evenly
                    base = {n: 1.0 for n in groups}
                weighted = sum(base[n] * virtual[n] for n in groups)
                gamma = self.gamma * MIN_ROUND_FRACTION * total / max(weighted, 1e-12)
                boosted.append((number, own / total, gamma))
            rate = {n: min(max(gamma * base[n], 0.0), self.beta) for n in groups}
            target_virtual = {n: virtual[n] * (1 - rate[n]) for n in groups}

            def widths_at(fraction: float, start=dict(virtual), end=target_virtual, current=dict(kept)) -> dict[str, int]:
                """Widths after taking `fraction` of this round's removals (0 = the previous plan)."""
                return {n: min(len(current[n]), round_channels(start[n] + fraction * (end[n] - start[n]),
                                                               groups[n].channels,
                                                               groups[n].unit_multiple(problem.channel_multiple)))
                        for n in groups}

            widths = widths_at(1.0)
            ranked = _survivors_first(scores, kept)
            plan = {n: keep_top(ranked[n], widths[n]) for n in groups}
            measured = problem.meter.measure(plan)
            trajectory.append({"round": number, "pqi_mean": _mean(pqi), "pqi": _rounded(pqi),
                               "gamma": round(gamma, 4), "speedup": round(measured.speedup, 4),
                               "kept_fraction": round(sum(widths.values()) / sum(g.channels for g in groups.values()), 4)})
            print(f"sap: round {number}: mean PQI {_mean(pqi):.4g}, gamma {gamma:.3g}, "
                  f"measured {measured.speedup:.2f}x")
            if measured.speedup >= goal:
                result = AllocationResult(plan, measured.speedup)
                if measured.speedup > ceiling:  # the last round overshot: take only part of it
                    partial = dataclasses.replace(problem, scores=ranked)
                    result = search_monotone(partial, lambda r: widths_at(1.0 - r), "sap last-round search")
                return self._finish(problem, result, scores, trajectory, boosted)
            virtual = target_virtual
            if plan != kept:
                kept = plan
                if problem.finetune_round is not None:
                    scores = problem.finetune_round(plan)
        best = max(m.speedup for m in problem.meter.history)
        raise TargetUnreachable(f"target {problem.target:g}x is out of reach: SAP's last plan after {MAX_ROUNDS} "
                                f"rounds measures {measured.speedup:.2f}x", best_speedup=best)

    def _finish(self, problem: AllocationProblem, result: AllocationResult, scores: dict[str, torch.Tensor],
                trajectory: list[dict], boosted: list[tuple]) -> AllocationResult:
        final_pqi, _ = self.rates({n: scores[n][kept] for n, kept in result.plan.items()})
        total = sum(g.channels for g in problem.graph.groups)
        trajectory.append({"round": "final", "pqi_mean": _mean(final_pqi), "pqi": _rounded(final_pqi),
                           "speedup": round(result.measured_speedup, 4),
                           "kept_fraction": round(sum(len(k) for k in result.plan.values()) / total, 4)})
        turn = turning_round([t for t in trajectory if t["round"] != "final"])
        if boosted:
            first = boosted[0]
            problem.notes.append(
                f"sap: the PQ Index rates alone would remove {first[1]:.1%} of the channels in round {first[0]}; "
                f"gamma was raised (to {first[2]:.3g} then) in {len(boosted)} round(s) so each round removes "
                f"{MIN_ROUND_FRACTION:.0%}, keeping the ratios between groups")
        result.details = {**result.details, "rounds": len([t for t in trajectory if t["round"] != "final"]),
                          "pqi_trajectory": trajectory, "pqi_turns_upward_at_round": turn,
                          "settings": {"p": self.p, "q": self.q, "eta_r": self.eta_r, "gamma": self.gamma,
                                       "beta": self.beta, "scope": "layer"},
                          "candidates": len(problem.meter.history)}
        return result


def _survivors_first(scores: dict[str, torch.Tensor], kept: Plan) -> dict[str, torch.Tensor]:
    """Scores where channels already removed rank below every survivor (SAP never brings one back)."""
    ranked = {}
    for name, s in scores.items():
        r = torch.full_like(s, -float("inf"))
        r[kept[name]] = s[kept[name]]
        ranked[name] = r
    return ranked


def _mean(values: dict[str, float]) -> float:
    return round(sum(values.values()) / max(len(values), 1), 6)


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in values.items()}
