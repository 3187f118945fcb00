"""`deploycompress profile` and the ORT profiler parsing behind it (deploycompress.latency.profiler)."""
from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from deploycompress.cli import main
from deploycompress.latency.profiler import (ORT_INSERTED, TOP_LEVEL, LayerMap, aggregate_events, module_path,
                                              resolve_layer, time_outside)
from deploycompress.onnx_export import export_bytes


class Block(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class TinyNet(nn.Module):
    """Sequential children and a residual block: the two naming patterns the layer mapping handles."""

    def __init__(self, channels: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU())
        self.layers = nn.Sequential(Block(channels))
        self.fc = nn.Linear(channels, 4)

    def forward(self, x):
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def tiny_bytes() -> bytes:
    torch.manual_seed(0)
    return export_bytes(TinyNet(), torch.randn(1, 3, 8, 8))


@pytest.fixture()
def tiny_model(tmp_path, tiny_bytes):
    path = tmp_path / "tiny.onnx"
    path.write_bytes(tiny_bytes)
    return path


def run_cli(args: list[str]) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.parametrize("name, layer", [
    ("/layers.0/conv1/Conv", "layers.0.conv1"),
    ("/layers/layers.0/conv2/Conv", "layers.0.conv2"),
    ("/layers/layers.2/shortcut/shortcut.0/Conv", "layers.2.shortcut.0"),
    ("/stem/stem.0/Conv", "stem.0"),
    ("/Flatten", ""),
])
def test_module_path_turns_exporter_scopes_into_module_names(name, layer):
    assert module_path(name) == layer


@pytest.mark.parametrize("layer, resolved", [
    ("mlp.0", "blocks.0.mlp.0"),  # first call: the first module whose path ends so
    ("mlp.0_1", "blocks.1.mlp.0"),  # "_1": the second
    ("attn_1", "blocks.1.attn"),
    ("blocks.0.attn", "blocks.0.attn"),  # already a module's path
    ("blocks.0.attn.out_proj", "blocks.0.attn.out_proj"),  # inside one
    ("attn_7", "attn_7"),  # no eighth: left as it is
    ("(top level)", "(top level)"),
])
def test_resolve_layer_finds_modules_the_exporter_scoped_by_name_alone(layer, resolved):
    modules = ["blocks.0.attn", "blocks.0.mlp.0", "blocks.1.attn", "blocks.1.mlp.0"]
    assert resolve_layer(layer, modules) == resolved


@pytest.mark.parametrize("layer, resolved", [
    ("shared.0", "shared.0"),
    ("shared.0_1", "shared.0"),  # the same module called again (weights shared across steps)
    ("shared.0_2", "shared.0"),
    ("cell_3", "body.cell"),  # one module of that name: every call is its own
    ("other_1", "other_1"),  # no module of that name: left as it is
])
def test_resolve_layer_gives_a_module_called_several_times_all_its_calls(layer, resolved):
    assert resolve_layer(layer, ["stem", "shared", "shared.0", "shared.1", "body", "body.cell", "fc"]) == resolved


def test_time_outside_names_modules_and_what_has_no_module():
    breakdown = {"total_ms": 10.0, "layers": [
        {"name": "lstm", "ms": 5.0}, {"name": ORT_INSERTED, "ms": 2.0}, {"name": TOP_LEVEL, "ms": 1.0},
        {"name": "fc", "ms": 2.0}]}
    text = time_outside(breakdown, {"lstm": "LSTM", "fc": "Linear"}, reached={"fc"})
    assert text == ("80% of the dense model's time is in layers no channel group reaches: lstm (LSTM) 50%, "
                    "layout reorders ONNX Runtime inserts 20%, ops in the model's own forward 10%")



def test_time_outside_says_a_module_with_pruned_layers_inside_is_there_for_its_own_ops():
    """ShuffleNet: each unit's branch is pruned; the unit's concat, reshape and transpose are not."""
    breakdown = {"total_ms": 10.0, "layers": [
        {"name": "stages.1", "ms": 3.0}, {"name": "stages.1.branch.0", "ms": 5.0}, {"name": "head", "ms": 2.0}]}
    types = {"stages": "Sequential", "stages.1": "ShuffleUnit", "stages.1.branch": "Sequential",
             "stages.1.branch.0": "Conv2d", "head": "Conv2d"}
    text = time_outside(breakdown, types, reached={"stages.1.branch.0"})
    assert text == ("50% of the dense model's time is in layers no channel group reaches: stages.1 (ShuffleUnit, "
                    "the ops in its own forward) 30%, head (Conv2d) 20%")


def test_layer_map_follows_ort_fusions_back_to_the_conv(tiny_bytes):
    layers = LayerMap(onnx.load_from_string(tiny_bytes))
    # ORT names a fused Conv+BN+Relu after the Relu's output tensor, plus its own suffix.
    assert layers.layer("/layers/layers.0/Relu_output_0_nchwc") == "layers.0.conv1"
    assert layers.layer("/layers/layers.0/conv2/Conv_output_0_nchwc") == "layers.0.conv2"
    assert layers.layer("/stem/stem.0/Conv") == "stem.0"
    assert layers.layer("ReorderOutput") == ORT_INSERTED
    assert layers.layer("fused /fc/Gemm") == "fc"  # a Gemm fused with its activation
    assert LayerMap(None).layer("fused /fc/Gemm") == "fc"
    assert LayerMap(None).layer("/layers.3/conv1/Conv_token_7") == "layers.3.conv1"


def _event(cat, name, ts, dur, op=None):
    event = {"cat": cat, "name": name, "ts": ts, "dur": dur, "ph": "X", "args": {}}
    if op:
        event["args"] = {"op_name": op, "provider": "CPUExecutionProvider"}
    return event


def test_aggregate_events_drops_warmup_and_takes_per_node_medians():
    events = []
    # Run 0 is warm-up (slow, must be dropped); runs 1-3 are timed; run 2 was preempted inside conv_a.
    for run, conv_a in enumerate([900, 100, 700, 100]):
        start = run * 1000
        events.append(_event("Session", "model_run", start, 500))
        events.append(_event("Node", "/a/conv/Conv_kernel_time", start + 1, conv_a, "Conv"))
        events.append(_event("Node", "/b/conv/Conv_kernel_time", start + 2, 300, "Conv"))
        events.append(_event("Node", "/b/Relu_kernel_time", start + 3, 100, "Relu"))
        events.append(_event("Node", "/b/Relu_fence_before", start + 3, 1))  # not a kernel event
    result = aggregate_events(events, LayerMap(None), warmup_runs=1)
    assert result["runs"] == 3
    nodes = {row["name"]: row for row in result["nodes"]}
    assert nodes["/a/conv/Conv"]["ms"] == pytest.approx(0.1)  # median of 100, 700, 100 us
    assert nodes["/b/conv/Conv"]["layer"] == "b.conv"
    operators = {row["name"]: row for row in result["operators"]}
    assert operators["Conv"]["ms"] == pytest.approx(0.4) and operators["Conv"]["nodes"] == 2
    assert result["total_ms"] == pytest.approx(0.5)
    assert sum(row["share"] for row in result["layers"]) == pytest.approx(1.0)
    assert [row["name"] for row in result["layers"]][0] == "b.conv"  # ranked by time
    with pytest.raises(ValueError):
        aggregate_events(events, LayerMap(None), warmup_runs=4)


def test_profile_sweeps_threads_and_batches_and_writes_json_and_markdown(tiny_model, tmp_path, capsys):
    md = tmp_path / "profile.md"
    code = run_cli(["profile", tiny_model, "--threads", "1,2", "--batch-size", "1,2", "--rounds", "3",
                    "--warmup", "1", "--profile-runs", "3", "--md", md])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "median ms" in out and "by layer" in out and "layers.0.conv1" in out
    result = json.loads((tmp_path / "tiny.profile.json").read_text())  # default: next to the model
    assert [(c["threads"], c["batch_size"]) for c in result["configs"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert result["ort"] == ort.__version__ and result["cpu"]["model"]
    for config in result["configs"]:
        assert config["latency"]["median_ms"] > 0 and config["latency"]["rounds"] == 3
        assert config["latency"]["p90_ms"] >= config["latency"]["min_ms"]
        assert config["fingerprint"]["threads"] == config["threads"]
        # one session timed alone: ORT's default pool, as a deployment of this model runs (not the
        # spinning stop that interleaved pairs need from two threads up)
        assert "spinning" not in config["fingerprint"]
        layers = {row["name"] for row in config["breakdown"]["layers"]}
        assert {"stem.0", "layers.0.conv1", "layers.0.conv2", "fc"} <= layers
        assert "Conv" in {row["name"] for row in config["breakdown"]["operators"]}
    text = md.read_text()
    assert "| threads | batch |" in text and "## By layer: threads 2, batch 2" in text


def test_profile_json_option_sets_the_path(tiny_model, tmp_path, capsys):
    target = tmp_path / "out" / "p.json"
    assert run_cli(["profile", tiny_model, "--rounds", "3", "--warmup", "0", "--profile-runs", "1",
                    "--json", target]) == 0
    assert json.loads(target.read_text())["configs"][0]["threads"] == 1  # one thread by default


@pytest.mark.parametrize("args, message", [
    (["--threads", "1,x"], "--threads"),
    (["--batch-size", "0"], "--batch-size"),
])
def test_profile_rejects_bad_lists_in_one_line(tiny_model, capsys, args, message):
    assert run_cli(["profile", tiny_model, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_profile_missing_model_is_one_line(tmp_path, capsys):
    assert run_cli(["profile", tmp_path / "nope.onnx"]) == 2
    assert "model not found" in capsys.readouterr().err


def test_profile_fixed_batch_model_says_why(tmp_path, capsys):
    path = tmp_path / "fixed.onnx"
    with torch.no_grad():
        torch.onnx.export(nn.Conv2d(3, 4, 3), (torch.randn(1, 3, 8, 8),), str(path), dynamo=False)
    assert run_cli(["profile", path, "--batch-size", "4", "--rounds", "3"]) == 2
    assert "fixed batch of 1" in capsys.readouterr().err


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA EP present")
def test_profile_cuda_without_the_cuda_provider_says_why(tiny_model, capsys):
    assert run_cli(["profile", tiny_model, "--device", "cuda", "--rounds", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "CUDA execution provider" in err and len(err.splitlines()) == 1
