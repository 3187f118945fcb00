"""Shared by the benchmark scripts: quiet runs of the pipeline and result files (JSON + Markdown).

Every benchmark measures with one intra-op thread unless it says otherwise, and quotes ratios measured
side by side (see MEASURING.md). Results go to benchmarks/results/NAME.json and NAME.md.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict:
    import onnxruntime
    import torch

    from deploycompress.latency.runtime import cpu_info

    return {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "cpu": cpu_info()["model"], "isa": cpu_info()["isa"], "cores": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def run_quietly(config) -> tuple[dict, float]:
    """Run the pipeline with its console output captured; returns (report, seconds)."""
    from deploycompress.pipeline import run_pipeline

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        report = run_pipeline(config)
    return report, time.perf_counter() - start


def write_results(name: str, payload: dict, table_header: list[str], rows: list[list], notes: list[str]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"environment": environment(), **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# {name}", "", *notes, "", "| " + " | ".join(table_header) + " |",
             "|" + "|".join("---" for _ in table_header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    env = payload["environment"]
    lines += ["", f"Measured {env['date']} on {env['cpu']} ({'+'.join(env['isa'])}), {env['cores']} cores, "
              f"torch {env['torch']}, ONNX Runtime {env['onnxruntime']}."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {RESULTS / name}.json and .md", file=sys.stderr)


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
