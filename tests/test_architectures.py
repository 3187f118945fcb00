"""Every architecture family, from a fresh model to an exported ONNX model searched at a measured 2x.

Each test runs the whole pipeline (prune -> finetune -> shrink -> export -> profile) data-free on a
model from tests/archs/, loaded the way a user's file is (`path/to/file.py:factory`). The models are
sized so that compute, not ONNX Runtime's per-operator overhead, sets their latency at batch 1.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import assert_meets_target
from deploycompress import load_compressed
from deploycompress.attention_heads import PrunedMultiheadAttention, head_mask_hook
from deploycompress.graph import ChannelMasks, GroupGraph, apply_plan
from deploycompress.models.loading import bake_reparametrizations, build_user_model
from deploycompress.pipeline import run_pipeline
from deploycompress.recipe import FinetuneConfig, ProfileConfig, PruneConfig, RunConfig

ARCHS = Path(__file__).parent / "archs"


def compress(tmp_path: Path, factory: str, input_shape: str) -> dict:
    config = RunConfig(
        model=f"{ARCHS / factory}", input_shape=input_shape, data="none", target_speedup=2.0,
        out=str(tmp_path / "run"),
        # max_overshoot 0.9: accept the first candidate between 2.06x and 3.8x, which keeps the
        # search to two or three candidates and leaves margin for the final, noisier measurement.
        prune=PruneConfig(policy="uniform", search_rounds=5, calibration_samples=32, max_overshoot=0.9),
        finetune=FinetuneConfig(epochs=0), profile=ProfileConfig(rounds=10, warmup=3))
    return run_pipeline(config)


def assert_compressed(report: dict, tmp_path: Path) -> None:
    assert (tmp_path / "run" / "model.onnx").is_file()
    assert report["onnx"]["max_abs_diff"] <= report["onnx"]["tolerance"]
    assert report["params"]["compressed"] < report["params"]["dense"]
    assert_meets_target(report)


def assert_loads_as_the_shipped_model(run_dir: Path, factory: str, x: torch.Tensor) -> None:
    """load_compressed rebuilds, from a fresh instance of the architecture, the network model.onnx holds."""
    import onnxruntime as ort

    model = load_compressed(run_dir, build_user_model(f"{ARCHS / factory}", 10))
    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    shipped = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(model(x), torch.from_numpy(shipped), atol=1e-4)


def layer(report: dict, name: str) -> dict:
    return next(entry for entry in report["layers"] if entry["name"] == name)


# -- convolutional families ------------------------------------------------------------------------

@pytest.mark.parametrize("factory", ["residual.py:make", "squeeze_excite.py:make", "densenet.py:make",
                                     "mobilenet.py:make"],
                         ids=["residual-projection", "squeeze-excite", "dense-concat", "inverted-residual-depthwise"])
def test_conv_family_reaches_2x(tmp_path, factory):
    report = compress(tmp_path, factory, "1,3,32,32")
    assert_compressed(report, tmp_path)
    assert report["skipped_groups"] == []
    assert all(entry["channels_after"] < entry["channels_before"] for entry in report["layers"])


def test_grouped_conv_keeps_equal_groups(tmp_path):
    report = compress(tmp_path, "resnext.py:make", "1,3,32,32")
    assert_compressed(report, tmp_path)
    # 96 channels in 8 conv groups: a unit is one channel offset in all 8 groups, so 12 units.
    grouped = layer(report, "blocks.0.grouped.0")
    assert grouped["channels_before"] == 12 and grouped["channels_after"] < 12


def test_group_norm_model_reaches_2x(tmp_path):
    report = compress(tmp_path, "groupnorm.py:make", "1,3,32,32")
    assert_compressed(report, tmp_path)
    assert report["skipped_groups"] == []
    # 96 channels in 8 norm groups: a unit is one channel offset in all 8 groups, so 12 units
    assert layer(report, "residual.0")["channels_before"] == 12
    assert all(entry["channels_after"] < entry["channels_before"] for entry in report["layers"])


def assert_masked_equals_pruned(model: nn.Module, graph: GroupGraph, example: torch.Tensor, plan: dict,
                                x: torch.Tensor) -> nn.Module:
    """The model under the masks of `plan` computes what the model physically pruned to it does, on
    `x`. Returns the pruned copy."""
    masks = ChannelMasks(graph, plan)
    with torch.no_grad():
        masked = model(x)
    masks.remove()
    pruned = apply_plan(copy.deepcopy(model), example, plan)
    with torch.no_grad():
        assert torch.allclose(masked, pruned(x), atol=1e-5)
    return pruned


def assert_masked_norm_equals_pruned(model: nn.Module, kept_units) -> tuple[GroupGraph, list[int], nn.Module]:
    """conv -> norm -> conv with random affine terms: the norm's one group, under the masks of a plan
    keeping `kept_units(units)`, computes what the pruned model does. Returns the graph, the kept units
    and the pruned model."""
    nn.init.normal_(model[1].weight)
    nn.init.normal_(model[1].bias)
    graph = GroupGraph(model, torch.zeros(1, 3, 8, 8), verify=True)
    assert graph.skipped == [] and [g.name for g in graph.groups] == ["0"]
    plan = {"0": kept_units(graph["0"].channels)}
    pruned = assert_masked_equals_pruned(model, graph, torch.zeros(1, 3, 8, 8), plan, torch.randn(2, 3, 8, 8))
    return graph, plan["0"], pruned


@pytest.mark.parametrize("num_groups", [1, 4, 12])
def test_masked_group_norm_equals_pruned(num_groups):
    """ChannelMasks renormalises a GroupNorm over the kept channels in as many groups, which is what the
    pruned GroupNorm (Torch-Pruning keeps num_groups) computes; with trained-looking affine terms."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 48, 3, padding=1), nn.GroupNorm(num_groups, 48), nn.SiLU(),
                          nn.Conv2d(48, 8, 3, padding=1)).eval()
    graph, kept, pruned = assert_masked_norm_equals_pruned(model, lambda units: [u for u in range(units) if u % 3])
    assert graph["0"].channels == 48 // num_groups if num_groups > 1 else 48
    assert pruned[1].num_channels == len(graph["0"].root_channels(kept)) and pruned[1].num_groups == num_groups


def test_group_norm_of_single_channels_is_left_dense_with_its_reason():
    """num_groups == num_channels (instance norm by another name): Torch-Pruning keeps num_groups, so no
    channel can go without breaking the norm; the group is left dense and the report says why."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.GroupNorm(16, 16), nn.Conv2d(16, 4, 3)).eval()
    graph = GroupGraph(model, torch.zeros(1, 3, 8, 8), verify=True)
    assert graph.groups == []
    (skipped,) = graph.skipped
    assert "GroupNorm 1 (num_groups=16) would lose its equal groups" in skipped.reason


def test_convnext_prunes_its_residual_streams_through_layer_norm_2d(tmp_path):
    """torchvision's LayerNorm2d (an nn.LayerNorm that permutes NCHW inside forward) normalises dim 1:
    the masks renormalise the kept channels there, so the streams it sits on are pruned, not left dense."""
    report = compress(tmp_path, "convnext.py:make", "1,3,32,32")
    assert_compressed(report, tmp_path)
    assert report["skipped_groups"] == []
    assert {"features.0.0", "features.2.1", "features.4.1"} <= {entry["name"] for entry in report["layers"]}
    assert_loads_as_the_shipped_model(tmp_path / "run", "convnext.py:make", torch.randn(2, 3, 32, 32))


def test_masked_layer_norm_2d_equals_pruned():
    import importlib.util

    spec = importlib.util.spec_from_file_location("convnext_arch", ARCHS / "convnext.py")
    arch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(arch)
    torch.manual_seed(0)
    # 8 channels at 8x8: the input's last dim has the channels' size too, which must not be taken for them
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), arch.LayerNorm2d(8), nn.Conv2d(8, 4, 3)).eval()
    _, kept, pruned = assert_masked_norm_equals_pruned(model, lambda units: [0, 2, 3, 6])
    assert pruned[1].normalized_shape == (len(kept),)


class FloatLayerNorm(nn.LayerNorm):
    """CLIP's LayerNorm: the norm in float32, cast back; channels last as for any LayerNorm."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def test_a_layer_norm_subclass_over_the_last_dim_stays_there_when_dim_1_is_as_wide():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), FloatLayerNorm(16), nn.Linear(16, 4)).eval()
    nn.init.normal_(model[1].weight)
    nn.init.normal_(model[1].bias)
    example = torch.zeros(1, 16, 8)  # 16 tokens of width 16 after the first Linear
    graph = GroupGraph(model, example, verify=True)
    assert graph.skipped == [] and [g.name for g in graph.groups] == ["0"]
    plan = {"0": [0, 3, 5, 6, 9, 12, 15]}
    assert_masked_equals_pruned(model, graph, example, plan, torch.randn(2, 16, 8))


def test_gated_units_reach_2x(tmp_path):
    report = compress(tmp_path, "gated.py:make", "1,3,32,32")
    assert_compressed(report, tmp_path)
    assert report["skipped_groups"] == []
    # 192 channels chunked into 96 values and 96 gates: a unit is a value and its gate, so 96 units
    assert layer(report, "gate")["channels_before"] == 96


def test_glu_halves_are_removed_together():
    """Channel i of one half of a chunk(2) and channel i of the other meet in `a * sigmoid(b)`:
    Torch-Pruning removes both when asked for one, so a plan's unit is the pair. With a channel a unit,
    keeping the first half of the channels removed every channel (an export of 0 channels)."""
    model = build_user_model(f"{ARCHS / 'gated.py:make'}", 10).eval()
    example = torch.zeros(1, 3, 32, 32)
    graph = GroupGraph(model, example, verify=True)
    assert graph["gate"].units == [[i, i + 96] for i in range(96)]
    assert graph["gated_tanh"].units == [[i, i + 64] for i in range(64)]
    plan = {"gate": list(range(48)), "gated_tanh": [u for u in range(64) if u % 3]}
    pruned = assert_masked_equals_pruned(model, graph, example, plan, torch.randn(2, 3, 32, 32))
    assert pruned.gate.out_channels == 96 and pruned.mix[0].in_channels == 48
    assert pruned.gated_tanh.out_channels == 2 * len(plan["gated_tanh"]) == 2 * pruned.fc.in_features


class GhostModule(nn.Module):
    """GhostNet's module: half the channels from a 1x1 conv, the other half a depthwise conv of them."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.primary = nn.Sequential(nn.Conv2d(cin, cout // 2, 1, bias=False), nn.BatchNorm2d(cout // 2), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(cout // 2, cout // 2, 3, padding=1, groups=cout // 2, bias=False),
                                   nn.BatchNorm2d(cout // 2), nn.ReLU())

    def forward(self, x):
        a = self.primary(x)
        return torch.cat([a, self.cheap(a)], 1)


def test_a_concat_of_a_tensor_and_a_depthwise_conv_of_it_keeps_its_pairs():
    """Position i of the concat and position 24 + i are one channel of the primary conv (the depthwise
    conv maps it to itself): Torch-Pruning removes both when asked for one, so a unit is the pair. With a
    channel a unit, the latency table's narrowest variant removed every channel and the run stopped at
    "ONNX export failed: ... weight of size [0, 32, 1, 1]"."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), GhostModule(16, 48),
                          nn.Conv2d(48, 48, 3, padding=1, groups=48), nn.ReLU(), GhostModule(48, 32),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    example = torch.zeros(1, 3, 16, 16)
    graph = GroupGraph(model, example, verify=True)
    assert graph["2"].units == [[i, i + 24] for i in range(24)]
    plan = {g.name: list(range(g.channels))[:1] for g in graph.groups}  # the narrowest: one unit each
    pruned = assert_masked_equals_pruned(model, graph, example, plan, torch.randn(2, 3, 16, 16))
    assert pruned[2].out_channels == 2 and pruned[1].primary[0].out_channels == 1


def test_glu_function_is_left_dense_with_its_reason():
    """F.glu halves its input, which Torch-Pruning maps as an elementwise op: a group through it is left
    dense, said in one line, even where a removal happens to pass the verification trial."""
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.GLU(dim=1), nn.Conv2d(16, 4, 3)).eval()
    graph = GroupGraph(model, torch.zeros(1, 3, 8, 8), verify=True)
    assert graph.groups == []
    (skipped,) = graph.skipped
    assert skipped.name == "0" and "F.glu / nn.GLU" in skipped.reason


def test_reparametrized_weights_are_baked_and_pruned(tmp_path):
    """weight_norm (both APIs) and spectral_norm: Torch-Pruning cannot prune a reparametrized weight, so
    they are baked into plain weights first (exactly, in eval mode), said in the report's notes."""
    model = build_user_model(f"{ARCHS / 'weightnorm.py:make'}", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    assert bake_reparametrizations(model) == ["c1 (WeightNorm)", "c2 (weight_norm)", "c3 (spectral_norm)"]
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert bake_reparametrizations(model) == []
    graph = GroupGraph(model, x[:1], verify=True)
    assert graph.skipped == [] and {g.name for g in graph.groups} == {"c1", "c2", "c3"}
    report = compress(tmp_path, "weightnorm.py:make", "1,3,32,32")
    assert_compressed(report, tmp_path)
    assert report["skipped_groups"] == []
    assert any("c1 (WeightNorm), c2 (weight_norm), c3 (spectral_norm)" in note for note in report["notes"])
    assert_loads_as_the_shipped_model(tmp_path / "run", "weightnorm.py:make", torch.randn(3, 3, 32, 32))


def test_conv1d_sequence_model_reaches_2x(tmp_path):
    report = compress(tmp_path, "conv1d.py:make", "1,8,512")
    assert_compressed(report, tmp_path)


def test_conv3d_volume_model_reaches_2x(tmp_path):
    report = compress(tmp_path, "volumetric.py:make", "1,1,16,16,16")
    assert_compressed(report, tmp_path)
    assert all(entry["channels_after"] < entry["channels_before"] for entry in report["layers"])


def test_transposed_conv_decoder_reaches_2x(tmp_path):
    report = compress(tmp_path, "decoder.py:make", "1,3,32,32")
    assert_compressed(report, tmp_path)
    assert layer(report, "up.0")["channels_after"] < layer(report, "up.0")["channels_before"] == 64


def test_mlp_reaches_2x(tmp_path):
    report = compress(tmp_path, "mlp.py:make", "1,256")
    assert_compressed(report, tmp_path)


# -- transformers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("factory,attention", [("transformer.py:make_blocks", "blocks.0.attn"),
                                               ("transformer.py:make_encoder", "encoder.layers.0.self_attn")],
                         ids=["multihead-attention-blocks", "transformer-encoder-layer"])
def test_transformer_prunes_heads_and_mlp(tmp_path, factory, attention):
    report = compress(tmp_path, factory, "1,64,32")
    assert_compressed(report, tmp_path)
    heads = layer(report, attention)
    assert heads["channels_before"] == 8 and heads["channels_after"] < 8
    assert any(entry["channels_after"] < entry["channels_before"] == 512 for entry in report["layers"])  # MLP
    # The residual stream runs through every LayerNorm and attention module: left dense, with the reason.
    (stream,) = report["skipped_groups"]
    assert "embedding width of nn.MultiheadAttention" in stream["reason"]
    assert_loads_as_the_shipped_model(tmp_path / "run", factory, torch.randn(3, 64, 32))


@pytest.mark.parametrize("factory", ["text.py:make_cnn", "text.py:make_transformer"],
                         ids=["textcnn", "text-transformer"])
def test_token_id_model_reaches_2x(tmp_path, factory):
    """A model that looks its input up in an nn.Embedding is fed int64 ids below the input embedding's
    size (not the position embedding's 64), exported with an int64 input, and compressed like any other."""
    import onnxruntime as ort

    report = compress(tmp_path, factory, "1,64")
    assert_compressed(report, tmp_path)
    assert report["input"] == {"shape": [1, 64], "dtype": "int64", "token_ids_below": 1000}
    (graph_input,) = ort.InferenceSession(str(tmp_path / "run" / "model.onnx")).get_inputs()
    assert graph_input.type == "tensor(int64)"


def _attention_inputs(batch_first: bool):
    torch.manual_seed(0)
    q, k = torch.randn(2, 5, 16), torch.randn(2, 7, 12)
    v = torch.randn(2, 7, 20)
    if not batch_first:
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, -2:] = True
    per_head_mask = torch.randn(2 * 4, 5, 7)  # one float mask per (sample, head)
    return q, k, v, padding, per_head_mask


@pytest.mark.parametrize("batch_first", [True, False])
def test_masked_and_pruned_attention_agree(batch_first):
    """The masking hook and the shrunk module compute the same thing, masks and weights included."""
    mha = nn.MultiheadAttention(16, 4, kdim=12, vdim=20, batch_first=batch_first).eval()
    q, k, v, padding, per_head_mask = _attention_inputs(batch_first)
    kept = [0, 2, 3]
    handle = mha.register_forward_hook(head_mask_hook(kept), with_kwargs=True)
    masked = mha(q, k, v, key_padding_mask=padding, attn_mask=per_head_mask, average_attn_weights=False)
    handle.remove()
    pruned = PrunedMultiheadAttention(mha, kept)(q, k, v, key_padding_mask=padding, attn_mask=per_head_mask,
                                                 average_attn_weights=False)
    assert torch.allclose(masked[0], pruned[0], atol=1e-6)
    assert masked[1].shape == pruned[1].shape == (2, 3, 5, 7)
    assert torch.allclose(masked[1], pruned[1], atol=1e-6)


def test_all_heads_kept_matches_torch():
    mha = nn.MultiheadAttention(16, 4, kdim=12, vdim=20, batch_first=True).eval()
    q, k, v, padding, _ = _attention_inputs(True)
    expected = mha(q, k, v, key_padding_mask=padding)
    got = PrunedMultiheadAttention(mha, [0, 1, 2, 3])(q, k, v, key_padding_mask=padding)
    assert torch.allclose(expected[0], got[0], atol=1e-5) and torch.allclose(expected[1], got[1], atol=1e-6)


def test_masked_heads_still_train():
    """Fine-tuning runs on the masked model: kept heads get gradients, removed heads none."""
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    mha.register_forward_hook(head_mask_hook([1, 3]), with_kwargs=True)
    x = torch.randn(2, 5, 16)
    mha(x, x, x)[0].pow(2).sum().backward()
    rows = mha.in_proj_weight.grad.abs().sum(1).view(3, 4, 4).sum((0, 2))  # per head, over q/k/v rows
    assert rows[1] > 0 and rows[3] > 0 and rows[0] == 0 and rows[2] == 0


def test_layer_norm_stream_is_pruned_exactly():
    """Without attention, a residual stream through LayerNorm is prunable: the mask recomputes the
    LayerNorm over the kept channels, which is what the pruned LayerNorm computes."""

    class MixerBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.norm = nn.Linear(8, 32), nn.LayerNorm(32)
            self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
            self.head = nn.Linear(32, 3)

        def forward(self, x):
            x = self.embed(x)
            return self.head(x + self.mlp(self.norm(x)))

    model, x = MixerBlock().eval(), torch.randn(4, 8)
    graph = GroupGraph(model, x[:1], verify=True)
    assert {g.name for g in graph.groups} == {"embed", "mlp.0"} and graph.skipped == []
    plan = {"embed": list(range(0, 32, 2)), "mlp.0": list(range(40))}
    pruned = assert_masked_equals_pruned(model, graph, x[:1], plan, x)
    assert pruned.norm.normalized_shape == (16,)


# -- what cannot be pruned -------------------------------------------------------------------------

def test_unsafe_groups_are_left_dense_with_one_line_each(tmp_path, capsys):
    report = compress(tmp_path, "awkward.py:make", "1,3,32,32")
    assert_compressed(report, tmp_path)
    reasons = {s["name"]: s["reason"] for s in report["skipped_groups"]}
    assert "shape '[2, 4, 8, 32, 32]' is invalid" in reasons["before_shuffle.0"]  # hard-coded reshape
    assert "parameter offset is used directly" in reasons["offset_conv"]
    assert "grouped conv multiplier.0 (groups=16) would lose its equal groups" in reasons["stem.0"]
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("prune: left ")]
    assert sorted(printed) == sorted(f"prune: left {name} dense: {reason}" for name, reason in reasons.items())
    # The rest still pruned, the depthwise multiplier conv included (one of its two outputs per group).
    assert layer(report, "multiplier.0")["channels_after"] == 1
    assert all(layer(report, f"body.{i}.0")["channels_after"] < layer(report, f"body.{i}.0")["channels_before"]
               for i in range(1, 5))


def test_plans_replay_on_a_fresh_model():
    """A plan is names and indices: applied to a fresh copy it gives the same shapes as the original."""
    spec = f"{ARCHS / 'resnext.py'}:make"
    model, x = build_user_model(spec, None).eval(), torch.randn(1, 3, 32, 32)
    graph = GroupGraph(model, x)
    plan = {g.name: list(range(0, g.channels, 2)) for g in graph.groups}
    a = apply_plan(copy.deepcopy(model), x, plan)
    b = apply_plan(build_user_model(spec, None).eval(), x, plan)
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    assert a.blocks[0].grouped[0].in_channels == 48 and a.blocks[0].grouped[0].groups == 8
