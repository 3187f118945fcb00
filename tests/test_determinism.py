"""Determinism and noisy clocks.

- The same inputs and seed give the same allocation: two prune stages of the default policy (SPDY, whose
  coefficient search is random) over the same dense model choose the same plan. Whole-model
  measurements are cached on disk (allocation/base.py SpeedupMeter), so the second run reads the
  figures the first one measured instead of re-timing a noisy clock.
- A latency figure carries its spread, a noisy one is measured again, and one still too noisy is
  reported untrusted, never a pass: the profile stage over a fake runtime.compare, then
  `deploycompress check` on the report it leads to.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from deploycompress.cli import main
from deploycompress.context import build_context
from deploycompress.data import DataBundle
from deploycompress.fileio import write_json
from deploycompress.latency import runtime
from deploycompress.recipe import build_config
from deploycompress.report import build_report
from deploycompress.stages import profile as profile_stage
from deploycompress.stages.profile import MAX_REPEATS, ProfileStage
from deploycompress.stages.prune import PruneStage

NET_PY = '''
from torch import nn


def make(num_classes=10):
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, num_classes),
    )
'''


@pytest.fixture
def user_files(tmp_path, monkeypatch) -> dict:
    (tmp_path / "net.py").write_text(NET_PY)
    namespace: dict = {}
    exec(NET_PY, namespace)  # noqa: S102 - our own test model
    torch.manual_seed(0)
    torch.save(namespace["make"]().state_dict(), tmp_path / "weights.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((160, 3, 16, 16)).astype(np.float32),
             y=rng.integers(0, 10, 160))
    monkeypatch.setenv("DEPLOYCOMPRESS_CACHE", str(tmp_path / "cache"))  # fresh: the first run measures
    return {"model": f"{tmp_path}/net.py:make", "weights": str(tmp_path / "weights.pt"),
            "data": str(tmp_path / "data.npz")}


def prune_once(files: dict, out: Path, seed: int) -> tuple[dict, dict]:
    config = build_config(None, {**files, "target_speedup": 1.4, "seed": seed, "out": str(out),
                                 "prune": {"policy": "spdy", "search_rounds": 5, "spdy_evaluations": 8,
                                           "calibration_samples": 64, "measurement_drift_limit": 10.0}})
    out.mkdir()
    ctx = build_context(config, out)
    PruneStage().run(ctx)
    saved = json.loads((out / "plan.json").read_text())
    return saved["plan"], saved["prune"]


def test_same_inputs_and_seed_give_the_same_allocation(user_files, tmp_path):
    # The cache is what makes the second run read the first run's figures; on a busy machine the dense
    # model's latency can move more than the drift limit between two runs, which would set it aside
    # (tested in test_allocation.py), so prune_once lifts the limit.
    first, info = prune_once(user_files, tmp_path / "first", seed=7)
    second, again = prune_once(user_files, tmp_path / "second", seed=7)
    assert second == first
    # The same plans measured in the same order, with the same figures: every measurement the first run
    # decided on is persisted, noisy or not, so the second run reads it instead of timing it again.
    assert [c["widths"] for c in again["candidates"]] == [c["widths"] for c in info["candidates"]]
    assert [c["speedup"] for c in again["candidates"]] == [c["speedup"] for c in info["candidates"]]
    assert again["details"]["coefficients"] == info["details"]["coefficients"]
    # ... and a real plan, pruned to the target, not the dense model
    assert any(len(first[layer["name"]]) < layer["channels_before"] for layer in info["layers"])
    assert info["search_speedup"] >= 1.4
    # no recipe set a channel multiple: the runtime's own block was read and every width is on it
    assert info["channel_multiple"] == runtime.channel_block() and "runtime" in info["channel_multiple_source"]
    assert all(len(kept) % info["channel_multiple"] == 0 for kept in first.values())


# --- noisy clocks -------------------------------------------------------------------------------


def comparison(speedup: float, ci: tuple[float, float], ratio_spread: float = 0.03) -> runtime.Comparison:
    dense = runtime.LatencyStats(2.0, 2.1, 1.9, 0.05, 5)
    compressed = runtime.LatencyStats(2.0 / speedup, 2.1 / speedup, 1.9 / speedup, 0.05, 5)
    return runtime.Comparison(dense, compressed, speedup, ci[0], ci[1], ratio_spread, [speedup] * 5)


def profile_with(monkeypatch, tmp_path: Path, results: list[runtime.Comparison], target: float = 2.0,
                 sessions: int = 1):
    """ProfileStage.run over a fake runtime whose compare() returns `results` in turn."""
    calls: list[int] = []

    def fake_compare(dense, compressed, feed, rounds=30, warmup=10):
        calls.append(rounds)
        return results[min(len(calls), len(results)) - 1]

    monkeypatch.setattr(runtime, "make_session", lambda *args, **kwargs: object())
    monkeypatch.setattr(runtime, "random_feed", lambda *args, **kwargs: {})
    monkeypatch.setattr(runtime, "compare", fake_compare)
    # the fake sessions run nothing: the models' outputs on the test split are zeros
    monkeypatch.setattr(profile_stage, "onnx_outputs", lambda session, x: np.zeros((len(x), 10), np.float32))
    config = build_config(None, {"target_speedup": target, "profile": {"rounds": 5, "sessions": sessions}})
    x = torch.zeros(4, 1, 16, 16)
    ctx = SimpleNamespace(config=config, run_dir=tmp_path, report={}, resolves=[], dense=torch.nn.Identity(),
                          data=DataBundle("digits", x, None, x, None, None))
    ProfileStage().run(ctx)
    report = build_report(ctx, [{"name": "profile", "seconds": 1.0, "resumed": False}], 1.0)
    path = write_json(tmp_path / "report.json", report)
    return report, calls, path


def check_exit(args: list) -> int:
    try:
        main(["check", *[str(a) for a in args]])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_a_measurement_too_noisy_after_repeats_is_untrusted_never_a_pass(monkeypatch, tmp_path, capsys):
    report, calls, path = profile_with(monkeypatch, tmp_path, [comparison(2.4, (1.6, 3.3))])
    assert calls == [5, 10, 20][: 1 + MAX_REPEATS]  # measured again, with twice the rounds each time
    assert report["target_met"] is None  # 2.4x measured, but the clock could not be trusted
    speedup = report["speedup"]
    assert speedup["trusted"] is False and speedup["ci95"] == [1.6, 3.3] and speedup["ratio_spread"] == 0.03
    assert [a["rounds"] for a in speedup["attempts"]] == calls
    capsys.readouterr()
    assert check_exit([path]) == 1
    assert check_exit([path, "--min-speedup", "2.0"]) == 1  # an explicit bar does not make it a pass
    out = capsys.readouterr().out
    assert "FAIL speedup measurement is marked untrusted" in out


def test_a_wide_spread_of_rounds_is_untrusted_like_check_says(monkeypatch, tmp_path, capsys):
    """A narrow interval over rounds that disagree (per-round ratio spread 40%) is no verdict either."""
    report, calls, path = profile_with(monkeypatch, tmp_path, [comparison(2.4, (2.35, 2.45), ratio_spread=0.4)])
    assert len(calls) == 1 + MAX_REPEATS and report["target_met"] is None and report["speedup"]["trusted"] is False
    assert check_exit([path]) == 1


def test_a_noisy_first_measurement_is_repeated_and_the_second_stands(monkeypatch, tmp_path, capsys):
    report, calls, path = profile_with(monkeypatch, tmp_path, [comparison(2.6, (1.5, 3.5)),
                                                              comparison(2.3, (2.25, 2.36))])
    assert calls == [5, 10]
    assert report["speedup"]["trusted"] is True and report["speedup"]["measured"] == 2.3
    assert report["target_met"] is True and len(report["speedup"]["attempts"]) == 2
    assert check_exit([path]) == 0


def test_a_speedup_above_the_allowance_is_met_and_says_it_overshot(monkeypatch, tmp_path):
    from deploycompress.report import verdict

    over, _, _ = profile_with(monkeypatch, tmp_path, [comparison(2.5, (2.45, 2.55))])
    assert over["target_met"] is True and over["speedup"]["within_allowed"] is False
    assert over["speedup"]["allowed"] == pytest.approx([2.0, 2.2])
    assert "MET, but above the allowed 2.20x" in verdict(over)
    inside, _, _ = profile_with(monkeypatch, tmp_path, [comparison(2.1, (2.05, 2.15))])
    assert inside["speedup"]["within_allowed"] is True and "above the allowed" not in verdict(inside)


def test_an_overshoot_says_why_and_which_setting_offers_the_widths_between(monkeypatch, tmp_path):
    from deploycompress.report import _coarse_widths_text

    over, _, _ = profile_with(monkeypatch, tmp_path, [comparison(3.4, (3.35, 3.45))])
    over.update(target_speedup=2.0, channel_multiple=16, channel_multiple_source="prune.channel_multiple")
    line = _coarse_widths_text(over)
    assert "landed in [2x, 2.20x]" in line and "steps of 16 channels" in line and "channel_multiple = 8" in line
    over["channel_multiple_source"] = "the runtime's channel block"  # finer widths run at the block's speed
    over["search"] = {"candidates": [{"speedup": 1.84}, {"speedup": 3.42}]}
    line = _coarse_widths_text(over)
    assert "blocks of 16" in line and "channel_multiple =" not in line
    over["search"]["candidates"].append({"speedup": 2.12})  # the search measured one inside: no such claim
    assert _coarse_widths_text(over) is None
    del over["search"]
    over["channel_multiple"] = 1  # nothing finer to offer
    assert _coarse_widths_text(over) is None
    inside, _, _ = profile_with(monkeypatch, tmp_path, [comparison(2.1, (2.05, 2.15))])
    inside.update(target_speedup=2.0, channel_multiple=16, channel_multiple_source="prune.channel_multiple")
    assert _coarse_widths_text(inside) is None


def test_the_summary_gives_the_session_pairs_range_beside_the_median_pairs_ci(monkeypatch, tmp_path):
    from deploycompress.report import measured_text

    results = [comparison(2.14, (2.12, 2.16)), comparison(2.04, (2.03, 2.05)), comparison(2.09, (2.08, 2.10))]
    report, _, _ = profile_with(monkeypatch, tmp_path, results, sessions=3)
    assert report["speedup"]["measured"] == 2.09 and report["speedup"]["session_range"] == [2.04, 2.14]
    assert measured_text(report["speedup"]) == "measured 2.09x (95% CI 2.08-2.10; 3 session pairs 2.04-2.14)"
    single, _, _ = profile_with(monkeypatch, tmp_path, results[:1], sessions=1)
    assert single["speedup"]["session_range"] is None
    assert measured_text(single["speedup"]) == "measured 2.14x (95% CI 2.12-2.16)"


def test_a_data_free_run_says_its_figures_are_on_random_inputs():
    """A trained resnet_digits compressed to 2x data-free kept 44.8% of the digits test split right, and
    with unlabelled real samples 97.8% (README): the summary says so where the run had no data."""
    from deploycompress.report import summary_lines

    report = {"target_speedup": 2.0, "target_met": True, "device": "cpu", "threads": 1, "batch_size": 1,
              "speedup": {"measured": 2.1, "ci95": [2.05, 2.15], "predicted": 2.1, "macs_ratio": 2.3},
              "latency_ms": {"dense": 1.0, "compressed": 0.48}, "accuracy": {"dense": None, "compressed": None},
              "params": {"dense": 10, "compressed": 5}, "macs": {"dense": 10, "compressed": 4},
              "onnx": {"max_abs_diff": 1e-6, "opset": 17}, "policy": "spdy", "importance": "l2",
              "search": {"candidates": []}, "data": "digits"}
    assert not any(line.startswith("data") for line in summary_lines(report))
    report["data"] = "random"
    (line,) = [line for line in summary_lines(report) if line.startswith("data")]
    assert "chosen (and BatchNorms re-estimated) on random inputs" in line and "--data with x alone" in line
