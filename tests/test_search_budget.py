"""prune.spdy_search_budget_s: SPDY's sensitivity seeds and coefficient search fit in a time budget,
decided from how long its calibration-loss evaluations take (a fake clock here: real timing lives in
benchmarks/)."""
import pytest
from test_allocation import BlindLatencyModel
from test_allocation import _problem as make_problem

from deploycompress.allocation import policies, spdy
from deploycompress.allocation.spdy import SEARCH_FLOOR, search_evaluations
from deploycompress.errors import UserError
from deploycompress.recipe import PruneConfig


@pytest.mark.parametrize("wanted, budget, each, spent, expected", [
    (100, 0.0, 7.0, 91.0, 100),   # no budget: every evaluation
    (100, 600.0, 7.0, 91.0, 72),  # ResNet-18 at 64x64: 7 s each, 13 sensitivity evaluations spent
    (100, 600.0, 1.2, 10.0, 100),  # the zoo: about a second each, the budget does not bind
    (100, 60.0, 7.0, 91.0, SEARCH_FLOOR),  # the sensitivity seeds spent it all: the floor
    (10, 600.0, 100.0, 0.0, 10),  # never more than asked for, even under the floor
])
def test_evaluations_that_fit_the_budget(wanted, budget, each, spent, expected):
    assert search_evaluations(wanted, budget, each, spent) == expected


class FakeClock:
    """time.perf_counter for spdy, advanced by the calibration loss: every evaluation takes `each` s."""

    def __init__(self, each: float):
        self.each, self.now = each, 0.0

    def perf_counter(self) -> float:
        return self.now

    def loss(self, plan) -> float:
        self.now += self.each
        return sum(len(kept) for kept in plan.values()) * -1e-3  # wider is better


def _allocate(monkeypatch, budget: float, evaluations: int = 60, each: float = 5.0):
    clock = FakeClock(each)
    monkeypatch.setattr(spdy, "time", clock)
    monkeypatch.setattr(spdy, "build_latency_model", lambda p: BlindLatencyModel(p, blind="none"))
    problem = make_problem(2.0)
    problem.calibration_loss = clock.loss
    problem.spdy_evaluations = evaluations
    problem.spdy_search_budget_s = budget
    result = policies.get("spdy")().allocate(problem)
    return problem, result


def test_a_slow_search_makes_the_evaluations_its_budget_allows(monkeypatch, capsys):
    problem, result = _allocate(monkeypatch, budget=200.0)
    groups = len(problem.graph.groups)  # vgg_digits: 6
    # dense + one evaluation per group for the sensitivity seed: 35 s spent, 165 s left at 5 s each
    assert result.details["search_evaluations"] == int((200 - 5 * (groups + 1)) / 5) == 33
    assert result.details["seconds_per_evaluation"] == 5.0
    assert len(result.details["sensitivity"]) == groups and "sensitivity" in result.details["seed_plans"]
    note = ("spdy: the coefficient search makes 33 of prune.spdy_evaluations (60) calibration-loss "
            "evaluations: each takes about 5.0 s here, and prune.spdy_search_budget_s is 200 s")
    assert note in problem.notes
    assert f"prune: {note}" in capsys.readouterr().out  # said before the search, not only in the report
    goal, ceiling = problem.window
    assert goal <= result.measured_speedup <= problem.allowance


def test_no_budget_or_a_fast_search_makes_every_evaluation(monkeypatch):
    for budget in (0.0, 10_000.0):
        problem, result = _allocate(monkeypatch, budget=budget)
        assert result.details["search_evaluations"] == 60
        assert not [note for note in problem.notes if "spdy_search_budget_s" in note]


def test_sensitivity_seeds_that_leave_no_room_for_the_search_are_skipped(monkeypatch):
    """6 groups and the search's least 16 evaluations at 5 s each do not fit in 40 s: the search starts
    from its other seeds, and still makes the floor's evaluations."""
    problem, result = _allocate(monkeypatch, budget=40.0)
    assert result.details["sensitivity"] == []
    assert set(result.details["seed_plans"]) == {"uniform", "flat"}
    assert result.details["search_evaluations"] == SEARCH_FLOOR
    assert any(note.startswith("spdy: the search is not seeded with each group's sensitivity: that takes 6 "
                               "calibration-loss evaluations, about 5.0 s each here") for note in problem.notes)


@pytest.mark.parametrize("key, value", [("spdy_search_budget_s", -1.0), ("spdy_evaluations", 0)])
def test_a_search_budget_or_evaluations_out_of_range_is_refused(key, value):
    with pytest.raises(UserError, match=f"prune.{key} must be"):
        PruneConfig(**{key: value})
