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
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def parse_one(parser, option: str, text: str, parse):
    """`parse(text)`, or argparse's one error line and exit 2 when it raises UserError or ValueError.
    Called before the first run: a typo in the last model of a list would otherwise end the run in a
    traceback after hours of measuring, with nothing written."""
    from deploycompress.errors import UserError

    try:
        return parse(text)
    except (UserError, ValueError) as error:
        parser.error(f"{option}: {error}")


def parse_list(parser, option: str, text: str, parse) -> list:
    """The comma-separated values of one option, each through parse_one."""
    return [parse_one(parser, option, item.strip(), parse) for item in text.split(",")]


def known(registry):
    """A `parse` for parse_list: the name itself, once the registry knows it."""
    def check(name: str) -> str:
        registry.get(name)  # raises UserError naming the choices
        return name
    return check


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


def usable_cores() -> list[int]:
    """The cores this process may run on (its affinity, which taskset or a container may narrow)."""
    return sorted(os.sched_getaffinity(0))


def run_pinned(commands: list[list[str]], jobs: int) -> list[int]:
    """Run each command (an argv) in its own process, at most `jobs` at once, each pinned to a core of
    its own with one intra-op thread (`jobs` at most `usable_cores()`); returns their exit codes in
    order. Why pinned: two processes that share a core time each other's slices, and a latency
    measured that way is not the runtime's. Each process still measures its speedups side by side
    within itself."""
    cores = usable_cores()
    free, running, codes = cores[:jobs], {}, [0] * len(commands)
    pending = list(enumerate(commands))
    while pending or running:
        while pending and free:
            index, command = pending.pop(0)
            core = free.pop(0)
            print(f"[core {core}] {' '.join(command[1:])}", flush=True)
            process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                       preexec_fn=lambda core=core: os.sched_setaffinity(0, {core}))
            running[process] = (index, core)
        time.sleep(2)
        for process in [p for p in running if p.poll() is not None]:
            index, core = running.pop(process)
            codes[index] = process.returncode
            free.append(core)
    return codes


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
