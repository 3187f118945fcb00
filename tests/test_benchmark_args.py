"""The benchmark scripts reject a bad list argument before they measure anything (one error line, exit 2)."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=BENCHMARKS, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("script, args, message", [
    ("targets.py", ["--models", "resnet_digits,nosuch"], "--models: unknown model 'nosuch'"),
    ("targets.py", ["--targets", "1.5,abc"], "--targets: target speedup 'abc' is not a number"),
    ("targets.py", ["--policy", "spdi"], "--policy: unknown allocation policy 'spdi' (did you mean 'spdy'?)"),
    ("allocation.py", ["--seeds", "0,x"], "--seeds: invalid literal for int()"),
    ("allocation.py", ["--policies", "spdy,nope"], "--policies: unknown allocation policy 'nope'"),
    ("allocation.py", ["--data", "nosuch"], "argument --data: invalid choice: 'nosuch'"),
    ("targets.py", ["--threads", "0"], "--threads must be at least 1"),
    ("threads.py", ["--models", "resnet_digits,nosuch"], "--models: unknown model 'nosuch'"),
    ("threads.py", ["--threads", "1,two"], "--threads: invalid literal for int()"),
    ("threads.py", ["--threads", "0,2"], "--threads must be at least 1"),
])
def test_a_bad_list_value_ends_the_script_before_any_run(script, args, message, tmp_path):
    keep = tmp_path / "keep"
    result = run_script(script, *args, *(["--keep", str(keep)] if script == "targets.py" else []))
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not keep.exists() or not any(keep.iterdir())  # no run directory was started


def test_a_keep_path_that_is_a_file_ends_targets_before_any_run(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("the user's file\n")
    result = run_script("targets.py", "--keep", str(taken))
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and f"--keep: output path {taken} exists and is not a directory" in error_lines[0]
    assert "Traceback" not in result.stderr
    assert taken.read_text() == "the user's file\n"  # nothing the user had is lost
