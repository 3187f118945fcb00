"""Re-solve after a short profile: when the profile stage's trusted figure is short of the target, the
pipeline prunes again from the dense model with the search window's goal raised by the shortfall, at most
prune.resolve_attempts times, and the report says so. Above the allowance (target x 1.1) while the search
measured the plan inside it, the pipeline prunes again measuring afresh, and ships whichever attempt lands
nearer the allowed range. Stand-in prune and profile stages make the
readings exact; the window arithmetic is checked on AllocationProblem itself."""
from __future__ import annotations

import json

import pytest

from deploycompress.pipeline import KEPT_ATTEMPT, RESOLVE_EXTRA, run_pipeline
from deploycompress.recipe import build_config
from deploycompress.stages import Stage
from test_allocation import _problem as make_problem

NET_PY = '''
from torch import nn


def make(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
'''


class RecordingPrune(Stage):
    name = "prune"
    outputs = ("plan.json",)

    def __init__(self, searched: list[float] | None = None):
        self.calls: list[tuple[float, int]] = []  # (aim shift seen, id of the working model)
        self.fresh: list[bool] = []  # whether each prune was asked to measure afresh
        self.searched = searched  # the search's figure of each attempt's plan

    def run(self, ctx) -> None:
        self.calls.append((ctx.aim_shift, id(ctx.model)))
        self.fresh.append(bool(ctx.resolves and ctx.resolves[-1].get("fresh_measurements")))
        attempt = len(self.calls)
        search = self.searched[attempt - 1] if self.searched else None
        (ctx.run_dir / "plan.json").write_text(json.dumps({"attempt": attempt}))
        # what the report reads from the stages this stand-in replaces
        ctx.report.update(prune={"notes": [], "candidates": [], "search_speedup": search, "attempt": attempt},
                          params={"dense": 1, "compressed": 1}, macs={"dense": 1, "compressed": 1},
                          onnx={"max_abs_diff": 0.0, "opset": 17})


class ScriptedProfile(Stage):
    name = "profile"

    def __init__(self, readings: list[float], trusted: bool = True):
        self.readings, self.trusted = list(readings), trusted

    def run(self, ctx) -> None:
        ctx.report["latency"] = {"comparison": {"speedup": self.readings.pop(0)}, "trusted": self.trusted}


def _config(tmp_path, attempts=None):
    (tmp_path / "net.py").write_text(NET_PY)
    prune = {} if attempts is None else {"resolve_attempts": attempts}
    return build_config(None, {"model": f"{tmp_path / 'net.py'}:make", "data": "none", "input_shape": "1,3,8,8",
                               "target_speedup": 2.0, "out": str(tmp_path / "run"), "prune": prune})


def _run(tmp_path, readings, trusted=True, attempts=None, searched=None, prune_stage=None):
    config = _config(tmp_path, attempts)
    stages = [prune_stage or RecordingPrune(searched), ScriptedProfile(readings, trusted)]
    return run_pipeline(config, stages=stages), stages[0].calls, tmp_path / "run"


def test_short_profile_prunes_again_from_dense_with_raised_window(tmp_path):
    report, calls, run_dir = _run(tmp_path, [1.9, 2.05])
    assert [shift for shift, _ in calls] == [0.0, pytest.approx((2.0 / 1.9) * (1 + RESOLVE_EXTRA) - 1)]
    assert calls[0][1] != calls[1][1], "the second prune must start from a fresh copy of the dense model"
    assert report["target_met"] is True and report["speedup"]["measured"] == 2.05
    assert [r["measured"] for r in report["resolves"]] == [1.9]
    assert json.loads((run_dir / "manifest.json").read_text())["resolves"] == report["resolves"]


def test_resolves_stop_at_the_configured_attempts(tmp_path):
    report, calls, _ = _run(tmp_path, [1.9, 1.95, 1.97], attempts=2)
    shifts = [shift for shift, _ in calls]
    assert len(calls) == 3 and shifts[0] < shifts[1] < shifts[2]
    assert report["target_met"] is False and len(report["resolves"]) == 2


@pytest.mark.parametrize("readings,trusted,attempts", [([2.1], True, None), ([1.9], False, None), ([1.9], True, 0)])
def test_no_resolve_when_met_untrusted_or_switched_off(tmp_path, readings, trusted, attempts):
    report, calls, _ = _run(tmp_path, readings, trusted, attempts)
    assert len(calls) == 1 and report["resolves"] == []


def test_aim_shift_raises_the_window_within_the_allowance():
    problem = make_problem(2.0, 0.10)
    assert problem.window == pytest.approx((2.0 * 1.03, 2.0 * 1.07))
    problem.aim_shift = 0.01  # the goal rises, the ceiling keeps its margin under the allowance
    assert problem.window == pytest.approx((2.0 * 1.03 * 1.01, 2.0 * 1.07))
    problem.aim_shift = 0.02  # a window narrower than 2%: the ceiling 2% above the goal
    assert problem.window == pytest.approx((2.0 * 1.03 * 1.02, 2.0 * 1.03 * 1.02 * 1.02))
    problem.aim_shift = 0.20  # the goal stops just under the allowance, the ceiling at it
    assert problem.window == pytest.approx((2.2 / 1.02, 2.2))


def test_overshoot_the_search_did_not_see_prunes_again_measuring_afresh(tmp_path):
    prune = RecordingPrune(searched=[2.1, 2.1])
    report, calls, run_dir = _run(tmp_path, [2.4, 2.1], prune_stage=prune)
    assert prune.fresh == [False, True] and calls[0][1] != calls[1][1]
    assert [shift for shift, _ in calls] == [0.0, 0.0], "the window stays where it was"
    assert report["speedup"]["measured"] == 2.1 and report["speedup"]["within_allowed"] is True
    assert [(r["measured"], r["reason"]) for r in report["resolves"]] == [(2.4, "overshoot")]
    assert json.loads((run_dir / "plan.json").read_text()) == {"attempt": 2}
    assert not (run_dir / KEPT_ATTEMPT).exists(), "the kept attempt is removed once the run has decided"


def test_no_resolve_for_an_overshoot_the_search_measured_itself(tmp_path):
    report, calls, _ = _run(tmp_path, [2.4], searched=[2.35])  # no plan it measured landed inside
    assert len(calls) == 1 and report["resolves"] == []


@pytest.mark.parametrize("second,trusted", [(1.9, True), (2.6, True), (2.1, False)])
def test_a_resolve_that_ends_further_from_the_range_ships_the_overshot_attempt(tmp_path, second, trusted):
    class SecondUntrusted(ScriptedProfile):
        def run(self, ctx) -> None:
            super().run(ctx)
            ctx.report["latency"]["trusted"] = trusted or len(self.readings) == 1

    report = run_pipeline(_config(tmp_path), stages=[RecordingPrune(searched=[2.1, 2.1]),
                                                     SecondUntrusted([2.4, second])])
    run_dir = tmp_path / "run"
    assert report["speedup"]["measured"] == 2.4 and report["target_met"] is True
    assert json.loads((run_dir / "plan.json").read_text()) == {"attempt": 1}, "the first attempt's artifacts"
    assert [r["reason"] for r in report["resolves"]] == ["overshoot", "reverted"]
    assert any("the earlier attempt that landed nearer ships" in note for note in report["notes"])
    assert not (run_dir / KEPT_ATTEMPT).exists()


def test_a_new_run_drops_an_attempt_a_killed_run_kept(tmp_path):
    kept = tmp_path / "run" / KEPT_ATTEMPT
    kept.mkdir(parents=True)
    (kept / "state.json").write_text(json.dumps({"report": {"latency": {"comparison": {"speedup": 2.05},
                                                                        "trusted": True}}}))
    report, calls, _ = _run(tmp_path, [1.9, 1.95])  # short twice: the stale kept attempt must not ship
    assert report["speedup"]["measured"] == 1.95 and not kept.exists()


@pytest.mark.parametrize("readings,shipped", [([2.3, 2.6, 2.5], 1), ([2.6, 2.3, 2.5], 2), ([2.6, 2.5, 2.1], 3)])
def test_repeated_overshoots_ship_the_nearest_attempt(tmp_path, readings, shipped):
    # a second overshoot further out must not replace the nearer first one kept aside
    report, calls, run_dir = _run(tmp_path, readings, attempts=2, searched=[2.1, 2.1, 2.1])
    assert len(calls) == 3
    assert report["speedup"]["measured"] == readings[shipped - 1]
    assert json.loads((run_dir / "plan.json").read_text()) == {"attempt": shipped}
    assert not (run_dir / KEPT_ATTEMPT).exists()


def test_resume_of_a_reverted_run_restores_the_attempt_that_shipped(tmp_path):
    class RestorablePrune(RecordingPrune):
        def restore(self, ctx) -> None:
            attempt = json.loads((ctx.run_dir / "plan.json").read_text())["attempt"]
            ctx.report.update(prune={"notes": [], "candidates": [], "search_speedup": 2.1, "attempt": attempt},
                              params={"dense": 1, "compressed": 1}, macs={"dense": 1, "compressed": 1},
                              onnx={"max_abs_diff": 0.0, "opset": 17})

    class RestorableProfile(ScriptedProfile):
        def restore(self, ctx) -> None:
            self.run(ctx)

    _run(tmp_path, [2.4, 2.6], searched=[2.1, 2.1])  # the re-solve lands further out: attempt 1 ships
    prune = RestorablePrune(searched=[2.1])
    report = run_pipeline(_config(tmp_path), resume=True, stages=[prune, RestorableProfile([2.4])])
    assert prune.calls == [], "a resume of the finished run restores its stages rather than pruning again"
    assert json.loads((tmp_path / "run" / "plan.json").read_text()) == {"attempt": 1}
    assert report["speedup"]["measured"] == 2.4
    assert [r["reason"] for r in report["resolves"]] == ["overshoot", "reverted"]
