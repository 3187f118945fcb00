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
from deploycompress.stages.prune import (FINALIST_LOSS_WEIGHT, _loss_objective, calibration_loss_fn, finalist_epochs,
                                        finalist_samples, finetuned_loss_fn, per_original)


def _plans(count: int) -> list[tuple[float, float | None, dict[str, int]]]:
    return [(3.1, 1.0, {"a": 8 * (i + 1)}) for i in range(count)]


def test_without_a_finetune_the_lowest_calibration_loss_wins():
    accepted = _plans(4)
    sources = {(("a", w["a"]),): "verify" for _, _, w in accepted}
    calibration = {8: 0.9, 16: 0.3, 24: 0.5, 32: 0.7}
    chosen, criterion, finalists = choose_plan(accepted, sources, lambda w: calibration[w["a"]], None)
    assert chosen[2] == {"a": 16} and criterion == "calibration loss" and finalists == []


def _per_sample(mean: float, seed: int, spread: float = 0.2, count: int = 256) -> np.ndarray:
    return mean + spread * np.random.default_rng(seed).standard_normal(count)


def test_with_a_finetune_the_best_dp_plans_and_every_baseline_are_finetuned_and_a_clear_winner_is_chosen():
    accepted = _plans(6)
    sources = {(("a", w["a"]),): "verify" for _, _, w in accepted}
    sources[(("a", 48),)] = "global"  # a baseline, last by calibration loss
    calibration = {8: 0.1, 16: 0.2, 24: 0.3, 32: 0.4, 40: 0.5, 48: 0.6}
    noise = _per_sample(0.0, seed=0)  # shared by every plan: the same held-out samples are hard for all
    after_finetune = {8: 0.50, 16: 0.40, 24: 0.45, 32: 0.01, 40: 0.02, 48: 0.30}
    finetuned = []

    def finetuned_loss(widths, repeat):
        finetuned.append(widths["a"])
        return after_finetune[widths["a"]] + noise + _per_sample(0.0, seed=widths["a"], spread=0.05)

    chosen, criterion, finalists = choose_plan(accepted, sources, lambda w: calibration[w["a"]], finetuned_loss)
    # The best FINALISTS DP plans by calibration loss, then the baseline; DP plans ranked lower are not
    # finetuned, however well they would have done.
    assert finetuned == [8, 16, 24][:FINALISTS] + [48]
    assert chosen[2] == {"a": 48} and criterion.startswith("finetuned loss (lower than the calibration choice's by")
    assert [f["source"] for f in finalists] == ["verify"] * FINALISTS + ["global"]
    assert [f["chosen"] for f in finalists] == [False] * FINALISTS + [True]
    assert finalists[-1]["calibration_loss"] == 0.6
    assert finalists[-1]["gain_over_first"] == pytest.approx(0.20, abs=0.02)
    assert finalists[-1]["gain_over_first"] > 2 * finalists[-1]["gain_standard_error"] > 0


def test_the_lowest_finetuned_loss_wins_even_within_noise_and_the_report_says_how_clear_it_was():
    accepted = _plans(2)
    sources = {(("a", 8),): "verify", (("a", 16),): "uniform"}
    calibration = {8: 0.1, 16: 0.2}
    # uniform's plan is lower on average, but by far less than the per-sample scatter of the difference
    first = np.tile([0.1, 0.0], 128)  # mean 0.05
    gain = np.tile([0.2, -0.19], 128)  # mean 0.005, standard error about 0.012
    after_finetune = {8: first, 16: first - gain}
    chosen, criterion, finalists = choose_plan(accepted, sources, lambda w: calibration[w["a"]],
                                               lambda w, repeat: after_finetune[w["a"]])
    assert finalists[1]["finetuned_loss"] < finalists[0]["finetuned_loss"]
    assert chosen[2] == {"a": 16} and criterion.startswith("finetuned loss (lower than the calibration choice's by 0.")
    assert [f["chosen"] for f in finalists] == [False, True]
    assert finalists[1]["gain_over_first"] < 2 * finalists[1]["gain_standard_error"]


def test_the_calibration_choice_stays_when_it_is_also_lowest_after_the_short_finetune():
    accepted = _plans(3)
    sources = {(("a", w["a"]),): "verify" for _, _, w in accepted}
    calibration = {8: 0.1, 16: 0.2, 24: 0.3}
    chosen, criterion, finalists = choose_plan(accepted, sources, lambda w: calibration[w["a"]],
                                               lambda w, repeat: _per_sample(calibration[w["a"]], seed=w["a"]))
    assert chosen[2] == {"a": 8} and criterion.startswith("calibration loss and finetuned loss")
    assert [f["chosen"] for f in finalists] == [True, False, False]


def _seeded_finalists():
    """Three DP plans whose finetunes differ by seed: plan 16 is luckiest with the first seed, plan 24 is
    the better one on average over seeds, plan 8 is clearly behind with every seed."""
    accepted = _plans(3)
    sources = {(("a", w["a"]),): "verify" for _, _, w in accepted}
    calibration = {8: 0.1, 16: 0.2, 24: 0.3}
    per_seed = {8: [0.60, 0.60, 0.60], 16: [0.20, 0.34, 0.36], 24: [0.21, 0.22, 0.23]}
    # the same held-out samples are hard for every plan (mean exactly 0)
    scatter = np.random.default_rng(0).permutation(np.tile([0.3, -0.3], 128))
    calls = []

    def finetuned_loss(widths, repeat):
        calls.append((widths["a"], repeat))
        # per-sample scatter of this finetune with mean exactly 0, so the plan's mean is per_seed's figure
        own = np.random.default_rng(100 * widths["a"] + repeat).permutation(np.tile([0.1, -0.1], 128))
        return per_seed[widths["a"]][repeat] + scatter + own

    return accepted, sources, (lambda w: calibration[w["a"]]), finetuned_loss, calls


def test_finalists_close_after_one_finetune_are_finetuned_again_and_ranked_on_the_mean():
    accepted, sources, calibration_loss, finetuned_loss, calls = _seeded_finalists()
    chosen, criterion, finalists = choose_plan(accepted, sources, calibration_loss, finetuned_loss, repeats=3)
    # every finalist once with the run's own seed; then only the two contenders, with two more seeds each
    assert calls[:3] == [(8, 0), (16, 0), (24, 0)]
    assert sorted(calls[3:]) == [(16, 1), (16, 2), (24, 1), (24, 2)]
    assert chosen[2] == {"a": 24} and "the mean of 3 finetunes" in criterion
    assert [f["finetunes"] for f in finalists] == [1, 3, 3]
    assert [f["chosen"] for f in finalists] == [False, False, True]
    assert finalists[1]["finetuned_loss"] == pytest.approx(0.30, abs=1e-9)  # the mean over its three finetunes


def test_one_finetune_each_picks_the_luckiest_seed():
    accepted, sources, calibration_loss, finetuned_loss, calls = _seeded_finalists()
    chosen, _, finalists = choose_plan(accepted, sources, calibration_loss, finetuned_loss, repeats=1)
    assert calls == [(8, 0), (16, 0), (24, 0)]
    assert chosen[2] == {"a": 16} and [f["finetunes"] for f in finalists] == [1, 1, 1]


def test_a_clear_winner_after_one_finetune_is_not_finetuned_again():
    accepted = _plans(2)
    sources = {(("a", w["a"]),): "verify" for _, _, w in accepted}
    calls = []

    def finetuned_loss(widths, repeat):
        calls.append((widths["a"], repeat))
        return _per_sample({8: 0.9, 16: 0.1}[widths["a"]], seed=widths["a"], spread=0.05)

    chosen, _, finalists = choose_plan(accepted, sources, lambda w: w["a"], finetuned_loss, repeats=3)
    assert calls == [(8, 0), (16, 0)] and chosen[2] == {"a": 16}


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


def _context(tmp_path, monkeypatch, validation: int = 0, **finetune):
    """A small labelled run; `validation`: that many extra samples as the data's validation split."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "net.py").write_text(NET_PY)
    namespace: dict = {}
    exec(NET_PY, namespace)  # noqa: S102 - our own test model
    torch.manual_seed(0)
    torch.save(namespace["make"](2).state_dict(), tmp_path / "weights.pt")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((192 + validation, 3, 8, 8)).astype(np.float32)
    y = (x[:, 0].mean(axis=(1, 2)) > 0).astype(np.int64)  # learnable from the input, so held-out loss can drop
    extra = {"x_val": x[192:], "y_val": y[192:]} if validation else {}
    np.savez(tmp_path / "data.npz", x=x[:192], y=y[:192], **extra)
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
    assert first.shape == (48,)  # one score per calibration sample
    errors = np.floor(first)  # 1 per misclassified sample, plus FINALIST_LOSS_WEIGHT x its cross-entropy
    assert set(np.unique(errors)) <= {0.0, 1.0}
    cross_entropy = (first - errors) / FINALIST_LOSS_WEIGHT
    assert cross_entropy.mean() < untrained  # it trained, and on samples the finetune never saw the loss went down
    assert np.allclose(finetuned_loss(plan), first, rtol=1e-5)  # same weights, same seed: same figures
    assert np.allclose(finetuned_loss(plan, 0), first, rtol=1e-5)  # repeat 0 is the run's own seed
    assert not np.allclose(finetuned_loss(plan, 1), first, rtol=1e-5)  # a repeat finetunes with another seed


def test_finalists_are_ranked_on_the_validation_split_and_finetuned_on_all_the_training_data(tmp_path, monkeypatch):
    ctx = _context(tmp_path, monkeypatch, validation=40, epochs=3, select_epochs=1)
    x, labels, train_on, groups, described = finalist_samples(ctx)
    assert torch.equal(x, ctx.data.x_val) and torch.equal(labels, ctx.data.y_val) and groups is None
    assert train_on is ctx.data and "validation split (40 samples" in described
    graph = GroupGraph(ctx.model, ctx.example_input)
    plan = {g.name: keep_top(torch.rand(g.channels), g.channels // 2) for g in graph.groups}
    assert finetuned_loss_fn(ctx, graph)(plan).shape == (40,)


def test_per_original_scores_average_each_originals_copies_and_keep_the_mean():
    scores = np.array([1.0, 0.0, 1.0, 0.0, 0.5, 0.0])
    groups = torch.tensor([0, 1, 2, 0, 1, 2])
    assert np.allclose(per_original(scores, groups), [0.5, 0.25, 0.5])
    assert per_original(scores, groups).mean() == pytest.approx(scores.mean())
    assert per_original(scores, None) is scores


def test_finalists_on_a_split_of_copies_are_scored_per_original(tmp_path, monkeypatch):
    """With `val_groups` the finetuned loss has one entry per original, the mean of its copies' scores,
    so choose_plan's standard errors are over originals (copies of one are scored alike more often)."""
    ctx = _context(tmp_path, monkeypatch, validation=40, epochs=3, select_epochs=1)
    graph = GroupGraph(ctx.model, ctx.example_input)
    torch.manual_seed(2)
    plan = {g.name: keep_top(torch.rand(g.channels), g.channels // 2) for g in graph.groups}
    per_copy = finetuned_loss_fn(ctx, graph)(plan)
    ctx.data.val_groups = torch.arange(20).repeat(2)  # 20 originals, each validated twice
    per_digit = finetuned_loss_fn(ctx, graph)(plan)
    assert per_copy.shape == (40,) and per_digit.shape == (20,)
    assert np.allclose(per_digit, (per_copy[:20] + per_copy[20:]) / 2, rtol=1e-5)  # same seed: same finetune
    samples = finalist_samples(ctx)
    assert samples.groups is ctx.data.val_groups
    assert "(40 samples of 20 originals, scored per original" in samples.description


def test_finalists_finetune_as_long_as_the_finetune_unless_told(tmp_path, monkeypatch):
    assert finalist_epochs(_context(tmp_path / "a", monkeypatch, epochs=3)) == 3
    assert finalist_epochs(_context(tmp_path / "b", monkeypatch, epochs=3, select_epochs=1.5)) == 1.5


def test_the_finalist_score_counts_errors_first_and_breaks_ties_by_loss(tmp_path, monkeypatch):
    ctx = _context(tmp_path, monkeypatch, epochs=3)
    labels = torch.tensor([0, 0])
    objective = _loss_objective(ctx, torch.zeros(2, 3, 8, 8), labels, loss_weight=FINALIST_LOSS_WEIGHT, error_weight=1.0)

    def score(logits: list[list[float]]) -> float:
        return float(objective(torch.tensor(logits)).mean())

    confident_but_wrong_once = score([[9.0, 0.0], [0.0, 0.1]])  # mean cross-entropy 0.37, one error
    right_but_unsure = score([[0.1, 0.0], [0.1, 0.0]])  # mean cross-entropy 0.64, no error
    assert right_but_unsure < confident_but_wrong_once
    assert score([[2.0, 0.0], [2.0, 0.0]]) < right_but_unsure  # no errors either way: the lower loss wins


def test_without_a_validation_split_finalists_are_ranked_on_calibration_samples_left_out_of_their_finetune(
        tmp_path, monkeypatch):
    ctx = _context(tmp_path, monkeypatch, epochs=3)
    x, labels, train_on, groups, described = finalist_samples(ctx)
    assert torch.equal(x, ctx.calibration) and torch.equal(labels, ctx.data.y_train[:48]) and groups is None
    assert torch.equal(train_on.x_train, ctx.data.x_train[48:]) and "may have trained on them" in described


@pytest.mark.parametrize("finetune", [{"epochs": 0}, {"epochs": 3, "select_epochs": 0}])
def test_no_finetune_ahead_means_finalists_are_ranked_by_calibration_loss(tmp_path, monkeypatch, finetune):
    ctx = _context(tmp_path, monkeypatch, **finetune)
    assert finetuned_loss_fn(ctx, GroupGraph(ctx.model, ctx.example_input)) is None


def test_the_report_says_how_the_plan_was_chosen():
    from deploycompress.report import _choice_lines

    details = {"chosen_by": "finetuned loss", "accepted_in_window": 3, "chosen_source": "calibrate",
               "finalists": [{"source": "global", "measured_speedup": 3.16, "calibration_loss": 2.37,
                              "finetuned_loss": 1.50, "gain_over_first": 0.0, "gain_standard_error": 0.0,
                              "chosen": False},
                             {"source": "calibrate", "measured_speedup": 3.13, "calibration_loss": 2.71,
                              "finetuned_loss": 1.00, "gain_over_first": 0.5, "gain_standard_error": 0.06,
                              "finetunes": 3, "chosen": True}]}
    text = "\n".join(_choice_lines({"search": {"details": details}}))
    assert "Chosen by finetuned loss from 3 plan(s)" in text and "`calibrate`" in text
    assert "| global | 3.16x | 2.3700 | 1.5000 | 1 | +0.0000 (0.0000) |  |" in text  # a report from before repeats
    assert "| calibrate | 3.13x | 2.7100 | 1.0000 | 3 | +0.5000 (0.0600) | yes |" in text
    assert _choice_lines({"search": {"details": {}}}) == []  # policies without a choice to explain
