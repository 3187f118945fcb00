"""Models where Torch-Pruning's DepGraph cannot follow every channel: the groups it can follow are
pruned, the rest are left dense with their reason, and a model it cannot trace at all is one line."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch import nn

from conftest import assert_meets_target
from test_architectures import assert_loads_as_the_shipped_model, assert_masked_equals_pruned
from deploycompress.errors import UserError
from deploycompress.graph import GroupGraph
from deploycompress.masks import ChannelMasks
from deploycompress.pipeline import run_pipeline
from deploycompress.recipe import FinetuneConfig, ProfileConfig, PruneConfig, RunConfig

SHUFFLENET = f"{Path(__file__).parent / 'archs' / 'shufflenet.py'}:make"


def test_a_mask_that_fails_to_register_leaves_no_hook_behind():
    first, second = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    class Graph:  # the two calls ChannelMasks makes; the second module's removed index is past its width
        def removed_outputs(self, plan):
            return {first: [0], second: [7]}

        def removed_heads(self, plan):
            return {}

    with pytest.raises(IndexError):
        ChannelMasks(Graph(), {})
    assert not first._forward_hooks and not second._forward_hooks


def test_a_model_dependency_graph_cannot_trace_is_one_user_error(monkeypatch):
    def fails(self, *args, **kwargs):
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", fails)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    with pytest.raises(UserError, match=r"^Torch-Pruning could not trace the model's channel dependencies "
                                        r"\(ZeroDivisionError: integer division or modulo by zero\)"):
        GroupGraph(model, torch.randn(1, 3, 16, 16))
    assert all(p.requires_grad for p in model.parameters()) and model.training


def test_shufflenet_prunes_its_branches_and_leaves_the_shuffled_streams_dense(tmp_path):
    """Each of these failed the run before: the channel shuffle's 5-D view divided by zero in DepGraph's
    reshape mapping (the whole trace failed); one root's split mapping raised IndexError (every group
    lost); a group whose mask registration failed left hooks on the model that failed every later trial
    (head.0 and two branches left dense for nothing); the replayed plan's graph still held the groups
    the trial left dense, and scoring them for the report raised IndexError."""
    run = tmp_path / "run"
    config = RunConfig(model=SHUFFLENET, input_shape="1,3,32,32", data="none", target_speedup=1.5, out=str(run),
                       prune=PruneConfig(policy="uniform", search_rounds=6, calibration_samples=32, max_overshoot=0.9),
                       finetune=FinetuneConfig(epochs=0), profile=ProfileConfig(rounds=10, warmup=3))
    report = run_pipeline(config)
    assert_meets_target(report)
    pruned = {entry["name"] for entry in report["layers"]}
    assert pruned == {f"stages.{i}.branch2.1.0" for i in range(9)} | {"stem.0", "head.0"}
    assert all(entry["pqi_after"] is not None for entry in report["layers"])
    reasons = [s["reason"] for s in report["skipped_groups"]]
    assert any(r.startswith("Torch-Pruning could not follow its channels (IndexError") for r in reasons)
    assert any(r.startswith("pruning breaks the model") for r in reasons)
    assert report["params"]["compressed"] < report["params"]["dense"]
    assert_loads_as_the_shipped_model(run, "shufflenet.py:make", torch.randn(1, 3, 32, 32))


class TokenMixer(nn.Module):
    """MLP-Mixer's block: a Linear across the tokens (on the transposed sequence), one across the channels."""

    def __init__(self, tokens: int = 16, dim: int = 32):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.norm = nn.LayerNorm(dim)
        self.tokens = nn.Sequential(nn.Linear(tokens, 2 * tokens), nn.GELU(), nn.Linear(2 * tokens, tokens))
        self.channels = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = x + self.tokens(self.norm(x).transpose(1, 2)).transpose(1, 2)
        return self.head((x + self.channels(x)).mean(1))


def test_a_stream_that_breaks_past_a_transpose_says_so():
    graph = GroupGraph(TokenMixer().eval(), torch.zeros(1, 3, 16, 16), verify=True)
    stream = next(s for s in graph.skipped if s.name == "channels.2")
    assert stream.reason.startswith("pruning breaks the model: IndexError")
    assert stream.reason.endswith("(its channels pass a transpose or permute, which Torch-Pruning follows as if the "
                                  "channel axis stayed in place)")
    # the hidden widths of both MLPs never pass the transpose: they are pruned
    assert {"tokens.0", "channels.0"} <= {g.name for g in graph.groups}


class SuperResolution(nn.Module):
    """ESPCN-style: a pixel shuffle in the middle, and one after the last conv that makes the output."""

    def __init__(self):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.Tanh())
        self.up = nn.Sequential(nn.Conv2d(32, 16 * 4, 3, padding=1), nn.PixelShuffle(2), nn.ReLU())
        self.tail = nn.Sequential(nn.Conv2d(16, 3 * 4, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x):
        return self.tail(self.up(self.head(x)))


def test_a_conv_into_a_pixel_shuffle_is_pruned_in_blocks_of_r_squared():
    """Torch-Pruning maps a pixel shuffle one-to-one; every trial of the upsampler broke ("Given groups=1,
    weight of size [32, 20, 3, 3], expected input ... to have 20 channels, but got 24") and it was left
    dense. tp_fixes maps input channel i to output channel i // 4, and a unit is the 4 channels of one
    output channel. The conv before the output's pixel shuffle is the output layer (its 12 channels are
    the output's 3 at twice the size), not a group."""
    import copy

    from deploycompress.graph import apply_plan

    model = SuperResolution().eval()
    example = torch.zeros(1, 3, 8, 8)
    graph = GroupGraph(model, example, verify=True)
    assert graph.skipped == [] and graph.output_names == ["tail.0"]
    assert {g.name for g in graph.groups} == {"head.0", "up.0"}
    assert graph["up.0"].units == [[4 * u, 4 * u + 1, 4 * u + 2, 4 * u + 3] for u in range(16)]
    plan = {"head.0": list(range(0, 32, 2)), "up.0": [0, 3, 5, 6, 9, 10, 14]}
    x = torch.randn(2, 3, 8, 8)
    masks = ChannelMasks(graph, plan)
    with torch.no_grad():
        masked = model(x)
    masks.remove()
    pruned = apply_plan(copy.deepcopy(model), example, plan)
    assert pruned.up[0].out_channels == 4 * 7 and pruned.tail[0].in_channels == 7
    with torch.no_grad():
        assert torch.allclose(masked, pruned(x), atol=1e-5)


def test_a_group_into_a_pixel_unshuffle_is_left_dense_with_its_reason():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.PixelUnshuffle(2), nn.Conv2d(32, 4, 1)).eval()
    graph = GroupGraph(model, torch.zeros(1, 3, 8, 8), verify=True)
    assert graph.groups == [] and [s.name for s in graph.skipped] == ["0"]
    assert graph.skipped[0].reason.startswith("it feeds a pixel unshuffle (nn.PixelUnshuffle)")


@pytest.mark.parametrize("last", [nn.Softmax(dim=1), nn.Sigmoid(), nn.BatchNorm1d(10)])
def test_the_classifier_before_a_final_activation_or_norm_is_the_output_layer(last):
    """A classifier ending in nn.Softmax (or a sigmoid, or a norm) had its Linear's 10 classes offered as
    a group, left dense only by the trial, as "pruning changes the shape of the model's outputs"."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
                          last).eval()
    graph = GroupGraph(model, torch.zeros(1, 3, 8, 8), verify=True)
    assert graph.output_names == ["4"] and graph.skipped == []
    assert [g.name for g in graph.groups] == ["0"]


class CrossStagePartial(nn.Module):
    """YOLOv8's C2f: one conv's output chunked in two, a residual bottleneck on the second half, every
    stage concatenated; `two_convs` is Torch-Pruning's YOLOv8 example's rewrite (C2f_v2)."""

    def __init__(self, two_convs: bool):
        super().__init__()
        self.two_convs = two_convs
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.cv1 = nn.Conv2d(16, 32, 1)
        self.cv0, self.cv1b = nn.Conv2d(16, 16, 1), nn.Conv2d(16, 16, 1)
        self.m = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.cv2 = nn.Conv2d(48, 32, 1)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = [self.cv0(x), self.cv1b(x)] if self.two_convs else list(self.cv1(x).chunk(2, 1))
        y.append(y[-1] + self.m(y[-1]))
        return self.fc(self.cv2(torch.cat(y, 1)).mean((2, 3)))


class PartialConv(nn.Module):
    """FasterNet's partial conv written as an in-place write to a channel slice."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.mlp = nn.Sequential(nn.Conv2d(32, 64, 1), nn.ReLU(), nn.Conv2d(64, 32, 1))
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        x = self.stem(x)
        y = x.clone()
        y[:, :8] = self.conv(x[:, :8])
        return self.fc((x + self.mlp(y)).mean((2, 3)))


def test_a_split_concatenated_again_says_why_it_breaks_and_the_rewrite_is_pruned():
    """A C2f's chunked stream was left dense with a bare "IndexError: index 48 is out of bounds"; the reason
    now says what Torch-Pruning gets wrong and which rewrite it prunes (every group, checked here)."""
    x = torch.zeros(1, 3, 8, 8)
    graph = GroupGraph(CrossStagePartial(two_convs=False).eval(), x, verify=True)
    (stream,) = [s for s in graph.skipped if s.reason.startswith("pruning breaks the model")]
    assert stream.reason.endswith("(its channels pass a split whose parts are concatenated again, as in YOLOv8's C2f "
                                  "or Res2Net, and Torch-Pruning maps the concat's offsets wrongly there; where the "
                                  "split cuts one conv's output in two, two convs in its place are pruned)")
    rewritten = GroupGraph(CrossStagePartial(two_convs=True).eval(), x, verify=True)
    assert rewritten.skipped == [] and {"cv0", "cv1b", "m.0", "stem"} <= {g.name for g in rewritten.groups}


def test_an_in_place_write_to_a_channel_slice_says_so():
    graph = GroupGraph(PartialConv().eval(), torch.zeros(1, 3, 8, 8), verify=True)
    (stream,) = [s for s in graph.skipped if s.reason.startswith("pruning breaks the model")]
    assert stream.reason.endswith("(its channels are written in place through a slice, `x[:, :k] = ...`, which "
                                  "Torch-Pruning does not follow)")
    assert "mlp.0" in {g.name for g in graph.groups}  # the MLP's hidden width never passes the slice


class QkvAttention(nn.Module):
    """timm's Attention: one qkv Linear, split into heads by a reshape whose sizes forward fixes."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = x + self.proj((q @ k.transpose(-2, -1)).softmax(-1).matmul(v).transpose(1, 2).reshape(b, n, c))
        return self.head((x + self.mlp(x)).mean(1))


def test_a_qkv_split_into_heads_by_a_fixed_reshape_says_so():
    graph = GroupGraph(QkvAttention().eval(), torch.zeros(1, 6, 32), verify=True)
    (qkv,) = [s for s in graph.skipped if s.name == "qkv"]
    assert "is invalid for input of size" in qkv.reason
    assert qkv.reason.endswith("those sizes do not shrink with the channels. Attention written with "
                               "nn.MultiheadAttention has its heads pruned whole)")
    assert "mlp.0" in {g.name for g in graph.groups}  # the MLP's hidden width is pruned


class FrozenBatchNorm2d(nn.Module):
    """torchvision.ops.FrozenBatchNorm2d: statistics and affine as buffers (detection backbones)."""

    def __init__(self, n: int):
        super().__init__()
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, torch.randn(n).abs() + 0.5 if name != "bias" else torch.randn(n))

    def forward(self, x):
        scale = self.weight * (self.running_var + 1e-5).rsqrt()
        return x * scale.reshape(1, -1, 1, 1) + (self.bias - self.running_mean * scale).reshape(1, -1, 1, 1)


def test_a_frozen_batch_norm_is_pruned_with_its_conv():
    """Torch-Pruning prunes parameters only, so a norm whose statistics are buffers kept every channel and
    every trial broke ("The size of tensor a (48) must match the size of tensor b (64)")."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), FrozenBatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 8, 3, padding=1), FrozenBatchNorm2d(8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    example = torch.zeros(1, 3, 6, 6)
    graph = GroupGraph(model, example, verify=True)
    assert graph.skipped == [] and [(g.name, g.members) for g in graph.groups] == [
        ("3", ["3", "4", "7"]), ("0", ["0", "1", "3"])]
    x = torch.randn(4, 3, 6, 6)
    pruned = assert_masked_equals_pruned(model, graph, example, {"0": [1, 4, 9, 15], "3": [0, 2, 5]}, x)
    assert pruned[1].running_mean.shape == (4,) and pruned[4].weight.shape == (3,)
    assert pruned[1].running_mean.tolist() == model[1].running_mean[[1, 4, 9, 15]].tolist()
