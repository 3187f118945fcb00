"""Groups, masks and physical shrinking agree exactly on the zoo models."""
import copy
import random

import pytest
import torch

from deploycompress.graph import ChannelMasks, GroupGraph, apply_plan, round_channels
from deploycompress.model_size import count_params
from deploycompress.models import create_model


@pytest.mark.parametrize("name", ["resnet_digits", "vgg_digits", "mobilenet_digits"])
def test_masked_equals_shrunk(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(4, 1, 16, 16)
    graph = GroupGraph(model, x[:1])
    assert graph.groups, "a zoo model must have prunable groups"
    assert "fc" in graph.ignored  # the classifier head is never pruned
    rng = random.Random(0)
    plan = {g.name: sorted(rng.sample(range(g.channels), max(1, g.channels // 2))) for g in graph.groups}
    masks = ChannelMasks(graph, plan)
    with torch.no_grad():
        masked = model(x)
    masks.remove()
    small = apply_plan(copy.deepcopy(model), x[:1], plan)
    with torch.no_grad():
        shrunk = small(x)
    assert torch.allclose(masked, shrunk, atol=1e-5)
    assert count_params(small) < count_params(model)
    with torch.no_grad():  # removing the masks restores the dense model exactly
        assert not torch.allclose(model(x), masked)


def test_resnet_residual_groups_are_coupled():
    model = create_model("resnet_digits").eval()
    graph = GroupGraph(model, torch.zeros(1, 1, 16, 16))
    stem = graph["stem.0"]
    # The stem's channels flow through the identity shortcuts of the first stage: one group.
    assert {"layers.0.conv2", "layers.1.conv2", "stem.1"} <= set(stem.members)


@pytest.mark.parametrize("count,channels,multiple,expected", [
    (20.0, 64, 8, 24), (3.0, 64, 8, 8), (70.0, 64, 8, 64), (5.2, 6, 8, 5), (0.2, 6, 8, 1), (33.0, 64, 1, 33)])
def test_round_channels(count, channels, multiple, expected):
    assert round_channels(count, channels, multiple) == expected


def _layer_norm_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.LayerNorm(64), torch.nn.Linear(64, 4)).eval()
    torch.nn.init.normal_(model[1].weight)
    torch.nn.init.normal_(model[1].bias)
    return model


def test_a_layer_norm_keeping_few_channels_keeps_them_in_order():
    """Kept channels above the set table's size (35, 38, 51, ... of 64) came back from Torch-Pruning's
    LayerNorm pruner in set order, not ascending (deploycompress/tp_fixes.py)."""
    model = _layer_norm_mlp()
    graph = GroupGraph(model, torch.zeros(1, 8), verify=True)
    kept = [0, 1, 10, 13, 18, 21, 22, 23, 28, 35, 38, 51, 54, 57, 58, 63]
    masks = ChannelMasks(graph, {"0": kept})
    x = torch.randn(5, 8)
    with torch.no_grad():
        masked = model(x)
    masks.remove()
    pruned = apply_plan(copy.deepcopy(model), torch.zeros(1, 8), {"0": kept})
    assert torch.equal(pruned[1].weight, model[1].weight[kept])
    with torch.no_grad():
        assert torch.allclose(masked, pruned(x), atol=1e-5)


def test_layer_norm_weights_still_count_in_magnitude_scores():
    """The corrected pruner is the object Torch-Pruning's importances compare handlers with: a LayerNorm
    weight far above the rest still makes its channel the most important."""
    from deploycompress.importance import magnitude_scores

    model = _layer_norm_mlp()
    with torch.no_grad():
        model[1].weight[37] = 1000.0
    graph = GroupGraph(model, torch.zeros(1, 8))
    assert int(magnitude_scores(graph["0"]).argmax()) == 37
