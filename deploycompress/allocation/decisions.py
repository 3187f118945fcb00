"""Baseline plans decided once per model, target and window, shared by every policy that weighs them.

`--policy uniform` ships the uniform family's plan, and SPDY weighs the same family's plan among its
candidates (spdy.py). Both come from `window.searched_baseline`, a walk over measured speedups, and on a
shared 2-core VM the same model measured 3.19-3.41x in three attempts of one run: when the measurement
cache was set aside for drift between two runs, the two walks read other figures and ended on other
plans (mobilenet_digits 3x, seed 0: SPDY weighed 32/16/64/32/16/32/32/16/16 while `--policy uniform`
shipped 32/32/64/32/16/48/16/16/16, 6 points better finetuned). SPDY's claim to be at least as good as
the baselines rests on weighing their plans, so the first search's decision is kept and every later
one for the same problem reads it, with the measurements behind it.

Stored next to the measurement cache (`<model digest>.baselines.json`), keyed by everything the search
depends on (`baseline_key`): the family, the target and window, the channel grid, the channel scores and
the runtime fingerprint. A re-solve raises the window, so it searches again. `prune.reuse_measurements
= false` decides afresh every run, as it measures afresh.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

from ..fileio import write_json
from .base import AllocationProblem, AllocationResult, Measurement

# Bump when a family or the widening changes what a search returns: older decisions are then ignored.
DECISION_VERSION = 2  # 2: a plan confirmed under the window ships before one over the allowance


def baseline_key(problem: AllocationProblem, label: str) -> str:
    """Digest of what `label`'s search depends on; the scores decide which channels a width keeps (and
    the global family's widths)."""
    digest = hashlib.sha256(json.dumps({
        "version": DECISION_VERSION, "label": label, "target": problem.target,
        "max_overshoot": problem.max_overshoot, "window": list(problem.window),
        "channel_multiple": problem.channel_multiple,
        "groups": [[g.name, g.channels, g.unit_multiple(problem.channel_multiple)] for g in problem.graph.groups],
        "runtime": getattr(problem.meter, "fingerprint", None)}, sort_keys=True).encode())
    for g in problem.graph.groups:
        digest.update(problem.scores[g.name].detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


class BaselineDecisions:
    """The decided baseline plans of one dense model, on disk. A damaged file is ignored (and
    rewritten by the next decision), never trusted."""

    def __init__(self, path: Path, load: bool = True):
        """`load` False starts empty (a search measured afresh): its decisions replace the file's."""
        self.path = path
        self._saved: dict[str, dict] = {}
        if load and path.is_file():
            try:
                saved = json.loads(path.read_text())
                self._saved = saved if isinstance(saved, dict) else {}
            except (OSError, ValueError):
                self._saved = {}

    def reuse(self, problem: AllocationProblem, key: str, label: str) -> AllocationResult | None:
        """The decision stored under `key` as this run's result, its measurements added to the meter's
        history (the candidates list and the latency fit read them as if measured now) and a note saying
        so; None when there is none or it does not fit this model's groups."""
        saved = self._saved.get(key)
        try:
            widths = {g.name: int(saved["widths"][g.name]) for g in problem.graph.groups}
            measurements = [Measurement(**m) for m in saved["measurements"]]
            speedup = float(saved["measured_speedup"])
            details, notes = dict(saved["details"]), list(saved["notes"])
        except (TypeError, KeyError, ValueError):
            return None
        if any(not 1 <= widths[g.name] <= g.channels for g in problem.graph.groups):
            return None
        for m in measurements:
            problem.meter.remember(m)
        problem.notes.extend(notes)
        problem.notes.append(f"{label}: the plan decided for this model, target and window on "
                             f"{saved.get('decided_at')} was reused, not searched again "
                             f"({self.path.name}; prune.reuse_measurements = false searches afresh)")
        details.update(candidates=len(problem.meter.history), decided_at=saved.get("decided_at"),
                       reused_decision=self.path.name)
        return AllocationResult(problem.plan_from_widths(widths), speedup, details=details)

    def record(self, key: str, result: AllocationResult, measurements: list[Measurement], notes: list[str]) -> None:
        self._saved[key] = {
            "widths": {name: len(kept) for name, kept in result.plan.items()},
            "measured_speedup": result.measured_speedup, "details": result.details, "notes": notes,
            "measurements": [asdict(m) for m in measurements],
            "decided_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json(self.path, self._saved)
