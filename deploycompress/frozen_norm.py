"""Batch norms whose statistics and affine are buffers, not parameters: torchvision's and detectron2's
FrozenBatchNorm2d, which detection backbones use in place of nn.BatchNorm2d.

Torch-Pruning knows only its own norm classes. Such a module it traces as the multiply and add in its
forward, and it prunes parameters only, so the buffers kept every channel: every conv before one failed
its trial ("The size of tensor a (48) must match the size of tensor b (64) at non-singleton dimension
1") and a backbone built of them had nothing to prune. A module that looks like one (its own
running_mean and running_var, and every other tensor of it one value per channel) gets `FrozenNormPruner`,
which removes the channel from each of its per-channel tensors, and the masks zero its output channels
as they zero a BatchNorm's (masks.py).
"""
from __future__ import annotations

import itertools

import torch
from torch import nn
from torch_pruning.pruner.function import BasePruningFunc


def is_frozen_norm(module: nn.Module) -> bool:
    """A leaf module, not one of torch's norms, holding running_mean and running_var of one value per
    channel and no tensor other than per-channel ones (and scalars)."""
    if isinstance(module, nn.modules.batchnorm._NormBase) or next(module.children(), None) is not None:
        return False
    mean, var = getattr(module, "running_mean", None), getattr(module, "running_var", None)
    if not isinstance(mean, torch.Tensor) or not isinstance(var, torch.Tensor) or mean.dim() != 1 \
            or var.shape != mean.shape:
        return False
    channels = mean.numel()
    tensors = itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False))
    return all(t.dim() == 0 or (t.dim() == 1 and t.numel() == channels) for t in tensors)


def channels(module: nn.Module) -> int:
    return module.running_mean.numel()


class FrozenNormPruner(BasePruningFunc):
    """Removes channels from every per-channel parameter and buffer; in and out channels are the same
    channels (prune_in_channels = prune_out_channels makes them one dependency for Torch-Pruning)."""

    TARGET_MODULES = None

    def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
        removed = {int(i) for i in idxs}
        keep = torch.tensor([c for c in range(channels(layer)) if c not in removed], dtype=torch.long)
        for name, param in list(layer.named_parameters(recurse=False)):
            if param.dim() == 1:
                setattr(layer, name, nn.Parameter(param.data.index_select(0, keep).contiguous(),
                                                  requires_grad=param.requires_grad))
        for name, buffer in list(layer.named_buffers(recurse=False)):
            if buffer.dim() == 1:
                layer._buffers[name] = buffer.index_select(0, keep).contiguous()
        if isinstance(getattr(layer, "num_features", None), int):
            layer.num_features = len(keep)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return channels(layer)

    get_in_channels = get_out_channels


def customized_pruners(model: nn.Module) -> dict[type, FrozenNormPruner]:
    """A FrozenNormPruner for each class of frozen norm in `model`, for DependencyGraph.build_dependency."""
    pruner = FrozenNormPruner()
    return {type(m): pruner for m in model.modules() if is_frozen_norm(m)}
