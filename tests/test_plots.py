"""deploycompress.plots and its wiring into report.md."""
from __future__ import annotations

import copy

import pytest

from deploycompress import plots
from deploycompress.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

LAYERS = [
    {"name": "stem.0", "channels_before": 32, "channels_after": 16, "latency_ms_before": 0.20, "latency_ms_after": 0.11},
    {"name": "layers.0.conv1", "channels_before": 64, "channels_after": 32, "latency_ms_before": 0.40,
     "latency_ms_after": 0.18},
]

REPORT = {
    "schema": 1, "model": "resnet_digits", "target_speedup": 2.0, "target_met": True,
    "speedup": {"measured": 2.1, "ci95": [2.05, 2.15], "ratio_spread": 0.03, "predicted": 2.0, "macs_ratio": 2.4},
    "latency_ms": {"dense": 1.2, "compressed": 0.57},
    "accuracy": {"dense": 98.5, "compressed": 97.9, "drop": 0.6},
    "device": "cpu", "threads": 1, "batch_size": 1,
    "params": {"dense": 1000, "compressed": 400}, "macs": {"dense": 10000, "compressed": 4000},
    "onnx": {"max_abs_diff": 1e-6, "opset": 17}, "policy": "uniform", "importance": "l2",
    "stages": [{"name": "prune", "seconds": 1.0, "resumed": False}],
    "layers": LAYERS, "skipped_groups": [],
    "search": {"candidates": [{"speedup": 1.8, "latency_ms": 0.66}, {"speedup": 2.3, "latency_ms": 0.52}]},
    "runtime": {"ort": "1.31", "cpu": "test cpu", "isa": "avx2"},
}


@pytest.fixture()
def captured(monkeypatch):
    """Figures handed to the writer, by file name, so tests can read labels instead of pixels."""
    figures = {}
    real_save = plots._save

    def save(figure, path):
        figures[path.name] = figure
        real_save(figure, path)

    monkeypatch.setattr(plots, "_save", save)
    return figures


def test_writes_both_plots_as_png(tmp_path, captured):
    names = plots.write_run_plots(tmp_path, REPORT)
    assert names == [plots.LAYERS_PNG, plots.ACCURACY_PNG]
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    layer_axes = captured[plots.LAYERS_PNG].axes[0]
    assert "latency" in layer_axes.get_xlabel()
    assert [t.get_text() for t in layer_axes.get_yticklabels()] == ["stem.0", "layers.0.conv1"]
    accuracy_axes = captured[plots.ACCURACY_PNG].axes[0]
    assert "speedup" in accuracy_axes.get_xlabel() and "accuracy" in accuracy_axes.get_ylabel()


def test_layer_plot_falls_back_to_channels_without_latency(tmp_path, captured):
    report = copy.deepcopy(REPORT)
    for layer in report["layers"]:
        del layer["latency_ms_before"]
    report["layers"][1]["latency_ms_after"] = None
    assert plots.LAYERS_PNG in plots.write_run_plots(tmp_path, report)
    assert captured[plots.LAYERS_PNG].axes[0].get_xlabel() == "output channels"


def test_accuracy_points_use_what_exists():
    report = copy.deepcopy(REPORT)
    report["search"]["candidates"].append({"speedup": 2.6, "latency_ms": 0.45, "accuracy": 96.0})
    points = plots.accuracy_points(report)
    assert (1.0, 98.5, "dense") in points and (2.1, 97.9, "compressed") in points
    assert (2.6, 96.0, "candidate") in points and len(points) == 3


def test_accuracy_plot_skipped_without_accuracy_and_stale_file_removed(tmp_path):
    assert plots.ACCURACY_PNG in plots.write_run_plots(tmp_path, REPORT)
    data_free = copy.deepcopy(REPORT)
    data_free["accuracy"] = {"dense": None, "compressed": None, "drop": None}
    assert plots.write_run_plots(tmp_path, data_free) == [plots.LAYERS_PNG]
    assert not (tmp_path / plots.ACCURACY_PNG).exists()


def test_nothing_to_plot_writes_nothing(tmp_path):
    assert plots.write_run_plots(tmp_path, {"layers": [], "accuracy": {}, "search": {}}) == []
    assert list(tmp_path.iterdir()) == []


def test_write_report_links_the_plots_in_markdown(tmp_path):
    write_report(tmp_path, copy.deepcopy(REPORT))
    markdown = (tmp_path / "report.md").read_text()
    assert "## Plots" in markdown
    assert f"![{plots.LAYERS_PNG}]({plots.LAYERS_PNG})" in markdown
    assert f"![{plots.ACCURACY_PNG}]({plots.ACCURACY_PNG})" in markdown
    assert (tmp_path / plots.LAYERS_PNG).is_file() and (tmp_path / "report.json").is_file()
