"""The research methods as pipeline parts: each selected by name, run end to end on the built-in
default model, and meeting the measured target. Small settings keep the file to a few minutes; the
method internals have their own worked-example tests (test_research_*.py)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import assert_meets_target
from deploycompress.allocation import AllocationProblem, policies
from deploycompress.allocation.base import Measurement
from deploycompress.allocation.sap import turning_round
from deploycompress.criteria.dcp import chunked_greedy
from deploycompress.criteria.ispasp import selection_scores
from deploycompress.errors import UserError
from deploycompress.graph import GroupGraph
from deploycompress.importance import criteria
from deploycompress.pipeline import run_pipeline
from deploycompress.recipe import FinetuneConfig, ProfileConfig, PruneConfig, RunConfig
from deploycompress.regularizers import regularizers
from deploycompress.research.dcp import dcp_greedy_input_channels
from deploycompress.research.ispasp import ispasp_select


def _run(tmp_path, policy="uniform", importance="l2", regularizer=None, epochs=0, **finetune) -> dict:
    config = RunConfig(
        out=str(tmp_path / f"{policy}-{importance}-{regularizer}"),
        # reuse_measurements off: every run measures its own candidates (a shared cache written by
        # concurrent runs on a busy machine can hold outliers)
        prune=PruneConfig(policy=policy, importance=importance, search_rounds=5, calibration_samples=128,
                          reuse_measurements=False),
        finetune=FinetuneConfig(epochs=epochs, regularizer=regularizer, **finetune),
        profile=ProfileConfig(rounds=10, warmup=5))
    return run_pipeline(config)


def _assert_meets_target(report: dict) -> None:
    assert_meets_target(report)
    assert report["accuracy"]["compressed"] is not None


# -- fast checks of the adapters ----------------------------------------------------------------------


def test_research_methods_are_registered_by_name():
    for name in ("ispasp", "dcp", "synaptic_strength", "dsm"):
        assert name in criteria.names()
    assert "sap" in policies.names()
    assert set(regularizers.names()) >= {"dsm", "synaptic_strength"}
    with pytest.raises(UserError, match="unknown regularizer"):
        regularizers.get("dsn")


def test_chunked_dcp_with_chunk_one_is_the_reference_greedy():
    torch.manual_seed(0)
    x = torch.randn(8, 6, 5, 5)
    weight = torch.randn(4, 6, 3, 3)
    kwargs = {"stride": 1, "padding": 1, "dilation": 1, "groups": 1}
    reference = dcp_greedy_input_channels(x, weight, 6, conv_kwargs=kwargs)
    assert chunked_greedy(x, weight, 1, conv_kwargs=kwargs) == reference
    chunked = chunked_greedy(x, weight, 3, conv_kwargs=kwargs)
    assert sorted(chunked) == list(range(6)) and chunked[0] == reference[0]


def test_ispasp_scores_rank_the_selected_set_first():
    torch.manual_seed(0)
    hidden = torch.relu(torch.randn(16, 12, 4, 4))
    consumer = nn.Conv2d(12, 5, 3, padding=1)
    scores = selection_scores(hidden, consumer, multiple=4)
    with torch.enable_grad():
        selected = ispasp_select(hidden, consumer, 4)
    top4 = sorted(torch.argsort(scores, descending=True)[:4].tolist())
    assert top4 == selected
    assert (scores[selected] >= 1).all() and (scores.sort(descending=True).values[8:] < 1).all()


def test_turning_round_finds_where_pqi_rises_after_falling():
    rows = [{"round": i + 1, "pqi_mean": v} for i, v in enumerate([0.3, 0.2, 0.1, 0.15, 0.05])]
    assert turning_round(rows) == 4
    assert turning_round([{"round": 1, "pqi_mean": 0.1}, {"round": 2, "pqi_mean": 0.05}]) is None
    assert turning_round([{"round": 1, "pqi_mean": 0.05}, {"round": 2, "pqi_mean": 0.1}]) is None  # never fell


class _WidthMeter:
    """Speedup = dense channels / kept channels: a stand-in for ONNX Runtime in a unit test."""

    def __init__(self, total: int):
        self.total, self.history = total, []

    def measure(self, plan):
        widths = {n: len(k) for n, k in plan.items()}
        m = Measurement(widths, self.total / sum(widths.values()), 1.0, 0.0)
        self.history.append(m)
        return m


def test_sap_meets_target_without_overshooting_and_finetunes_between_rounds():
    model = nn.Sequential(nn.Conv2d(1, 32, 3), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 64, 3),
                          nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, 10, 1))
    graph = GroupGraph(model, torch.zeros(1, 1, 8, 8))
    torch.manual_seed(0)
    scores = {g.name: torch.rand(g.channels) ** 3 for g in graph.groups}  # skewed: a clear PQI
    total = sum(g.channels for g in graph.groups)
    rounds = []

    def finetune_round(plan):
        rounds.append(plan)
        return scores

    problem = AllocationProblem(graph, scores, 2.0, 0.10, 4, _WidthMeter(total), lambda plan: 0.0, 0,
                                finetune_round=finetune_round)
    result = policies.get("sap")().allocate(problem)
    assert 2.0 * 1.03 <= result.measured_speedup <= 2.0 * 1.10 + 1e-9
    assert all(len(kept) % 4 == 0 for kept in result.plan.values())
    trajectory = result.details["pqi_trajectory"]
    assert len(rounds) == len(trajectory) - 2  # finetuned after every round but the last
    assert trajectory[-1]["round"] == "final" and trajectory[0]["pqi_mean"] > 0


# -- end to end on the built-in default ---------------------------------------------------------------


def test_sap_policy_reaches_target_and_reports_pqi(tmp_path):
    report = _run(tmp_path, policy="sap", round_epochs=0.1)
    _assert_meets_target(report)
    assert all(layer["pqi_before"] is not None and layer["pqi_after"] is not None for layer in report["layers"])
    details = report["search"]["details"]
    assert len(details["pqi_trajectory"]) >= 2 and "pqi_turns_upward_at_round" in details
    markdown = (tmp_path / "sap-l2-None" / "report.md").read_text()
    assert "## PQ Index per round" in markdown and "## Compressibility (PQ Index)" in markdown


def test_ispasp_criterion(tmp_path):
    report = _run(tmp_path, importance="ispasp")
    _assert_meets_target(report)
    # the residual-stage groups have no single consumer: one note, naming them
    fallbacks = [n for n in report["notes"] if n.startswith("ispasp:")]
    assert len(fallbacks) == 1 and "stem.0" in fallbacks[0]


def test_dcp_criterion(tmp_path):
    report = _run(tmp_path, importance="dcp")
    _assert_meets_target(report)
    assert report["importance"] == "dcp"


def test_synaptic_strength_with_its_regularised_phase(tmp_path):
    report = _run(tmp_path, importance="synaptic_strength", regularizer="synaptic_strength",
                  regularize_epochs=0.1)
    _assert_meets_target(report)
    assert report["config"]["finetune"]["regularizer"] == "synaptic_strength"


def test_dsm_scores_and_penalty_in_finetuning(tmp_path):
    report = _run(tmp_path, importance="dsm", regularizer="dsm", epochs=1, regularize_epochs=0.1)
    _assert_meets_target(report)
    assert report["finetune"]["regularizer"] == "dsm" and len(report["finetune"]["losses"]) == 1
    # the prior's Dirichlet term (1 - alpha) * sum log phi is negative and dwarfs the data loss, so a loss
    # below zero shows the penalty really is in the finetuning loss
    assert report["finetune"]["losses"][0] < 0
    saved = json.loads((tmp_path / "uniform-dsm-dsm" / "plan.json").read_text())
    assert saved["prune"]["importance"] == "dsm"
