"""Shared fixtures. One intra-op thread everywhere (see MEASURING.md); runs write to tmp dirs."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def cli_executable() -> str:
    """The installed `deploycompress` next to this interpreter (the venv's console script)."""
    candidate = Path(sys.executable).with_name("deploycompress")
    return str(candidate) if candidate.exists() else shutil.which("deploycompress") or "deploycompress"


def run_cli(args: list) -> int:
    """`deploycompress ARGS` in this process; its exit code (0 when it returns normally)."""
    from deploycompress.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def assert_meets_target(report: dict) -> None:
    """The policy's own measurement of the chosen plan meets the target, the final profile shows a
    real speedup, and the report's verdict agrees with its own figures.

    Whether the final profile clears the target to the percent is a timing claim: on a shared CPU a
    short profile swings by tens of percent (CI measured 2.02x, 95% CI from 1.99x, for a plan searched
    at 2.07x). benchmarks/targets.py checks it on a quiet machine; the tests check what cannot flake.
    """
    target = report["target_speedup"]
    widths = {layer["name"]: layer["channels_after"] for layer in report["layers"]}
    chosen = [c for c in report["search"]["candidates"] if c["widths"] == widths]
    assert chosen, "the chosen plan was never measured"
    assert chosen[-1]["speedup"] >= target, report["search"]["candidates"]
    speedup = report["speedup"]
    assert speedup["measured"] >= 0.8 * target, speedup
    if speedup["trusted"]:
        assert report["target_met"] == (speedup["measured"] >= target), speedup
    else:
        assert report["target_met"] is None, speedup  # an untrusted clock is never a pass


@pytest.fixture(scope="session")
def cli() -> str:
    return cli_executable()


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """One small end-to-end run of the built-in default (SPDY, short finetune), shared by the tests."""
    from deploycompress.pipeline import run_pipeline
    from deploycompress.recipe import build_config

    out = tmp_path_factory.mktemp("default_run")
    config = build_config(None, {
        "target_speedup": "2x", "out": str(out), "seed": 0,
        "prune": {"search_rounds": 8, "spdy_evaluations": 12},
        "finetune": {"epochs": 1},
        "profile": {"rounds": 15, "warmup": 5},
    })
    report = run_pipeline(config)
    return out, report
