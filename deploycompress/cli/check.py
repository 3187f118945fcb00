"""`deploycompress check RUN_DIR/report.json --min-speedup 2.0 --max-accuracy-drop 1.0`: a release gate.

Exit codes: 0 every bar met; 1 a bar failed, a figure it needs is missing, or the speedup measurement
is untrusted (one line each); 2 the report file is missing or not a valid report."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..gate import DEFAULT_MAX_CI_WIDTH, DEFAULT_MAX_RATIO_SPREAD
from . import app

BAR_FAILED_EXIT = 1


@app.command("check")
def check(
    report_path: Path = typer.Argument(..., metavar="REPORT", help="A run's report.json (or its run directory)."),
    min_speedup: Optional[float] = typer.Option(None, help="Measured speedup (speedup.measured) at least this."),
    max_accuracy_drop: Optional[float] = typer.Option(None, help="Dense minus compressed accuracy, in points, at most this."),
    min_accuracy: Optional[float] = typer.Option(None, help="Compressed accuracy, in percent, at least this."),
    max_latency_ms: Optional[float] = typer.Option(None, help="Compressed median latency (latency_ms.compressed) at most this."),
    min_session_speedup: Optional[float] = typer.Option(
        None, help="The lowest fresh session pair's speedup (speedup.session_range) at least this: "
                   "--min-speedup judges the median pair."),
    max_output_error: Optional[float] = typer.Option(
        None, help="The compressed model's outputs against the dense one's on the test split "
                   "(outputs.relative_rms_error), in percent, at most this: a bar for models without labels."),
    min_top1_agreement: Optional[float] = typer.Option(
        None, help="How often the compressed and dense models agree on the top class (outputs.top1_agreement), "
                   "in percent, at least this."),
    max_host_load: Optional[float] = typer.Option(
        None, min=0.0, help="Other processes' share of the CPU time the speedup measurement left free "
                            "(host_load.others_busy), in percent, at most this: work beside a measurement can move it."),
    max_ci_width: float = typer.Option(DEFAULT_MAX_CI_WIDTH, min=0.0,
                                       help="The speedup is untrusted when its 95% CI is wider than this fraction of it."),
    max_ratio_spread: float = typer.Option(DEFAULT_MAX_RATIO_SPREAD, min=0.0,
                                           help="The speedup is untrusted when its per-round ratios spread more than this."),
) -> None:
    """Exit 0 when the report meets every bar, 1 with one line per failed bar. No bar: the run's own target."""
    from ..gate import Bars, evaluate, load_report

    report = load_report(report_path)
    bars = Bars(min_speedup=min_speedup, max_accuracy_drop=max_accuracy_drop, min_accuracy=min_accuracy,
                max_latency_ms=max_latency_ms, min_session_speedup=min_session_speedup,
                max_output_error=max_output_error, min_top1_agreement=min_top1_agreement,
                max_host_load=max_host_load)
    results = evaluate(report, bars, max_ci_width, max_ratio_spread)
    failed = [r.line for r in results if not r.ok]
    for result in results:
        print(f"{'ok  ' if result.ok else 'FAIL'} {result.line}")
    if failed:
        print(f"check failed: {len(failed)} of {len(results)} bar(s) not met")
        raise typer.Exit(BAR_FAILED_EXIT)
    print(f"check passed: {len(results)} bar(s) met")
