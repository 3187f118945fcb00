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

Pixel shuffle: Torch-Pruning 1.6 has no mapping for nn.PixelShuffle and keeps it one-to-one, so a
super-resolution upsampler's conv (r x r channels for each channel after the shuffle) broke every trial.
Its input channel i is output channel i // r^2 (Torch-Pruning's flatten mapping with that stride), and
back; GroupGraph makes the r^2 input channels of one output channel a unit.
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


def pixel_shuffle_factor(node) -> int | None:
    """r^2 for a DepGraph node traced from nn.PixelShuffle / F.pixel_shuffle, else None."""
    grad_fn = getattr(node, "grad_fn", None)
    if type(grad_fn).__name__.startswith("PixelShuffleBackward"):
        return int(grad_fn._saved_upscale_factor) ** 2
    return None


def _with_pixel_shuffle_mapping(original):
    def update_index_mapping(graph) -> None:
        original(graph)
        for node in graph.module2node.values():
            stride = pixel_shuffle_factor(node)
            if stride is None:
                continue
            for source in node.inputs:  # the producer's channel i is the shuffle's output channel i // r^2
                for dep in source.dependencies:
                    if dep.target is node:
                        dep.index_mapping[0] = index_mapping._FlattenIndexMapping(stride=stride, reverse=True)
            for dep in node.dependencies:  # and back: output channel u is the producer's u r^2 ... u r^2 + r^2 - 1
                if dep.target in node.inputs:
                    dep.index_mapping[0] = index_mapping._FlattenIndexMapping(stride=stride, reverse=False)
    update_index_mapping._pixel_shuffle = True
    return update_index_mapping


def apply() -> None:
    reshape_mapping = index_mapping.update_reshape_index_mapping
    if not getattr(reshape_mapping, "_guarded", False):
        index_mapping.update_reshape_index_mapping = _guarded_reshape_mapping(reshape_mapping)
    if not getattr(index_mapping.update_index_mapping, "_pixel_shuffle", False):
        index_mapping.update_index_mapping = _with_pixel_shuffle_mapping(index_mapping.update_index_mapping)
    pruner = function.PrunerBox[tp.ops.OPTYPE.LN]
    if getattr(pruner, "_sorted_keep", False):
        return
    pruner.prune_out_channels = pruner.prune_in_channels = types.MethodType(_prune_layer_norm, pruner)
    pruner._sorted_keep = True
    # the module-level handlers Torch-Pruning's importances compare dependency handlers with
    for module in (function, tp.pruner, tp):
        module.prune_layernorm_out_channels = pruner.prune_out_channels
        module.prune_layernorm_in_channels = pruner.prune_in_channels
