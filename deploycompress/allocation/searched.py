"""Baseline policies, each one parameter searched against measured latency and, where the search
stops above the window, widened into it (window.searched_baseline). The same plans are candidates
inside SPDY (spdy.py): where they land in the window, SPDY's result has no worse a calibration loss."""
from __future__ import annotations

from typing import Callable

import torch

from ..graph import round_channels
from .base import AllocationPolicy, AllocationProblem, AllocationResult, policies


def uniform_family(problem: AllocationProblem) -> Callable[[float], dict[str, int]]:
    """r in [0, 1] -> one keep ratio 0.05 + 0.95 r for every group."""
    def family(r: float) -> dict[str, int]:
        return problem.uniform_widths(0.05 + 0.95 * r)

    return family


def global_family(problem: AllocationProblem) -> Callable[[float], dict[str, int]]:
    """r in [0, 1] -> widths from one threshold over all channels' normalised scores."""
    normalized = {name: s / (s.mean() + 1e-12) for name, s in problem.scores.items()}
    pooled = torch.cat(list(normalized.values())).sort().values

    def family(r: float) -> dict[str, int]:
        fraction_removed = 0.95 * (1 - r)
        index = min(int(fraction_removed * len(pooled)), len(pooled) - 1)
        threshold = pooled[index] if fraction_removed > 0 else -float("inf")
        widths = {}
        for g in problem.graph.groups:
            kept = int((normalized[g.name] >= threshold).sum())
            widths[g.name] = round_channels(max(kept, 1), g.channels, g.unit_multiple(problem.channel_multiple))
        return widths

    return family


@policies.register("uniform")
class Uniform(AllocationPolicy):
    """One keep ratio for every group, bisected until the measured speedup meets the target."""

    def allocate(self, problem: AllocationProblem) -> AllocationResult:
        from .window import searched_baseline  # here, not at import: window pulls in the ONNX exporter

        return searched_baseline(problem, uniform_family(problem), "uniform")


@policies.register("global")
class GlobalMagnitude(AllocationPolicy):
    """One global threshold over all channels' scores (each group's scores divided by its mean, so
    groups of different fan-in compare), bisected against measured speedup."""

    def allocate(self, problem: AllocationProblem) -> AllocationResult:
        from .window import searched_baseline

        return searched_baseline(problem, global_family(problem), "global")
