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
