"""nn.LSTM, nn.GRU and nn.RNN: hidden units are pruned as channels (deploycompress/recurrent.py)."""
from __future__ import annotations

import copy

import pytest
import torch
from test_architectures import assert_compressed, assert_loads_as_the_shipped_model, compress, layer
from torch import nn

from deploycompress.graph import ChannelMasks, GroupGraph, apply_plan
from deploycompress.importance import ScoringContext, score_groups
from deploycompress.latency.table import find_operators, operator_widths
from deploycompress.model_size import count_macs
from deploycompress.recurrent import HIDDEN_MULTIPLE


class Reader(nn.Module):
    """A recurrent layer read both ways models read one: its last output step and its final state."""

    def __init__(self, kind: str, layers: int, batch_first: bool, bidirectional: bool = False,
                 own_state: bool = False):
        super().__init__()
        self.rnn = getattr(nn, kind)(12, 32, num_layers=layers, batch_first=batch_first, bidirectional=bidirectional)
        self.fc = nn.Linear(32 * (2 if bidirectional else 1) + 32, 5)
        self.own_state = own_state

    def forward(self, x):
        state = None
        if self.own_state:  # a learned or fixed initial state: zeroed units would not stay zero
            zeros = torch.ones(self.rnn.num_layers, x.shape[0], self.rnn.hidden_size)
            state = (zeros, zeros) if isinstance(self.rnn, nn.LSTM) else zeros
        out, final = self.rnn(x if self.rnn.batch_first else x.transpose(0, 1), state)
        last = out[:, -1] if self.rnn.batch_first else out[-1]
        h = final[0] if isinstance(final, tuple) else final
        return self.fc(torch.cat([last, h[-1]], dim=1))


def masked_and_pruned(model: nn.Module, graph: GroupGraph, example: torch.Tensor, plan: dict, x: torch.Tensor):
    """The model's output on `x` under the plan's masks, and a copy physically pruned to the plan."""
    masks = ChannelMasks(graph, plan)
    with torch.no_grad():
        masked = model(x)
    masks.remove()
    return masked, apply_plan(copy.deepcopy(model), example, plan)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("layers, batch_first, bidirectional", [(1, True, False), (2, False, False), (2, True, True)])
def test_masked_units_equal_removed_ones(kind, layers, batch_first, bidirectional):
    """Zeroing a unit's gate rows is removing it, through every step, layer, direction and the final state."""
    torch.manual_seed(0)
    model = Reader(kind, layers, batch_first, bidirectional).eval()
    example = torch.zeros(1, 9, 12)
    graph = GroupGraph(model, example, verify=True)
    assert graph.skipped == [] and graph["rnn"].recurrent and graph["rnn"].channels == 32
    if bidirectional:  # a unit is its forward and its backward output channel
        assert graph["rnn"].units == [[j, j + 32] for j in range(32)]
    plan = {"rnn": [u for u in range(32) if u % 3 == 1 or u > 25]}
    x = torch.randn(3, 9, 12)
    masked, pruned = masked_and_pruned(model, graph, example, plan, x)
    assert pruned.rnn.hidden_size == len(plan["rnn"])
    # the last step (both directions) and the final state (the last direction) lose them
    assert pruned.fc.in_features == (3 if bidirectional else 2) * len(plan["rnn"])
    with torch.no_grad():
        assert torch.allclose(masked, pruned(x), atol=1e-5)
        assert not torch.allclose(masked, model(x), atol=1e-3)  # the masks did something


class ConvThenGRU(nn.Module):
    """A CRNN: conv features over time into a two-layer GRU, whose final state is read."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(6, 32, 3, padding=1), nn.BatchNorm1d(32), nn.ReLU())
        self.rnn = nn.GRU(32, 24, batch_first=True, num_layers=2)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        _, state = self.rnn(self.conv(x).transpose(1, 2))
        return self.fc(state[-1])


def test_a_conv_group_prunes_the_input_width_of_the_recurrent_layer_it_feeds():
    torch.manual_seed(0)
    model = ConvThenGRU().eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        model.conv[1].running_mean.uniform_(-1, 1)
        model.conv[1].running_var.uniform_(0.5, 2)
    example = torch.zeros(1, 6, 20)
    graph = GroupGraph(model, example, verify=True)
    assert {g.name: g.members for g in graph.groups} == {"conv.0": ["conv.0", "conv.1", "rnn"], "rnn": ["fc", "rnn"]}
    plan = {"conv.0": [c for c in range(32) if c % 3], "rnn": list(range(0, 24, 2))}
    x = torch.randn(3, 6, 20)
    masked, pruned = masked_and_pruned(model, graph, example, plan, x)
    assert (pruned.rnn.input_size, pruned.rnn.hidden_size) == (21, 12)
    with torch.no_grad():
        assert torch.allclose(masked, pruned(x), atol=1e-5)


class PackedLSTM(nn.Module):
    """Variable-length sequences packed before the LSTM, its final state read."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 16, padding_idx=0)
        self.rnn = nn.LSTM(16, 32, batch_first=True)
        self.fc = nn.Linear(32, 5)

    def forward(self, ids):
        lengths = (ids != 0).sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(ids), lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.rnn(packed)
        return self.fc(h[-1])


def test_a_packed_sequence_is_traced_and_masked_exactly():
    """(ONNX export of pack_padded_sequence fails in torch's exporter, so such a model stops there.)"""
    torch.manual_seed(0)
    model = PackedLSTM().eval()
    example = torch.randint(1, 100, (1, 12))
    graph = GroupGraph(model, example, verify=True)
    assert {g.name: g.members for g in graph.groups} == {"rnn": ["fc", "rnn"]} and graph.skipped == []
    plan = {"rnn": list(range(0, 32, 2))}
    ids = torch.randint(1, 100, (3, 12))
    ids[1, 7:] = 0
    masked, pruned = masked_and_pruned(model, graph, example, plan, ids)
    with torch.no_grad():
        assert torch.allclose(masked, pruned(ids), atol=1e-5)


def test_masked_units_stay_out_of_training():
    torch.manual_seed(0)
    model = Reader("LSTM", 2, True)
    graph = GroupGraph(model, torch.zeros(1, 9, 12))
    masks = ChannelMasks(graph, {"rnn": list(range(16))})
    model(torch.randn(4, 9, 12)).square().sum().backward()
    masks.remove()
    hidden = model.rnn.hidden_size
    for name in ("weight_ih_l1", "weight_hh_l0", "bias_hh_l1"):
        rows = getattr(model.rnn, name).grad.view(4, hidden, -1)
        assert rows[:, 16:].abs().sum() == 0 and rows[:, :16].abs().sum() > 0, name


def test_a_model_that_passes_its_own_initial_state_keeps_its_units():
    model = Reader("GRU", 1, True, own_state=True).eval()
    graph = GroupGraph(model, torch.zeros(1, 9, 12), verify=True)
    assert graph.groups == []  # fc is the output layer
    (skipped,) = graph.skipped
    assert skipped.name == "rnn" and skipped.reason.startswith("zeroing its channels is not the same as removing them")


def test_an_lstm_with_a_projection_keeps_its_units_with_the_reason():
    model = nn.Sequential(nn.LSTM(12, 32, proj_size=16, batch_first=True)).eval()

    class LastStep(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.fc = model[0], nn.Linear(16, 5)

        def forward(self, x):
            return self.fc(self.lstm(x)[0][:, -1])

    graph = GroupGraph(LastStep().eval(), torch.zeros(1, 9, 12), verify=True)
    assert graph.groups == []
    (skipped,) = graph.skipped
    assert skipped.name == "lstm" and skipped.reason.startswith("an LSTM with proj_size")


class BidirectionalStack(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(12, 32, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(64, 24, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(48, 5)

    def forward(self, x):
        return self.fc(self.gru(self.lstm(x)[0])[0][:, -1])


def test_a_bidirectional_unit_is_one_hidden_unit_in_the_latency_table():
    """A bidirectional group loses two channels per unit; the layer's signature counts hidden units, and
    the layer it feeds reads both directions."""
    model = BidirectionalStack().eval()
    graph = GroupGraph(model, torch.zeros(1, 9, 12), verify=True)
    assert graph.skipped == [] and graph["lstm"].unit_size == 2 and graph["lstm"].channels == 32
    operators = {op.name: op for op in find_operators(graph, batch=1)}
    assert operators["lstm"].signature.kernel == (4, 2, 2)
    removed = {"lstm": 8 * 2, "gru": 4 * 2}  # root channels, as the latency model counts them
    assert operator_widths(operators["lstm"], removed) == (12, 24)
    assert operator_widths(operators["gru"], removed) == (64 - 16, 20)
    # the second LSTM layer reads both directions of the first; each layer's recurrent product weighs double
    lstm = operators["lstm"].signature
    assert lstm.cost_coordinate() == 32 * 12 + 32 * 2 * 32 + 2 * 2 * 32 * 32
    pruned = apply_plan(copy.deepcopy(model), torch.zeros(1, 9, 12), {"lstm": list(range(24)), "gru": list(range(20))})
    assert (pruned.lstm.hidden_size, pruned.gru.input_size, pruned.gru.hidden_size, pruned.fc.in_features) == \
        (24, 48, 20, 40)
    # the LSTM feeds only the GRU, which Torch-Pruning's importances do not read: scored from its own
    # weights, one score per unit summed over its two directions
    x = torch.randn(8, 9, 12)
    scoring = ScoringContext(model, graph, x, torch.randint(0, 5, (8,)), torch.randn(8, 5))
    scores = score_groups("l2", scoring)
    assert scores["lstm"].shape == (32,) and float(scores["lstm"].std()) > 0


def _token_model(factory: str):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("recurrent_archs", Path(__file__).parent / "archs" / "recurrent.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, factory)().eval()


def test_an_lstm_feeding_a_gru_is_one_group_with_the_grus_input():
    """The LSTM's units are also the GRU's input width; the model reads the GRU's final state only,
    which hid the GRU from Torch-Pruning's trace before recurrent.trace_hook."""
    model = _token_model("make")
    ids = torch.randint(0, 1000, (1, 64))
    graph = GroupGraph(model, ids, verify=True)
    assert graph.skipped == []
    assert {g.name: g.members for g in graph.groups} == {"lstm": ["gru", "lstm"], "gru": ["fc", "gru"]}
    assert graph["lstm"].unit_multiple(16) == HIDDEN_MULTIPLE and graph["gru"].recurrent
    operators = {op.name: op for op in find_operators(graph, batch=1)}
    assert operators["gru"].signature.kind == "recurrent"
    assert (operators["gru"].in_groups, operators["gru"].out_groups) == (["lstm"], ["gru"])
    assert operators["gru"].signature.kernel == (3, 1, 1) and operators["gru"].signature.spatial_in == (64,)
    # The LSTM's group has no layer Torch-Pruning's importances read: its own gate rows score it
    scoring = ScoringContext(model, graph, torch.randint(0, 1000, (16, 64)), torch.randint(0, 10, (16,)),
                             torch.randn(16, 10))
    for criterion in ("l2", "taylor"):
        scores = score_groups(criterion, scoring)
        assert scores["lstm"].shape == (192,) and float(scores["lstm"].std()) > 0


def test_recurrent_macs_are_counted_per_step():
    model = _token_model("make_stacked")  # GRU(128 -> 192, 2 layers), time-major
    per_step = 3 * 192 * (128 + 192) + 3 * 192 * (192 + 192)
    for batch in (1, 2):  # per sample, as for every other layer (the head and the rest add about 2000)
        macs = count_macs(model, torch.randint(0, 1000, (batch, 64)))
        assert 64 * per_step < macs < 64 * per_step + 3000, macs

@pytest.mark.parametrize("factory", ["make", "make_stacked"])
def test_recurrent_model_reaches_2x(tmp_path, factory):
    report = compress(tmp_path, f"recurrent.py:{factory}", "1,64")
    assert_compressed(report, tmp_path)
    assert report["skipped_groups"] == []
    first = layer(report, "lstm" if factory == "make" else "gru")
    assert first["channels_after"] < first["channels_before"] and first["channels_after"] % HIDDEN_MULTIPLE == 0
    assert report["speedup"]["macs_ratio"] < 2 * report["speedup"]["measured"]  # counted per step, not per sample
    assert_loads_as_the_shipped_model(tmp_path / "run", f"recurrent.py:{factory}", torch.randint(0, 1000, (3, 64)))
