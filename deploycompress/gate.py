"""Release gates as pure functions: figures in, one line per failed bar out.

Two questions live here because release scripts ask both: is a speedup measurement trustworthy at all
(`measurement_problem`, used by `compare` before it gives a verdict and by `check` on a report), and
does a run's report meet the bars a release sets (`check_report`, behind `deploycompress check`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

# On the project's shared 2-core machines an interleaved one-thread comparison of 30-40 rounds gives
# a 95% CI a few percent wide; beyond these the rounds disagree too much to call a speedup.
DEFAULT_MAX_CI_WIDTH = 0.10  # (CI high - CI low) / median speedup
DEFAULT_MAX_RATIO_SPREAD = 0.25  # (p90 - p10) / median of the per-round ratios


def measurement_problem(speedup: float | None, ci95: list[float] | tuple[float, float] | None,
                        ratio_spread: float | None, max_ci_width: float = DEFAULT_MAX_CI_WIDTH,
                        max_ratio_spread: float = DEFAULT_MAX_RATIO_SPREAD) -> str | None:
    """Why a measured speedup cannot be trusted, or None when it can. Missing CI/spread is not judged."""
    if speedup is None or not math.isfinite(speedup) or speedup <= 0:
        return f"no usable speedup figure ({speedup!r})"
    problems = []
    if ci95 is not None and len(ci95) == 2 and None not in ci95:
        width = (ci95[1] - ci95[0]) / speedup
        if width > max_ci_width:
            problems.append(f"95% CI {ci95[0]:.2f}-{ci95[1]:.2f}x is {width:.1%} of the median "
                            f"(limit {max_ci_width:.0%})")
    if ratio_spread is not None and ratio_spread > max_ratio_spread:
        problems.append(f"per-round ratios spread {ratio_spread:.1%} (limit {max_ratio_spread:.0%})")
    return "; ".join(problems) or None


@dataclass(frozen=True)
class Bars:
    """What a release requires; None means the bar is not set."""

    min_speedup: float | None = None
    max_accuracy_drop: float | None = None  # percentage points, dense minus compressed
    min_accuracy: float | None = None  # percent, compressed model
    max_latency_ms: float | None = None  # compressed model, median
    # The lowest of the profile's fresh session pairs: the median pair's CI understates how far the next
    # pair of sessions reads (a 28 us MLP: CI 2.04-2.07x, pairs 1.98-2.55x).
    min_session_speedup: float | None = None
    # The compressed model's outputs against the dense one's (report key outputs): what a model without
    # labels (a regressor, a data-free run) can be held to. Percent.
    max_output_error: float | None = None  # outputs.relative_rms_error x 100
    min_top1_agreement: float | None = None  # outputs.top1_agreement
    # Other processes' share of the CPU time the profile's timing left free (host_load.others_busy x 100):
    # work beside a measurement can move a speedup (latency/host.py). Percent.
    max_host_load: float | None = None

    def any_set(self) -> bool:
        return any(v is not None for v in (self.min_speedup, self.max_accuracy_drop, self.min_accuracy,
                                           self.max_latency_ms, self.min_session_speedup, self.max_output_error,
                                           self.min_top1_agreement, self.max_host_load))


@dataclass(frozen=True)
class BarResult:
    ok: bool
    line: str


def _figure(report: dict, dotted: str):
    """report["a"]["b"] for "a.b"; None when any level is missing or not a table."""
    node = report
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _number(report: dict, dotted: str) -> float | None:
    value = _figure(report, dotted)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _missing(key: str, option: str, value: float, hint: str = "") -> BarResult:
    return BarResult(False, f"{key} is missing from the report{hint}: cannot check {option} {value:g}")


def _accuracy_drop(report: dict) -> float | None:
    drop = _number(report, "accuracy.drop")
    if drop is None:
        dense, compressed = _number(report, "accuracy.dense"), _number(report, "accuracy.compressed")
        drop = None if dense is None or compressed is None else dense - compressed
    return drop


def exceeded_allowance(report: dict) -> float | None:
    """The top of the allowed speedup range (report key speedup.allowed) when a met target was measured
    above it, else None: a target met that way pruned more than it asked for."""
    allowed = _figure(report, "speedup.allowed")
    if (_figure(report, "target_met") is True and _figure(report, "speedup.within_allowed") is False
            and isinstance(allowed, (list, tuple)) and len(allowed) == 2):
        return allowed[1]
    return None


def evaluate(report: dict, bars: Bars, max_ci_width: float = DEFAULT_MAX_CI_WIDTH,
             max_ratio_spread: float = DEFAULT_MAX_RATIO_SPREAD) -> list[BarResult]:
    """Every bar that is set, passed or failed, plus the trust of the speedup measurement.

    With no bar set, the bar is the run's own target (report key target_met)."""
    results: list[BarResult] = []
    speedup = _number(report, "speedup.measured")
    ci95 = _figure(report, "speedup.ci95")
    ci_text = (f" (95% CI {ci95[0]:.2f}-{ci95[1]:.2f})" if isinstance(ci95, (list, tuple)) and len(ci95) == 2
               and None not in ci95 else "")
    # A speedup the report itself marks untrusted, or whose CI/spread is too wide, passes no release.
    if _figure(report, "speedup.trusted") is False:
        results.append(BarResult(False, "speedup measurement is marked untrusted in the report (speedup.trusted = false)"))
    elif speedup is not None:
        problem = measurement_problem(speedup, ci95 if isinstance(ci95, (list, tuple)) else None,
                                      _number(report, "speedup.ratio_spread"), max_ci_width, max_ratio_spread)
        if problem:
            results.append(BarResult(False, f"speedup measurement is untrusted: {problem}"))
    if not bars.any_set():
        met = _figure(report, "target_met")
        target = _number(report, "target_speedup")
        target_text = f"{target:g}x" if target is not None else "?"
        if not isinstance(met, bool):
            # null: the run did not judge its target (no speedup figure, or the measurement was untrusted).
            state = "null" if "target_met" in report and report["target_met"] is None else "missing from the report"
            results.append(BarResult(False, f"target_met is {state}: no bar given and no run verdict to check"))
        else:
            ceiling = exceeded_allowance(report)
            over = "" if ceiling is None else f"; above the allowed {ceiling:.2f}x (more pruned than the target asked)"
            results.append(BarResult(met, f"run target {target_text} {'met' if met else 'NOT met'}: measured "
                                          f"{'n/a' if speedup is None else f'{speedup:.2f}x'}{ci_text}{over}"))
        return results
    if bars.min_speedup is not None:
        if speedup is None:
            results.append(_missing("speedup.measured", "--min-speedup", bars.min_speedup))
        else:
            ok = speedup >= bars.min_speedup
            results.append(BarResult(ok, f"speedup {speedup:.2f}x{ci_text} {'>=' if ok else '<'} "
                                         f"{bars.min_speedup:g}x (--min-speedup)"))
    if bars.max_accuracy_drop is not None:
        drop = _accuracy_drop(report)
        if drop is None:
            results.append(_missing("accuracy.drop", "--max-accuracy-drop", bars.max_accuracy_drop,
                                    " (no labelled data in this run?)"))
        else:
            ok = drop <= bars.max_accuracy_drop
            results.append(BarResult(ok, f"accuracy drop {drop:.2f} points {'<=' if ok else '>'} "
                                         f"{bars.max_accuracy_drop:g} (--max-accuracy-drop)"))
    if bars.min_accuracy is not None:
        accuracy = _number(report, "accuracy.compressed")
        if accuracy is None:
            results.append(_missing("accuracy.compressed", "--min-accuracy", bars.min_accuracy,
                                    " (no labelled data in this run?)"))
        else:
            ok = accuracy >= bars.min_accuracy
            results.append(BarResult(ok, f"accuracy {accuracy:.2f}% {'>=' if ok else '<'} "
                                         f"{bars.min_accuracy:g}% (--min-accuracy)"))
    if bars.max_latency_ms is not None:
        latency = _number(report, "latency_ms.compressed")
        if latency is None:
            results.append(_missing("latency_ms.compressed", "--max-latency-ms", bars.max_latency_ms))
        else:
            ok = latency <= bars.max_latency_ms
            results.append(BarResult(ok, f"latency {latency:.3f} ms {'<=' if ok else '>'} "
                                         f"{bars.max_latency_ms:g} ms (--max-latency-ms)"))
    if bars.min_session_speedup is not None:
        results.append(_lowest_session_bar(report, speedup, bars.min_session_speedup))
    if bars.max_output_error is not None:
        error = _number(report, "outputs.relative_rms_error")
        results.append(_percent_bar(None if error is None else error * 100, "outputs.relative_rms_error",
                                    "output error", "--max-output-error", bars.max_output_error, at_most=True,
                                    hint=" (a report written before outputs were compared?)"))
    if bars.min_top1_agreement is not None:
        results.append(_percent_bar(_number(report, "outputs.top1_agreement"), "outputs.top1_agreement",
                                    "top-1 agreement", "--min-top1-agreement", bars.min_top1_agreement,
                                    at_most=False, hint=" (outputs that are not class scores, or a report "
                                                        "written before outputs were compared?)"))
    if bars.max_host_load is not None:
        busy = _number(report, "host_load.others_busy")
        results.append(_percent_bar(None if busy is None else busy * 100, "host_load.others_busy",
                                    "other processes' CPU use while measuring", "--max-host-load",
                                    bars.max_host_load, at_most=True,
                                    hint=" (measured off Linux, or a report written before host load was recorded?)"))
    return results


def _percent_bar(value: float | None, key: str, what: str, option: str, bar: float, at_most: bool,
                 hint: str) -> BarResult:
    if value is None:
        return _missing(key, option, bar, hint)
    ok = value <= bar if at_most else value >= bar
    sign = ("<=" if ok else ">") if at_most else (">=" if ok else "<")
    return BarResult(ok, f"{what} {value:.2f}% {sign} {bar:g}% ({option})")


def _lowest_session_bar(report: dict, measured: float | None, bar: float) -> BarResult:
    figures = _figure(report, "speedup")
    session_range = figures.get("session_range", ...) if isinstance(figures, dict) else ...  # ...: no key
    if (isinstance(session_range, (list, tuple)) and len(session_range) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in session_range)):
        low, what = float(session_range[0]), f"lowest of the pairs {session_range[0]:.2f}-{session_range[1]:.2f}x"
    elif session_range is None and measured is not None:
        low, what = measured, "one session pair measured"  # report.py writes null when there was one pair
    else:
        return _missing("speedup.session_range", "--min-session-speedup", bar,
                        " (a report written before the profile kept each session pair?)")
    ok = low >= bar
    return BarResult(ok, f"session speedup {low:.2f}x ({what}) {'>=' if ok else '<'} {bar:g}x "
                         "(--min-session-speedup)")


def check_report(report: dict, bars: Bars, max_ci_width: float = DEFAULT_MAX_CI_WIDTH,
                 max_ratio_spread: float = DEFAULT_MAX_RATIO_SPREAD) -> list[str]:
    """One line per failed bar; an empty list means the report meets every bar."""
    return [r.line for r in evaluate(report, bars, max_ci_width, max_ratio_spread) if not r.ok]


def load_report(path: str | Path) -> dict:
    """report.json as a dict; a missing, unreadable or malformed file is a UserError (one line, exit 2)."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"report not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read report {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"report {path} is not valid JSON: {exc}") from None
    if not isinstance(report, dict):
        raise UserError(f"report {path} is not a JSON object")
    return report
