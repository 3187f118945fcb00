"""PNG plots of a run for report.md: per-layer latency (or channels) before/after, and accuracy against
measured speedup.

matplotlib is imported only when plotting, and figures are drawn on an explicit Agg canvas rather than
through pyplot, so writing a report never touches pyplot's global backend or figure list (a notebook
or a GUI in the same process keeps working)."""
from __future__ import annotations

from pathlib import Path

from .fileio import atomic_write

LAYERS_PNG = "layers.png"
ACCURACY_PNG = "accuracy_vs_speedup.png"
_BEFORE, _AFTER, _TARGET = "#9aa5b1", "#1f77b4", "#d62728"


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> None:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def plot_layers(layers: list[dict], path: Path) -> bool:
    """Horizontal bars per layer, before vs after, in the report's order (first on top). Latency when
    every layer has it; otherwise channel counts, so the plot exists before the latency table does."""
    if not layers:
        return False
    has_latency = all(_number(l.get("latency_ms_before")) is not None and _number(l.get("latency_ms_after")) is not None
                      for l in layers)
    keys = ("latency_ms_before", "latency_ms_after") if has_latency else ("channels_before", "channels_after")
    before = [float(l[keys[0]]) for l in layers]
    after = [float(l[keys[1]]) for l in layers]
    names = [l["name"] for l in layers]
    figure = _new_figure(8.0, 1.5 + 0.38 * len(layers))
    ax = figure.subplots()
    rows = list(range(len(layers)))
    height = 0.4
    ax.barh([r - height / 2 for r in rows], before, height, color=_BEFORE, label="before (dense)")
    ax.barh([r + height / 2 for r in rows], after, height, color=_AFTER, label="after (compressed)")
    for row, b, a in zip(rows, before, after):
        text = f"{a:.3f} ms" if has_latency else f"{int(a)}/{int(b)}"
        ax.text(a, row + height / 2, f" {text}", va="center", fontsize=7)
    ax.set_yticks(rows, names, fontsize=8)
    ax.invert_yaxis()
    if has_latency:
        ax.set_xlabel("latency per layer (ms, ONNX Runtime)")
        # No total in the title: a group's figure covers the convs that produce and consume its channels,
        # so neighbouring groups share convs and a sum would count them twice.
        ax.set_title("Latency per pruned layer, before and after")
    else:
        ax.set_xlabel("output channels")
        ax.set_title("Channels per layer before and after (per-layer latency not in this report)")
    ax.margins(x=0.15)
    ax.grid(axis="x", alpha=0.3)
    figure.legend(loc="outside lower center", ncol=2, fontsize=8)  # below the axes: never covers a bar
    _save(figure, path)
    return True


def accuracy_points(report: dict) -> list[tuple[float, float, str]]:
    """(speedup, accuracy %, label) for everything in the report that has both figures."""
    points = []
    accuracy = report.get("accuracy") or {}
    dense, compressed = _number(accuracy.get("dense")), _number(accuracy.get("compressed"))
    measured = _number((report.get("speedup") or {}).get("measured"))
    if dense is not None:
        points.append((1.0, dense, "dense"))
    if compressed is not None and measured is not None:
        points.append((measured, compressed, "compressed"))
    for candidate in (report.get("search") or {}).get("candidates") or []:
        speedup, acc = _number(candidate.get("speedup")), _number(candidate.get("accuracy"))
        if speedup is not None and acc is not None:
            points.append((speedup, acc, "candidate"))
    return points


def plot_accuracy_vs_speedup(report: dict, path: Path) -> bool:
    """Accuracy against measured speedup; skipped unless at least two points have both figures.
    Search candidates measured for speed only are drawn as ticks on the speedup axis."""
    points = accuracy_points(report)
    if len(points) < 2:
        return False
    figure = _new_figure(7.0, 4.5)
    ax = figure.subplots()
    styles = {"dense": ("s", _BEFORE, "dense"), "compressed": ("o", _AFTER, "compressed (shipped)"),
              "candidate": (".", "#7f7f7f", "search candidate")}
    for kind, (marker, color, label) in styles.items():
        chosen = [(s, a) for s, a, k in points if k == kind]
        if chosen:
            ax.scatter([s for s, _ in chosen], [a for _, a in chosen], marker=marker, color=color, s=60,
                       label=label, zorder=3)
    for speedup, acc, kind in points:
        if kind != "candidate":  # dense label below its point, compressed above: close points stay legible
            ax.annotate(f"{acc:.2f}% @ {speedup:.2f}x", (speedup, acc), textcoords="offset points",
                        xytext=(6, -14 if kind == "dense" else 8), fontsize=8)
    target = _number(report.get("target_speedup"))
    # A wild search probe (say 9x at a tiny width) would squash the interesting range: end the axis a
    # little past the points and the target, and count the probes beyond it in the legend.
    x_max = 1.4 * max([s for s, _, _ in points] + ([target] if target else []))
    speed_only = [_number(c.get("speedup")) for c in (report.get("search") or {}).get("candidates") or []
                  if _number(c.get("accuracy")) is None and _number(c.get("speedup")) is not None]
    if speed_only:
        shown = [s for s in speed_only if s <= x_max]
        beyond = len(speed_only) - len(shown)
        ax.plot(shown, [0.02] * len(shown), "|", color="#7f7f7f", markersize=12, transform=ax.get_xaxis_transform(),
                label=f"search candidates, speed only ({len(speed_only)}"
                      + (f"; {beyond} beyond {x_max:.1f}x" if beyond else "") + ")")
    if target is not None:
        ax.axvline(target, color=_TARGET, linestyle="--", linewidth=1, label=f"target {target:g}x")
    accuracies = [a for _, a, _ in points]
    pad = max(0.5, 0.15 * (max(accuracies) - min(accuracies)))
    top = max(accuracies) + pad
    ax.set_ylim(min(accuracies) - pad, top if max(accuracies) > 99.9 else min(top, 100.0))  # no axis past 100%
    ax.set_xlim(min(0.8, min(s for s, _, _ in points) - 0.2), x_max)
    ax.set_xlabel("measured speedup over dense (ONNX Runtime, x)")
    ax.set_ylabel("accuracy on held-out data (%)")
    ax.set_title("Accuracy vs measured speedup")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    _save(figure, path)
    return True


def write_run_plots(run_dir: Path, report: dict) -> list[str]:
    """Write the plots the report has figures for; returns their file names (relative to run_dir)."""
    run_dir = Path(run_dir)
    written = []
    if plot_layers(report.get("layers") or [], run_dir / LAYERS_PNG):
        written.append(LAYERS_PNG)
    if plot_accuracy_vs_speedup(report, run_dir / ACCURACY_PNG):
        written.append(ACCURACY_PNG)
    for stale in {LAYERS_PNG, ACCURACY_PNG} - set(written):  # from an earlier run in the same directory
        (run_dir / stale).unlink(missing_ok=True)
    return written
