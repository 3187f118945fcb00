"""`deploycompress compare A.onnx B.onnx`: interleaved A/B timing, verdicts, and refusing a verdict."""
from __future__ import annotations

import json

import onnxruntime as ort
import pytest
import torch
from torch import nn

from deploycompress.cli import compare as compare_cli
from conftest import run_cli
from deploycompress.gate import measurement_problem
from deploycompress.latency import runtime
from deploycompress.onnx_export import export_bytes

FEW_ROUNDS = ["--rounds", "5", "--warmup", "2"]


def _net(width: int, in_channels: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A wide and a narrow variant of one network, and one that takes a different input."""
    folder = tmp_path_factory.mktemp("compare")
    torch.manual_seed(0)
    paths = {}
    for name, net, x in [("wide", _net(64), torch.randn(1, 3, 16, 16)), ("narrow", _net(8), torch.randn(1, 3, 16, 16)),
                         ("other", _net(8, 1), torch.randn(1, 1, 16, 16))]:
        paths[name] = folder / f"{name}.onnx"
        paths[name].write_bytes(export_bytes(net, x))
    return paths


def _fake_comparison(speedup: float, ci: tuple[float, float], spread: float) -> runtime.Comparison:
    stats = runtime.LatencyStats(1.0, 1.1, 0.9, 0.05, 5, [1.0] * 5)
    return runtime.Comparison(stats, stats, speedup, ci[0], ci[1], spread, [speedup] * 5)


@pytest.mark.parametrize("speedup, ci, expected", [
    (2.1, (2.0, 2.2), "B is faster than A"),
    (0.8, (0.75, 0.85), "B is slower than A"),
    (1.01, (0.97, 1.05), "no significant difference"),
])
def test_verdict_line_reads_the_ci_against_one(speedup, ci, expected):
    assert expected in compare_cli.verdict_line(speedup, *ci)


def test_measurement_problem_names_each_reason():
    assert measurement_problem(2.0, [1.95, 2.05], 0.05) is None
    assert "95% CI" in measurement_problem(2.0, [1.5, 2.5], 0.05)  # 50% of the median
    assert "spread" in measurement_problem(2.0, [1.95, 2.05], 0.6)
    assert measurement_problem(2.0, [1.5, 2.5], 0.05, max_ci_width=0.6) is None
    assert measurement_problem(None, None, None) is not None
    assert measurement_problem(2.0, None, None) is None  # nothing to judge the figure by


def test_compare_gives_a_verdict_and_writes_json(models, tmp_path, capsys):
    out_json = tmp_path / "cmp.json"
    # Loose limits: this test is about the plumbing, not about how quiet the test machine is.
    code = run_cli(["compare", models["wide"], models["narrow"], *FEW_ROUNDS, "--max-ci-width", "100",
                    "--max-ratio-spread", "100", "--json", out_json])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "verdict:" in out and "95% CI" in out
    data = json.loads(out_json.read_text())
    assert data["trusted"] is True and data["verdict"].startswith("verdict:")
    assert data["comparison"]["speedup"] > 0 and data["comparison"]["rounds"] == 5
    assert data["comparison"]["a"]["median_ms"] > 0 and data["runtime"]["threads"] == 1
    assert len(data["attempts"]) == 1


def test_compare_refuses_a_verdict_after_one_retry_with_more_rounds(models, tmp_path, capsys):
    out_json = tmp_path / "cmp.json"
    # Zero tolerance: no real measurement passes, so the command must retry once and then refuse.
    code = run_cli(["compare", models["wide"], models["narrow"], *FEW_ROUNDS, "--max-ci-width", "0",
                    "--max-ratio-spread", "0", "--json", out_json])
    out = capsys.readouterr().out
    assert code == compare_cli.NO_VERDICT_EXIT == 3
    assert "measuring again with 10 rounds" in out and "no verdict" in out and "verdict: B" not in out
    data = json.loads(out_json.read_text())
    assert data["trusted"] is False and data["verdict"] is None and data["problem"]
    assert [a["rounds"] for a in data["attempts"]] == [5, 10]


def test_compare_accepts_a_clean_retry(models, monkeypatch, capsys):
    calls = []
    results = [_fake_comparison(2.0, (1.0, 3.0), 0.05), _fake_comparison(2.0, (1.97, 2.03), 0.02)]

    def fake_compare(session_a, session_b, feed_a, feed_b=None, rounds=30, warmup=10):
        calls.append(rounds)
        return results[len(calls) - 1]

    monkeypatch.setattr(runtime, "compare", fake_compare)
    assert run_cli(["compare", models["wide"], models["narrow"], "--rounds", "7"]) == 0
    assert calls == [7, 14]
    assert "B is faster than A: speedup 2.00x" in capsys.readouterr().out


def test_compare_rejects_models_with_different_inputs(models, capsys):
    assert run_cli(["compare", models["wide"], models["other"], *FEW_ROUNDS]) == 2
    err = capsys.readouterr().err.strip()
    assert "different inputs" in err and len(err.splitlines()) == 1


def test_compare_missing_model_is_one_line(models, tmp_path, capsys):
    assert run_cli(["compare", models["wide"], tmp_path / "missing.onnx"]) == 2
    assert "model not found" in capsys.readouterr().err


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA EP present")
def test_compare_cuda_without_the_cuda_provider_says_why(models, capsys):
    assert run_cli(["compare", models["wide"], models["narrow"], "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "CUDA execution provider" in err and len(err.splitlines()) == 1
