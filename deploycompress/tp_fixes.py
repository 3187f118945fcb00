"""Corrections to Torch-Pruning that deploycompress depends on, applied once when graph.py is imported.

LayerNorm: Torch-Pruning 1.6's LayernormPruner keeps `torch.tensor(list(set(range(n)) - set(idxs)))`
and calls `keep_idxs.sort()`, which for a tensor returns a sorted copy and leaves the tensor in the
set's iteration order. Small ints iterate in order only while they are below the set's table size, so
a LayerNorm keeping 16 of 64 channels (35, 38, 51, ... wrapped) got its weight and bias in another order
than the channels it normalises: a ConvNeXt finetuned under masks failed the shrink check by 0.77.
Masks and trials that keep half the channels or more never saw it. The fix keeps the same pruner
object, so the handler Torch-Pruning's importances compare against (function.prune_layernorm_*) is
the one its dependency graphs hand out.

Reshape: Torch-Pruning 1.6 maps a view/reshape's channels by the ratio of the widths it infers on
either side, and where it infers no width past the view (0, e.g. ShuffleNet's channel shuffle,
`x.view(b, groups, c // groups, h, w)`) the ratio divides by zero and the whole trace fails. That view
keeps its default one-to-one mapping instead: every group through it is still test-pruned on a copy
(GroupGraph._verify), which leaves a group the mapping gets wrong dense, with its reason.
"""
from __future__ import annotations

import types

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import index_mapping
from torch_pruning.pruner import function


def _prune_layer_norm(self, layer: nn.LayerNorm, idxs) -> nn.Module:
    """LayernormPruner.prune_out_channels with the kept channels in ascending order."""
    dim = self.pruning_dim
    if len(layer.normalized_shape) < -dim:
        return layer
    removed = {int(i) for i in idxs}
    keep = torch.tensor([c for c in range(layer.normalized_shape[dim]) if c not in removed], dtype=torch.long)
    if layer.elementwise_affine:
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, dim)
        if layer.bias is not None:
            layer.bias = self._prune_parameter_and_grad(layer.bias, keep, dim)
    shape = list(layer.normalized_shape)
    shape[dim] = len(keep)
    layer.normalized_shape = tuple(shape)
    return layer


def _guarded_reshape_mapping(original):
    def update_reshape_index_mapping(graph, reshape_node) -> None:
        try:
            original(graph, reshape_node)
        except ZeroDivisionError:  # a width of 0 on one side: nothing assigned yet, the default mapping stays
            pass
    update_reshape_index_mapping._guarded = True
    return update_reshape_index_mapping


def apply() -> None:
    reshape_mapping = index_mapping.update_reshape_index_mapping
    if not getattr(reshape_mapping, "_guarded", False):
        index_mapping.update_reshape_index_mapping = _guarded_reshape_mapping(reshape_mapping)
    pruner = function.PrunerBox[tp.ops.OPTYPE.LN]
    if getattr(pruner, "_sorted_keep", False):
        return
    pruner.prune_out_channels = pruner.prune_in_channels = types.MethodType(_prune_layer_norm, pruner)
    pruner._sorted_keep = True
    # the module-level handlers Torch-Pruning's importances compare dependency handlers with
    for module in (function, tp.pruner, tp):
        module.prune_layernorm_out_channels = pruner.prune_out_channels
        module.prune_layernorm_in_channels = pruner.prune_in_channels
