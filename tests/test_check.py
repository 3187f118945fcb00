"""`deploycompress check REPORT`: release bars, exit codes, and the Makefile's release gate."""
from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import pytest

from conftest import run_cli
from deploycompress.gate import Bars, check_report, load_report
from deploycompress.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

# The keys `check` reads, shaped as deploycompress.report.build_report writes them.
GOOD_REPORT = {
    "target_speedup": 2.0,
    "target_met": True,
    "speedup": {"measured": 2.17, "ci95": [2.12, 2.21], "ratio_spread": 0.04, "session_range": [2.10, 2.20]},
    "accuracy": {"dense": 98.0, "compressed": 97.5, "drop": 0.5},
    "latency_ms": {"dense": 1.30, "compressed": 0.60},
    "outputs": {"split": "test split", "samples": 360, "relative_rms_error": 0.031, "top1_agreement": 98.6},
    "host_load": {"others_busy": 0.02, "steal": 0.0, "cpus": 2, "seconds": 9.5},
}


def report_with(**changes) -> dict:
    """GOOD_REPORT with dotted keys replaced; a value of ... deletes the key."""
    report = copy.deepcopy(GOOD_REPORT)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = report
        for key in parents:
            node = node[key]
        if value is ...:
            del node[leaf]
        else:
            node[leaf] = value
    return report


def write(tmp_path: Path, report) -> Path:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    return path


def test_good_report_meets_all_bars():
    bars = Bars(min_speedup=2.0, max_accuracy_drop=1.0, min_accuracy=97.0, max_latency_ms=1.0,
                min_session_speedup=2.05, max_output_error=5.0, min_top1_agreement=98.0, max_host_load=10.0)
    assert check_report(GOOD_REPORT, bars) == []


@pytest.mark.parametrize("changes, bars, needle", [
    ({"speedup__measured": 1.8, "speedup__ci95": [1.76, 1.83]}, Bars(min_speedup=2.0), "speedup 1.80x"),
    ({"accuracy__drop": 2.5}, Bars(max_accuracy_drop=1.0), "accuracy drop 2.50 points > 1"),
    ({"accuracy__compressed": 90.0}, Bars(min_accuracy=95.0), "accuracy 90.00% < 95%"),
    ({"latency_ms__compressed": 1.5}, Bars(max_latency_ms=1.0), "latency 1.500 ms > 1 ms"),
    ({"speedup__measured": None}, Bars(min_speedup=2.0), "speedup.measured is missing"),
    ({"accuracy__compressed": None, "accuracy__drop": None}, Bars(max_accuracy_drop=1.0), "accuracy.drop is missing"),
    ({"latency_ms": ...}, Bars(max_latency_ms=1.0), "latency_ms.compressed is missing"),
    ({"speedup__trusted": False}, Bars(max_accuracy_drop=1.0), "marked untrusted"),
    ({"speedup__ci95": [1.5, 2.9]}, Bars(min_speedup=2.0), "untrusted: 95% CI"),
    ({"speedup__ratio_spread": 0.9}, Bars(min_speedup=2.0), "untrusted: per-round ratios spread"),
    ({"target_met": False}, Bars(), "run target 2x NOT met"),
    ({"target_met": ...}, Bars(), "target_met is missing"),
    ({"target_met": None}, Bars(), "target_met is null"),
    ({"speedup__session_range": [1.94, 2.21]}, Bars(min_session_speedup=2.0),
     "session speedup 1.94x (lowest of the pairs 1.94-2.21x) < 2x"),
    ({"speedup__session_range": None, "speedup__measured": 1.95, "speedup__ci95": [1.93, 1.97]},
     Bars(min_session_speedup=2.0), "session speedup 1.95x (one session pair measured) < 2x"),
    ({"speedup__session_range": ...}, Bars(min_session_speedup=2.0), "speedup.session_range is missing"),
    ({"outputs__relative_rms_error": 0.12}, Bars(max_output_error=5.0),
     "output error 12.00% > 5% (--max-output-error)"),
    ({"outputs__top1_agreement": 91.5}, Bars(min_top1_agreement=95.0),
     "top-1 agreement 91.50% < 95% (--min-top1-agreement)"),
    ({"outputs": ...}, Bars(max_output_error=5.0), "outputs.relative_rms_error is missing"),
    ({"outputs__top1_agreement": None}, Bars(min_top1_agreement=95.0), "outputs that are not class scores"),
    ({"host_load__others_busy": 0.97}, Bars(max_host_load=25.0),
     "other processes' CPU use while measuring 97.00% > 25% (--max-host-load)"),
    ({"host_load": None}, Bars(max_host_load=25.0), "host_load.others_busy is missing from the report (measured off Linux"),
])
def test_each_failed_bar_is_one_line(changes, bars, needle):
    failed = check_report(report_with(**changes), bars)
    assert len(failed) == 1 and needle in failed[0], failed


def test_accuracy_drop_is_derived_when_the_report_lacks_it():
    report = report_with(accuracy__drop=..., accuracy__compressed=96.0)
    assert check_report(report, Bars(max_accuracy_drop=2.0)) == []
    assert check_report(report, Bars(max_accuracy_drop=1.5)) != []


def test_cli_exit_0_when_bars_met(tmp_path, capsys):
    path = write(tmp_path, GOOD_REPORT)
    assert run_cli(["check", path, "--min-speedup", "2.0", "--max-accuracy-drop", "1.0", "--min-accuracy", "97",
                    "--max-latency-ms", "1.0", "--max-host-load", "10"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "check passed" in out
    assert run_cli(["check", tmp_path]) == 0  # a run directory works too, and no bar means the run's target


def test_the_run_target_passes_above_the_allowance_and_the_line_says_so(tmp_path, capsys):
    over = report_with(speedup__measured=2.4, speedup__ci95=[2.36, 2.44], speedup__allowed=[2.0, 2.2],
                       speedup__within_allowed=False)
    assert run_cli(["check", write(tmp_path, over)]) == 0
    assert "above the allowed 2.20x" in capsys.readouterr().out
    assert run_cli(["check", write(tmp_path, report_with(speedup__within_allowed=True))]) == 0
    assert "above the allowed" not in capsys.readouterr().out


def test_cli_exit_1_with_one_line_per_failed_bar(tmp_path, capsys):
    path = write(tmp_path, report_with(speedup__measured=1.5, speedup__ci95=[1.47, 1.53], accuracy__drop=3.0))
    assert run_cli(["check", path, "--min-speedup", "2.0", "--max-accuracy-drop", "1.0", "--max-latency-ms", "1"]) == 1
    fails = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 2 and "--min-speedup" in fails[0] and "--max-accuracy-drop" in fails[1]


def test_cli_min_session_speedup_fails_a_run_whose_median_pair_passes(tmp_path, capsys):
    # The median pair meets --min-speedup 2; one fresh pair read 1.98x, which the release refuses.
    path = write(tmp_path, report_with(speedup__session_range=[1.98, 2.55]))
    assert run_cli(["check", path, "--min-speedup", "2.0"]) == 0
    assert run_cli(["check", path, "--min-speedup", "2.0", "--min-session-speedup", "2.0"]) == 1
    fails = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert fails == ["FAIL session speedup 1.98x (lowest of the pairs 1.98-2.55x) < 2x (--min-session-speedup)"]


def test_cli_gates_a_model_without_labels_on_its_outputs(tmp_path, capsys):
    """A regressor's report has no accuracy: its release is held to the output error instead."""
    unlabelled = report_with(accuracy__dense=None, accuracy__compressed=None, accuracy__drop=None,
                             outputs__top1_agreement=None, outputs__relative_rms_error=0.042)
    path = write(tmp_path, unlabelled)
    assert run_cli(["check", path, "--min-speedup", "2.0", "--max-output-error", "5"]) == 0
    assert run_cli(["check", path, "--min-speedup", "2.0", "--max-output-error", "4"]) == 1
    fails = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert fails == ["FAIL output error 4.20% > 4% (--max-output-error)"]


def test_cli_exit_1_when_the_speedup_is_untrusted(tmp_path, capsys):
    path = write(tmp_path, report_with(speedup__trusted=False))
    assert run_cli(["check", path, "--min-speedup", "2.0"]) == 1
    assert "untrusted" in capsys.readouterr().out


def test_ci_limit_is_an_option(tmp_path):
    path = write(tmp_path, report_with(speedup__ci95=[1.9, 2.4]))  # 23% of the median
    assert run_cli(["check", path, "--min-speedup", "2.0"]) == 1
    assert run_cli(["check", path, "--min-speedup", "2.0", "--max-ci-width", "0.3"]) == 0


@pytest.mark.parametrize("content, needle", [
    (None, "report not found"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
])
def test_cli_exit_2_for_a_bad_or_missing_report(tmp_path, capsys, content, needle):
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    assert run_cli(["check", path, "--min-speedup", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    with pytest.raises(UserError):
        load_report(path)


def _release_commands() -> list[list[str]]:
    """The shell commands of the Makefile's `release` target, with $(BIN)/ dropped."""
    text = (ROOT / "Makefile").read_text()
    block = re.search(r"^release:.*\n((?:\t.*\n)+)", text, re.M)
    assert block, "Makefile has no release target"
    return [shlex.split(line.strip().replace("$(BIN)/", "")) for line in block.group(1).splitlines()]


def test_make_release_runs_the_resnet_recipe_and_gates_its_report(tmp_path, capsys):
    run_cmd, check_cmd = _release_commands()
    assert run_cmd[:3] == ["deploycompress", "run", "pipelines/resnet_digits.toml"]
    assert (ROOT / run_cmd[2]).is_file()
    out_dir = run_cmd[run_cmd.index("--out") + 1]
    assert check_cmd[:3] == ["deploycompress", "check", f"{out_dir}/report.json"]
    bars = check_cmd[3:]
    assert "--min-speedup" in bars
    # make stops at the first command that exits non-zero: the gate must exit 1 below the bar.
    min_speedup = float(bars[bars.index("--min-speedup") + 1])
    below = write(tmp_path, report_with(speedup__measured=min_speedup * 0.9, speedup__ci95=[min_speedup * 0.88,
                                                                                             min_speedup * 0.92]))
    assert run_cli(["check", below, *bars]) == 1
    above = write(tmp_path, report_with(speedup__measured=min_speedup * 1.1, speedup__ci95=[min_speedup * 1.08,
                                                                                            min_speedup * 1.12]))
    assert run_cli(["check", above, *bars]) == 0
