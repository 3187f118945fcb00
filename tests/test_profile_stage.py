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
    dense = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    blob = export_bytes(dense, torch.zeros(1, 4))
    (tmp_path / "dense.onnx").write_bytes(blob)
    (tmp_path / "model.onnx").write_bytes(blob)
    return SimpleNamespace(run_dir=tmp_path, config=SimpleNamespace(profile=ProfileConfig(), device="cpu", seed=0),
                           report={}, dense=dense, data=SimpleNamespace(name="test", x_test=torch.zeros(2, 4), y_test=None))


def _script(monkeypatch, speedups: list[float]) -> list[float]:
    pending = list(speedups)
    monkeypatch.setattr(profile_stage.runtime, "compare", lambda *a, **k: _comparison(pending.pop(0)))
    return pending


def test_profile_reports_the_median_of_its_sessions(ctx, monkeypatch):
    ctx.report["prune"] = {"search_speedup": 2.10}
    pending = _script(monkeypatch, [2.14, 2.04, 2.09, 9.0])
    profile_stage.ProfileStage().run(ctx)
    latency = ctx.report["latency"]
    assert latency["comparison"]["speedup"] == 2.09 and pending == [9.0]  # median of 2.14, 2.04, 2.09
    assert [a["speedup"] for a in latency["attempts"]] == [2.14, 2.04, 2.09] and latency["sessions"] == 3
    assert latency["session_speedups"] == [2.14, 2.04, 2.09]


def test_profile_with_one_session_measures_once(ctx, monkeypatch):
    ctx.config.profile = ProfileConfig(sessions=1)
    ctx.report["prune"] = {"search_speedup": 2.10}
    pending = _script(monkeypatch, [2.14, 9.0, 9.0])
    profile_stage.ProfileStage().run(ctx)
    assert ctx.report["latency"]["comparison"]["speedup"] == 2.14 and len(pending) == 2
    assert len(ctx.report["latency"]["attempts"]) == 1


def test_a_median_disagreeing_with_the_search_takes_the_median_of_five(ctx, monkeypatch):
    ctx.report["prune"] = {"search_speedup": 2.10}
    pending = _script(monkeypatch, [2.45, 2.40, 2.12, 2.16, 2.20, 9.0])
    profile_stage.ProfileStage().run(ctx)
    latency = ctx.report["latency"]
    assert latency["comparison"]["speedup"] == 2.20  # median of 2.45, 2.40, 2.12, 2.16, 2.20
    assert [a["speedup"] for a in latency["attempts"]] == [2.45, 2.40, 2.12, 2.16, 2.20]
    assert latency["trusted"] and latency["search_speedup"] == 2.10 and pending == [9.0]
    assert latency["session_speedups"] == [2.45, 2.40, 2.12, 2.16, 2.20]


def test_an_untrusted_first_session_is_not_measured_in_more_sessions(ctx, monkeypatch):
    noisy = runtime.Comparison(*(runtime.summarize([1.0, 1.0, 1.0]),) * 2, 2.0, 1.0, 3.0, 0.02, [2.0] * 3)
    monkeypatch.setattr(profile_stage.runtime, "compare", lambda *a, **k: noisy)
    profile_stage.ProfileStage().run(ctx)
    latency = ctx.report["latency"]
    assert latency["trusted"] is False and latency["sessions"] == 1
    assert len(latency["attempts"]) == 1 + profile_stage.MAX_REPEATS
    assert latency["session_speedups"] == [2.0]  # one session's figure, however many repeats it took


def test_profile_records_how_busy_the_machine_was_and_says_so(ctx, monkeypatch, capsys):
    ctx.report["prune"] = {"search_speedup": 2.10}
    _script(monkeypatch, [2.10, 2.11, 2.09])
    # 2 CPUs over 4 s: the timing used 4 s of CPU, the machine was busy 7.6 s in all
    readings = [profile_stage.host.CpuSnapshot(0.0, 0.0, 0.0, 0.0), profile_stage.host.CpuSnapshot(7.6, 0.0, 4.0, 4.0)]
    monkeypatch.setattr(profile_stage.host, "snapshot", lambda: readings.pop(0))
    monkeypatch.setattr(profile_stage.host.os, "cpu_count", lambda: 2)
    profile_stage.ProfileStage().run(ctx)
    assert ctx.report["latency"]["host_load"] == {"others_busy": 0.9, "steal": 0.0, "cpus": 2, "seconds": 4.0}
    assert "profile: other processes used 90% of the CPU time this measurement left free" in capsys.readouterr().out
