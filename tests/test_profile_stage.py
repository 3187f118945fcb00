"""The profile stage's verdict logic against scripted measurements (real timing lives in benchmarks/)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from deploycompress.latency import runtime
from deploycompress.onnx_export import export_bytes
from deploycompress.recipe import ProfileConfig
from deploycompress.stages import profile as profile_stage


def _comparison(speedup: float) -> runtime.Comparison:
    stats = runtime.summarize([1.0, 1.0, 1.0])
    return runtime.Comparison(stats, stats, speedup, speedup * 0.99, speedup * 1.01, 0.02, [speedup] * 3)


@pytest.fixture()
def ctx(tmp_path):
    torch.manual_seed(0)
    blob = export_bytes(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval(), torch.zeros(1, 4))
    (tmp_path / "dense.onnx").write_bytes(blob)
    (tmp_path / "model.onnx").write_bytes(blob)
    return SimpleNamespace(run_dir=tmp_path, config=SimpleNamespace(profile=ProfileConfig(), device="cpu", seed=0),
                           report={}, data=SimpleNamespace(x_test=torch.zeros(2, 4), y_test=None))


def _script(monkeypatch, speedups: list[float]) -> list[float]:
    pending = list(speedups)
    monkeypatch.setattr(profile_stage.runtime, "compare", lambda *a, **k: _comparison(pending.pop(0)))
    return pending


def test_profile_agreeing_with_the_search_measures_once(ctx, monkeypatch):
    ctx.report["prune"] = {"search_speedup": 2.10}
    pending = _script(monkeypatch, [2.14, 9.0, 9.0])
    profile_stage.ProfileStage().run(ctx)
    assert ctx.report["latency"]["comparison"]["speedup"] == 2.14 and len(pending) == 2
    assert len(ctx.report["latency"]["attempts"]) == 1


def test_profile_disagreeing_with_the_search_takes_the_median_of_three_fresh_measurements(ctx, monkeypatch):
    ctx.report["prune"] = {"search_speedup": 2.10}
    pending = _script(monkeypatch, [2.45, 2.12, 2.16, 9.0])
    profile_stage.ProfileStage().run(ctx)
    latency = ctx.report["latency"]
    assert latency["comparison"]["speedup"] == 2.16  # median of 2.45, 2.12, 2.16
    assert [a["speedup"] for a in latency["attempts"]] == [2.45, 2.12, 2.16]
    assert latency["trusted"] and latency["search_speedup"] == 2.10 and pending == [9.0]
