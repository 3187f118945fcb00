"""How SPDY picks its final plan among those confirmed in the window (allocation/spdy.py choose_plan), and
the short finetune that ranks finalists when a finetune follows (stages/prune.py finetuned_loss_fn)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deploycompress.allocation.spdy import FINALISTS, _level_step, choose_plan
from deploycompress.context import build_context
from deploycompress.graph import GroupGraph
from deploycompress.importance import keep_top
from deploycompress.recipe import build_config
from deploycompress.stages.prune import calibration_loss_fn, finetuned_loss_fn


def _plans(count: int) -> list[tuple[float, float | None, dict[str, int]]]:
    return [(3.1, 1.0, {"a": 8 * (i + 1)}) for i in range(count)]


def test_without_a_finetune_the_lowest_calibration_loss_wins():
    accepted = _plans(4)
    sources = {(("a", w["a"]),): "verify" for _, _, w in accepted}
    calibration = {8: 0.9, 16: 0.3, 24: 0.5, 32: 0.7}
    chosen, criterion, finalists = choose_plan(accepted, sources, lambda w: calibration[w["a"]], None)
    assert chosen[2] == {"a": 16} and criterion == "calibration loss" and finalists == []


def test_with_a_finetune_the_best_dp_plans_and_every_baseline_are_finetuned_and_the_lowest_wins():
    accepted = _plans(6)
    sources = {(("a", w["a"]),): "verify" for _, _, w in accepted}
    sources[(("a", 48),)] = "global"  # a baseline, last by calibration loss
    calibration = {8: 0.1, 16: 0.2, 24: 0.3, 32: 0.4, 40: 0.5, 48: 0.6}
    after_finetune = {8: 0.50, 16: 0.40, 24: 0.45, 32: 0.01, 40: 0.02, 48: 0.30}
    finetuned = []

    def finetuned_loss(widths):
        finetuned.append(widths["a"])
        return after_finetune[widths["a"]]

    chosen, criterion, finalists = choose_plan(accepted, sources, lambda w: calibration[w["a"]], finetuned_loss)
    # The best FINALISTS DP plans by calibration loss, then the baseline; DP plans ranked lower are not
    # finetuned, however well they would have done.
    assert finetuned == [8, 16, 24][:FINALISTS] + [48]
    assert chosen[2] == {"a": 48} and criterion == "finetuned loss"
    assert [f["source"] for f in finalists] == ["verify"] * FINALISTS + ["global"]
    assert finalists[-1]["finetuned_loss"] == 0.30 and finalists[-1]["calibration_loss"] == 0.6


def test_a_plan_accepted_twice_is_finetuned_once_and_a_lone_plan_is_not_finetuned():
    accepted = _plans(2) + _plans(2)
    sources = {(("a", w["a"]),): "calibrate" for _, _, w in accepted}
    calls = []
    choose_plan(accepted, sources, lambda w: w["a"], lambda w: calls.append(w["a"]) or 1.0)
    assert sorted(calls) == [8, 16]
    chosen, criterion, _ = choose_plan(_plans(1), {(("a", 8),): "verify"}, lambda w: 0.0,
                                       lambda w: pytest.fail("one plan needs no ranking"))
    assert chosen[2] == {"a": 8} and criterion == "the only plan in the window"


@pytest.mark.parametrize("width, narrower, expected", [
    (48, True, (2, 3)), (48, False, (2, 1)),   # on the grid: one level either way
    (44, True, (2, 3)), (44, False, (3, 2)),   # between 48 and 40: a whole level, from the far side
    (64, False, (0, None)), (8, True, (7, None)),
])
def test_level_step_handles_widths_between_grid_levels(width, narrower, expected):
    widths = [64, 56, 48, 40, 32, 24, 16, 8]
    assert _level_step(widths, width, narrower) == expected


NET_PY = '''
from torch import nn


def make(num_classes=10):
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )
'''


def _context(tmp_path, monkeypatch, **finetune):
    (tmp_path / "net.py").write_text(NET_PY)
    namespace: dict = {}
    exec(NET_PY, namespace)  # noqa: S102 - our own test model
    torch.manual_seed(0)
    torch.save(namespace["make"](2).state_dict(), tmp_path / "weights.pt")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((192, 3, 8, 8)).astype(np.float32)
    y = (x[:, 0].mean(axis=(1, 2)) > 0).astype(np.int64)  # learnable from the input, so held-out loss can drop
    np.savez(tmp_path / "data.npz", x=x, y=y)
    monkeypatch.setenv("DEPLOYCOMPRESS_CACHE", str(tmp_path / "cache"))
    config = build_config(None, {"model": f"{tmp_path}/net.py:make", "weights": str(tmp_path / "weights.pt"),
                                 "data": str(tmp_path / "data.npz"), "target_speedup": 1.5, "seed": 0,
                                 "out": str(tmp_path / "out"), "prune": {"calibration_samples": 48},
                                 "finetune": {"lr": 1e-2, **finetune}})
    (tmp_path / "out").mkdir()
    return build_context(config, tmp_path / "out")


def test_finetuned_loss_trains_a_copy_of_the_masked_model_and_restores_the_weights(tmp_path, monkeypatch):
    ctx = _context(tmp_path, monkeypatch, epochs=3, select_epochs=4)
    graph = GroupGraph(ctx.model, ctx.example_input)
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    torch.manual_seed(1)
    plan = {g.name: keep_top(torch.rand(g.channels), g.channels // 2) for g in graph.groups}
    untrained = calibration_loss_fn(ctx, graph)(plan)
    finetuned_loss = finetuned_loss_fn(ctx, graph)
    first = finetuned_loss(plan)
    after = ctx.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm buffers restored
    assert not any(isinstance(m, torch.nn.Module) and m._forward_hooks for m in ctx.model.modules())  # unmasked
    assert first < untrained  # it trained, and on samples the short finetune never saw the loss went down
    assert finetuned_loss(plan) == pytest.approx(first, rel=1e-5)  # same weights, same seed: same figure


@pytest.mark.parametrize("finetune", [{"epochs": 0}, {"epochs": 3, "select_epochs": 0}])
def test_no_finetune_ahead_means_finalists_are_ranked_by_calibration_loss(tmp_path, monkeypatch, finetune):
    ctx = _context(tmp_path, monkeypatch, **finetune)
    assert finetuned_loss_fn(ctx, GroupGraph(ctx.model, ctx.example_input)) is None
