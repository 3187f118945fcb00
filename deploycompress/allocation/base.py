"""Allocation policies decide how many channels each group keeps. They are registered by name and
selected with `--policy NAME`. Every policy must end with a plan whose *measured* speedup on the
deployment runtime meets the target; `SpeedupMeter` is how they measure.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..errors import TargetUnreachable
from ..graph import GroupGraph, Plan, apply_plan, round_channels
from ..importance import keep_top
from ..latency import runtime
from ..onnx_export import export_bytes
from ..progress import bar as progress_bar
from ..registry import Registry


@dataclass
class Measurement:
    widths: dict[str, int]
    speedup: float
    latency_ms: float
    spread: float


class SpeedupMeter:
    """Measures candidate plans against the dense model on ONNX Runtime, interleaved.

    The dense session stays open and warm; every candidate is shrunk, exported, loaded and timed
    side by side with it. Results are cached by the widths, which is all that latency depends on.
    """

    def __init__(self, dense: nn.Module, example_input: torch.Tensor, threads: int, batch_size: int,
                 rounds: int, device: str = "cpu"):
        self.dense = dense
        self.example_input = example_input
        self.threads, self.rounds, self.device, self.batch_size = threads, rounds, device, batch_size
        self.dense_session = runtime.make_session(export_bytes(dense, example_input), threads, device)
        self.feed = runtime.random_feed(self.dense_session, batch_size)
        self.dense_ms = runtime.measure(self.dense_session, self.feed, rounds=rounds).median_ms
        self.history: list[Measurement] = []
        self._cache: dict[tuple, Measurement] = {}

    def build(self, plan: Plan) -> nn.Module:
        return apply_plan(copy.deepcopy(self.dense), self.example_input, plan)

    def measure(self, plan: Plan) -> Measurement:
        widths = {name: len(kept) for name, kept in plan.items()}
        key = tuple(sorted(widths.items()))
        if key not in self._cache:
            session = runtime.make_session(export_bytes(self.build(plan), self.example_input), self.threads,
                                           self.device)
            result = runtime.compare(self.dense_session, session, self.feed, rounds=self.rounds, warmup=5)
            self.dense_ms = result.a.median_ms
            self._cache[key] = Measurement(widths, result.speedup, result.b.median_ms, result.ratio_spread)
            self.history.append(self._cache[key])
        return self._cache[key]


@dataclass
class AllocationProblem:
    graph: GroupGraph
    scores: dict[str, torch.Tensor]
    target: float
    max_overshoot: float
    channel_multiple: int
    meter: SpeedupMeter
    calibration_loss: Callable[[Plan], float]
    seed: int
    spdy_evaluations: int = 60  # calibration-loss evaluations in SPDY's coefficient search
    # The search aims a little above the target so that the final, longer measurement still meets it.
    margin: float = 0.03
    notes: list[str] = field(default_factory=list)

    def plan_from_widths(self, widths: dict[str, int]) -> Plan:
        return {g.name: keep_top(self.scores[g.name], widths[g.name]) for g in self.graph.groups}

    def uniform_widths(self, keep_ratio: float) -> dict[str, int]:
        return {g.name: round_channels(keep_ratio * g.channels, g.channels, g.unit_multiple(self.channel_multiple))
                for g in self.graph.groups}


@dataclass
class AllocationResult:
    plan: Plan
    measured_speedup: float
    predicted_speedup: float | None = None
    details: dict = field(default_factory=dict)


class AllocationPolicy:
    name = "base"

    def allocate(self, problem: AllocationProblem) -> AllocationResult:
        raise NotImplementedError


policies: Registry[type[AllocationPolicy]] = Registry("allocation policy")


def search_monotone(problem: AllocationProblem, family: Callable[[float], dict[str, int]], description: str,
                    iterations: int = 12) -> AllocationResult:
    """Bisect a one-parameter family of widths (r = 1 is dense, smaller r prunes more) against the
    measured speedup; return the least-pruned plan that meets the target (plus margin)."""
    goal = problem.target * (1 + problem.margin)
    ceiling = problem.target * (1 + problem.max_overshoot)
    bar = progress_bar(iterations + 1, description, unit="candidate")
    lowest = problem.meter.measure(problem.plan_from_widths(family(0.0)))
    bar.update(1)
    if lowest.speedup < problem.target:
        bar.close()
        raise TargetUnreachable(
            f"target {problem.target:g}x is out of reach: the smallest model this policy builds measures "
            f"{lowest.speedup:.2f}x", best_speedup=lowest.speedup)
    best_r, best = 0.0, lowest
    low, high = 0.0, 1.0
    for _ in range(iterations):
        r = (low + high) / 2
        result = problem.meter.measure(problem.plan_from_widths(family(r)))
        bar.update(1)
        bar.set_postfix(keep=f"{r:.3f}", speedup=f"{result.speedup:.2f}x")
        if result.speedup >= goal:
            best_r, best, low = r, result, r
            if result.speedup <= ceiling:
                break
        else:
            high = r
    bar.close()
    return AllocationResult(problem.plan_from_widths(family(best_r)), best.speedup,
                            details={"parameter": best_r, "candidates": len(problem.meter.history)})
