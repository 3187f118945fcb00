"""Recurrent layers (nn.LSTM, nn.GRU, nn.RNN): their hidden units are channels too.

A hidden unit j is row j of every gate block of weight_ih, weight_hh and both biases, in every layer
(the layers of one module share hidden_size), column j of weight_hh, and from the second layer on
column j of weight_ih. A bidirectional layer has both directions' parameters, each hidden_size units
wide, and outputs the forward units then the backward ones: unit j is output channels j and
hidden_size + j, removed together (`units`), and a layer above the first reads column j of each.
Torch-Pruning's own LSTM pruner does not do that: it selects weight_hh's rows by the kept units of one
gate block, twice (an LSTM(8, 16) losing 3 units raised IndexError on the second), and never its
columns; it has none for GRU or RNN. So `RecurrentPruner` is registered for all three
(graph.GroupGraph).

Masks: zeroing a unit's output after the layer is not removing it, because h_t feeds the next step.
Zeroing its gate rows (weights and biases) is: every pre-activation of the unit is then 0 at every
step. An LSTM's gates are sigmoid(0) = 1/2 and its candidate tanh(0) = 0, so from the zero initial
state c and h stay 0; a GRU's candidate is tanh(0) = 0 and h_t = h_(t-1) / 2 stays 0; a tanh or ReLU
RNN's h is 0. So the masked layer computes what the pruned one does, from a zero initial state (a model
that passes its own state fails the verification trial and is left dense).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch_pruning.pruner.function import BasePruningFunc

RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)
# Hidden sizes are kept on multiples of this, not of the conv channel block (16 with AVX-512): ORT's
# recurrent kernels have no NCHWc layout, and each step of 8 measured a time of its own (an LSTM(64, H)
# over 32 steps, one thread: H = 64, 72, 80 took 42, 49, 56 us; a GRU 42, 48, 52 us), where steps of 16
# left a 128-unit LSTM's plans at 1.9x or 2.4x and none inside a 2x target's window.
HIDDEN_MULTIPLE = 8


def gates(layer: nn.RNNBase) -> int:
    return {"LSTM": 4, "GRU": 3}.get(layer.mode, 1)


def blocker(layer: nn.RNNBase) -> str | None:
    """Why the hidden units of `layer` are left dense, or None."""
    if getattr(layer, "proj_size", 0):
        return "an LSTM with proj_size: its output is the projection, not the hidden units"
    return None


def units(layer: nn.RNNBase) -> list[list[int]] | None:
    """The output channels of each hidden unit where there are several: a bidirectional layer's output
    is the forward units then the backward ones, and unit j is channel j and channel hidden_size + j
    (removed together: both directions have hidden_size units)."""
    if not layer.bidirectional:
        return None
    return [[j, j + layer.hidden_size] for j in range(layer.hidden_size)]


def _removed_units(layer: nn.RNNBase, channels) -> set[int]:
    """The hidden units of removed output channels: a bidirectional layer's channel j and
    hidden_size + j are both unit j."""
    return {int(c) % layer.hidden_size for c in channels}


def _gate_rows(layer: nn.RNNBase, units: torch.Tensor) -> torch.Tensor:
    """Row indices of `units` in every gate block of a layer's (gates * hidden_size)-row parameters."""
    return torch.cat([units + k * layer.hidden_size for k in range(gates(layer))])


def _directions(layer: nn.RNNBase) -> list[str]:
    return ["", "_reverse"] if layer.bidirectional else [""]


def _replace(layer: nn.RNNBase, name: str, value: torch.Tensor) -> None:
    old = getattr(layer, name)
    setattr(layer, name, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))


class RecurrentPruner(BasePruningFunc):
    """Torch-Pruning pruner for the hidden units (out channels) and input width (in channels)."""

    def prune_out_channels(self, layer: nn.RNNBase, idxs: list) -> nn.Module:
        removed = _removed_units(layer, idxs)
        keep = torch.tensor([u for u in range(layer.hidden_size) if u not in removed], dtype=torch.long)
        rows = _gate_rows(layer, keep)
        # a layer above the first reads every direction of the one below: the kept units of each
        below = torch.cat([keep + k * layer.hidden_size for k in range(len(_directions(layer)))])
        for level in range(layer.num_layers):
            for direction in _directions(layer):
                suffix = f"_l{level}{direction}"
                weight_ih = getattr(layer, "weight_ih" + suffix).data.index_select(0, rows)
                if level > 0:
                    weight_ih = weight_ih.index_select(1, below)
                _replace(layer, "weight_ih" + suffix, weight_ih)
                _replace(layer, "weight_hh" + suffix,
                         getattr(layer, "weight_hh" + suffix).data.index_select(0, rows).index_select(1, keep))
                if layer.bias:
                    for name in ("bias_ih" + suffix, "bias_hh" + suffix):
                        _replace(layer, name, getattr(layer, name).data.index_select(0, rows))
        layer.hidden_size = len(keep)
        layer._init_flat_weights()
        return layer

    def prune_in_channels(self, layer: nn.RNNBase, idxs: list) -> nn.Module:
        removed = {int(i) for i in idxs}
        keep = torch.tensor([c for c in range(layer.input_size) if c not in removed], dtype=torch.long)
        for direction in _directions(layer):
            name = "weight_ih_l0" + direction
            _replace(layer, name, getattr(layer, name).data.index_select(1, keep))
        layer.input_size = len(keep)
        layer._init_flat_weights()
        return layer

    def get_out_channels(self, layer: nn.RNNBase) -> int:
        width = getattr(layer, "proj_size", 0) or layer.hidden_size
        return width * (2 if layer.bidirectional else 1)

    def get_in_channels(self, layer: nn.RNNBase) -> int:
        return layer.input_size


def trace_hook(module: nn.RNNBase, inputs, output):
    """A forward hook for Torch-Pruning's trace only: the layer's outputs replaced by stand-ins that
    one linear map of its input computes, the hidden units in the last dimension.

    DepGraph knows a module by the autograd node of its first output and finds its inputs by walking
    back from there. A recurrent layer on the CPU is unrolled into per-step matmuls, gate splits and
    stacks, which DepGraph walks as if they were the model's own ops: its index mapping through the gate
    splits then fails (an IndexError), and a final state read instead of the sequence (`_, (h, c) =
    self.lstm(x); self.fc(h[-1])`, as often written as not) hides the layer from it altogether. Channel
    dependencies need only which units feed what, so the stand-ins keep that: the sequence is
    `weight_ih_l0` applied to the input, cut to the output's width, and the final state its last step.
    The values differ; nothing reads them."""
    if not isinstance(output, tuple) or len(output) != 2 or not inputs:
        return None
    sequence, state = output
    packed = isinstance(sequence, PackedSequence)
    if packed != isinstance(inputs[0], PackedSequence) or not isinstance(inputs[0], (torch.Tensor, PackedSequence)):
        return None
    source = inputs[0].data if packed else inputs[0]  # a packed sequence's rows are its steps
    width = sequence.data.shape[-1] if packed else sequence.shape[-1]
    projected = torch.nn.functional.linear(source, module.weight_ih_l0)
    if projected.shape[-1] < width:  # a bidirectional tanh/ReLU RNN: one gate block, two directions
        projected = torch.nn.functional.pad(projected, (0, width - projected.shape[-1]))
    projected = projected[..., :width]
    # The last step is indexed, not sliced: DepGraph reads a slice as one of channels.
    if packed:
        last = projected[-1]
        sequence = sequence._replace(data=projected)
    else:
        sequence = projected
        last = sequence[:, -1] if module.batch_first and sequence.dim() == 3 else sequence[-1]

    def stand_in(tensor: torch.Tensor) -> torch.Tensor:
        if last.shape[-1] < tensor.shape[-1]:
            return tensor  # an LSTM's cell state behind a projection is wider than the output
        if last.shape[-1] == tensor.shape[-1]:
            return last[..., :tensor.shape[-1]].expand_as(tensor)
        # A bidirectional layer's state holds one direction: its units are the output's first half.
        # A split, not a slice: DepGraph's shape inference counts a slice as its input's width, and a
        # concatenation of the state with anything then gets no channel offsets.
        return torch.split(last, tensor.shape[-1], dim=last.dim() - 1)[0].expand_as(tensor)

    if isinstance(state, tuple):
        return sequence, tuple(stand_in(t) for t in state)
    return sequence, stand_in(state)


def mask_hook(layer: nn.RNNBase, removed: list[int]):
    """A forward hook (register with with_kwargs=True) that recomputes the layer with the gate rows of
    the `removed` units zeroed (the module docstring says why that equals removing them)."""
    rows = torch.ones(gates(layer) * layer.hidden_size)
    rows[_gate_rows(layer, torch.tensor(sorted(_removed_units(layer, removed)), dtype=torch.long))] = 0.0
    names = [n for n in layer._flat_weights_names if n.startswith(("weight_ih", "weight_hh", "bias_ih", "bias_hh"))]
    running = False  # the recomputation calls the module again, which runs this hook: let that call be

    def hook(module: nn.Module, args, kwargs, output):
        nonlocal running
        if running:
            return None
        running = True
        try:
            masked = {}
            for name in names:
                weight = getattr(module, name)
                masked[name] = weight * rows.to(weight).view(-1, *([1] * (weight.dim() - 1)))
            return torch.func.functional_call(module, masked, args, kwargs)
        finally:
            running = False

    return hook


def unit_scores(layer: nn.RNNBase) -> torch.Tensor:
    """L2 norm of each output channel's gate rows (input and recurrent weights, every layer): the
    magnitude of a group whose layers Torch-Pruning's importances do not read (a recurrent layer feeding
    another). One score per output channel, as for any group: a bidirectional layer's forward units,
    then its backward ones, each from its own direction's weights."""
    scores = []
    for direction in _directions(layer):
        total = torch.zeros(layer.hidden_size)
        for level in range(layer.num_layers):
            for name in ("weight_ih", "weight_hh"):
                squares = getattr(layer, f"{name}_l{level}{direction}").detach().float().pow(2).sum(1)
                total += squares.view(gates(layer), layer.hidden_size).sum(0)
        scores.append(total.sqrt())
    return torch.cat(scores)


def layer_macs(model: nn.Module, example_input: torch.Tensor) -> dict[nn.Module, int]:
    """Multiply-accumulates of every recurrent layer in `model` on `example_input` (one forward pass, only
    when there is one): gates x hidden x (input + hidden) a step, per layer and direction (a layer above
    the first reads the directions below it), times batch and steps; the elementwise gate work is left
    out, as for convs and linears."""
    layers = [m for m in model.modules() if isinstance(m, RECURRENT)]
    if not layers:
        return {}
    counts: dict[nn.Module, int] = {}

    def hook(module: nn.RNNBase, inputs, _output):
        x = inputs[0]
        if not isinstance(x, torch.Tensor):
            return  # a PackedSequence: Torch-Pruning's own count stands
        if x.dim() == 2:
            batch, steps = 1, x.shape[0]
        else:
            batch, steps = (x.shape[0], x.shape[1]) if module.batch_first else (x.shape[1], x.shape[0])
        directions = 2 if module.bidirectional else 1
        hidden = module.hidden_size
        state = getattr(module, "proj_size", 0) or hidden
        per_step = 0
        for level in range(module.num_layers):
            width = module.input_size if level == 0 else state * directions
            per_step += directions * gates(module) * hidden * (width + state)
            if state != hidden:
                per_step += directions * hidden * state  # the projection
        counts[module] = counts.get(module, 0) + per_step * batch * steps

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return counts
