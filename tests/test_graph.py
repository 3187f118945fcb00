"""Groups, masks and physical shrinking agree exactly on the zoo models."""
import copy
import random

from pathlib import Path

import pytest
import torch
import torch_pruning as tp

from deploycompress.graph import ChannelMasks, GroupGraph, apply_plan, round_channels
from deploycompress.model_size import count_params
from deploycompress.models.loading import build_user_model
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


def _described(graph: GroupGraph) -> list:
    return [(g.name, g.channels, g.members, g.units, [(str(dep), list(idxs)) for dep, idxs in g.tp_group])
            for g in graph.groups]


@pytest.mark.parametrize("spec,shape", [("resnet_digits", (1, 1, 16, 16)), ("gated.py:make", (1, 3, 32, 32)),
                                        ("transformer.py:make_blocks", (1, 16, 32))])
def test_a_graph_built_for_some_groups_holds_them_as_a_full_build_does(spec, shape):
    """apply_plan and the masks build only the plan's groups (GroupGraph(only=...)): the same groups,
    members, units and DepGraph indices as a full build, and nothing else."""
    model = (create_model(spec) if ".py:" not in spec else
             build_user_model(f"{Path(__file__).parent / 'archs' / spec}", 10)).eval()
    x = torch.zeros(shape)
    full = GroupGraph(model, x)
    names = [g.name for g in full.groups]
    assert len(names) >= 3
    for subset in (names, names[::2], names[-1:]):
        part = GroupGraph(model, x, only=subset)
        assert _described(part) == [d for d in _described(full) if d[0] in subset]


def test_a_split_whose_parts_never_meet_again_costs_a_few_graph_walks_not_one_per_channel(monkeypatch):
    """Channels of a chunk are unit-coupled only where an elementwise op joins its parts (a GLU); a
    chunk whose halves go their own ways is found uncoupled in 2 log2(channels) walks (ShuffleNet's
    streams: 256 walks of 0.1 s each, every graph build)."""
    class Halves(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 64, 3)
            self.left, self.right = torch.nn.Conv2d(32, 8, 1), torch.nn.Conv2d(32, 8, 1)
            self.head = torch.nn.Linear(16, 4)

        def forward(self, x):
            a, b = self.conv(x).chunk(2, dim=1)
            return self.head(torch.cat((self.left(a), self.right(b)), 1).mean((2, 3)))

    model = Halves().eval()
    walks = []
    original = tp.DependencyGraph.get_pruning_group

    def counted(self, module, pruning_fn, idxs):
        walks.append(module)
        return original(self, module, pruning_fn, idxs)

    monkeypatch.setattr(tp.DependencyGraph, "get_pruning_group", counted)
    graph = GroupGraph(model, torch.zeros(1, 3, 8, 8))
    assert graph["conv"].units is None and graph["conv"].channels == 64
    # its own group's walk, then the channels with each of 6 index bits 0 and 1; left and right, whose
    # outputs pass the concat, the same over their 3 bits
    assert walks.count(model.conv) == 1 + 2 * 6 and len(walks) == 1 + 2 * 6 + 2 * (1 + 2 * 3)
