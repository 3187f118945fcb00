"""A user's own model, weights and data from outside the repository, through the real command line.

The files and the command are taken verbatim from the README's "Your own model and data" section,
so the documented example is the tested one.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import REPO, assert_meets_target, cli_executable

SECTION = "## Your own model and data"


def readme_example() -> dict[str, str]:
    """The section's code blocks: {"my_model.py": ..., "prepare.py": ..., "command": ...}."""
    text = (REPO / "README.md").read_text()
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, flags=re.S)
    files = {}
    for language, body in blocks:
        name = body.splitlines()[0].removeprefix("# ").split()[0].rstrip(":")  # "# my_model.py" names the file
        if language == "python" and name.endswith(".py"):
            files[name] = body
        elif language == "bash":
            files["command"] = body
    return files


def cli_env() -> dict[str, str]:
    # One torch thread: on a shared machine a 2-thread OpenMP pool can be 100x slower, not 2x faster.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([cli_executable(), *args], cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """An empty folder outside the repository with the README's model file, weights and data."""
    folder = tmp_path_factory.mktemp("outside_repo")
    assert REPO not in folder.parents
    example = readme_example()
    for name in ("my_model.py", "prepare.py"):
        (folder / name).write_text(example[name])
    lines = [line for line in example["command"].replace("\\\n", " ").splitlines() if line.strip()]
    assert lines[0].strip() == "python prepare.py"
    subprocess.run([sys.executable, "prepare.py"], cwd=folder, check=True, env=cli_env(), timeout=120)
    (folder / "command.txt").write_text(lines[1])
    return folder


def test_readme_example_compresses_with_one_command(user_folder):
    command = shlex.split((user_folder / "command.txt").read_text())
    assert command[:2] == ["deploycompress", "run"]
    # Added for the test only: uniform search (the default SPDY policy is tested elsewhere), one
    # finetune epoch and fewer timing rounds keep it short; everything else is the README's command.
    extra = ["--policy", "uniform", "--finetune-epochs", "1"]
    result = run_cli(command[1:] + extra, cwd=user_folder)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = user_folder / "runs" / "my_model"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["data"] == "data" and report["model"] == "my_model.py:make"
    assert report["params"]["compressed"] < report["params"]["dense"]
    assert report["onnx"]["max_abs_diff"] <= report["onnx"]["tolerance"]
    assert_meets_target(report)
    assert "target 2x:" in result.stdout
    # The dense model that was compressed is the one with the saved weights, not a fresh init.
    sys.path.insert(0, str(user_folder))
    try:
        from my_model import make
    finally:
        sys.path.remove(str(user_folder))
    model = make().eval()
    model.load_state_dict(torch.load(user_folder / "weights.pt", weights_only=True))
    x = np.load(user_folder / "data.npz")["x"][:4]
    session = ort.InferenceSession(str(run_dir / "dense.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        assert np.allclose(model(torch.from_numpy(x)).numpy(), onnx_out, atol=1e-4)


class WritesMarker:
    """A pickled payload: unpickling it calls open(marker, "w"), which creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_payload_is_refused_and_never_runs(user_folder, tmp_path):
    marker = tmp_path / "payload_ran"
    bad = tmp_path / "bad.pt"
    torch.save({"fc.weight": WritesMarker(marker)}, bad)
    result = run_cli(["run", "--model", "my_model.py:make", "--weights", str(bad), "--data", "data.npz",
                      "--policy", "uniform", "--out", str(tmp_path / "run")], cwd=user_folder, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused to load" in lines[0] and "never executed" in lines[0], result.stderr
    assert not marker.exists()


def test_payload_in_the_test_is_live(tmp_path):
    """Guard for the test above: without weights_only the same file does run its payload."""
    marker = tmp_path / "payload_ran"
    torch.save({"w": WritesMarker(marker)}, tmp_path / "bad.pt")
    torch.load(tmp_path / "bad.pt", weights_only=False)
    assert marker.exists()


def test_missing_input_shape_is_one_line(user_folder, tmp_path):
    result = run_cli(["run", "--model", "my_model.py:make", "--data", "none", "--out", str(tmp_path / "r")],
                     cwd=user_folder, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("deploycompress: error: --input-shape is required when neither the data "
                                     "nor a zoo model says it (e.g. 1,3,224,224)")


def test_a_mistyped_model_path_is_named_before_the_missing_input_shape(user_folder, tmp_path):
    # Before the fix the user was asked for --input-shape and only learnt of the typo after adding one.
    result = run_cli(["run", "--model", "my_modle.py:make", "--data", "none", "--out", str(tmp_path / "r")],
                     cwd=user_folder, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "deploycompress: error: --model: file not found: my_modle.py"


@pytest.mark.parametrize("args, fragment", [
    (["--data", "none"], "--input-shape is required"),
    (["--input-shape", "1,3,32,32", "--data", "no_such_file.npz"], "data file not found"),
])
def test_a_run_stopped_by_bad_input_leaves_no_run_directory_behind(user_folder, tmp_path, args, fragment):
    out = tmp_path / "fresh" / "run"
    result = run_cli(["run", "--model", "my_model.py:make", *args, "--out", str(out)], cwd=user_folder, timeout=120)
    assert result.returncode == 2 and fragment in result.stderr, result.stderr
    assert not out.exists()  # the run made it for itself and put nothing in it
