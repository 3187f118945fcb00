"""The masked view of a plan: the model computes what the pruned model would, with every removed
channel zeroed by forward hooks instead of cut out. The search scores plans and the finetune trains
under masks: the parameters keep their shapes while plans change, and shrink.py cuts them once."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from . import attention_heads, frozen_norm, recurrent

if TYPE_CHECKING:
    from .graph import GroupGraph

_LAST_DIM_TYPES = (nn.Linear, nn.LayerNorm)


class ChannelMasks:
    """Zero the plan's removed channels at every module that produces them, via forward hooks.

    Zeroing a channel at its conv *and* its BatchNorm makes it exactly zero downstream (BN would
    otherwise add its shift back), so the masked model computes what the shrunk model computes.
    LayerNorm and GroupNorm normalise over several channels, so their hooks recompute them over the
    kept channels only; attention modules recompute their output from the kept heads, and recurrent
    layers theirs with the removed units' gate rows zeroed.
    """

    def __init__(self, graph: GroupGraph, plan: dict[str, list[int]]):
        self.handles = []
        try:
            self._register(graph, plan)
        except BaseException:
            # hooks already registered would stay on the model (and on every deepcopy of it): a group
            # DepGraph maps wrongly (a removed index past a module's width) then poisoned later trials
            self.remove()
            raise

    def _register(self, graph: GroupGraph, plan: dict[str, list[int]]) -> None:
        for module, removed in graph.removed_outputs(plan).items():
            if isinstance(module, recurrent.RECURRENT):  # its units feed back: zero their gate rows instead
                self.handles.append(module.register_forward_hook(recurrent.mask_hook(module, removed),
                                                                 with_kwargs=True))
                continue
            width = _output_width(module)
            if width is None:
                continue
            if _normalises_over_channels(module):
                kept = sorted(set(range(width)) - set(removed))
                self.handles.append(module.register_forward_hook(_norm_over_kept_hook(kept)))
                continue
            mask = torch.ones(width)
            mask[removed] = 0.0
            self.handles.append(module.register_forward_hook(_mask_hook(mask, module)))
        for module, kept in graph.removed_heads(plan).items():
            self.handles.append(module.register_forward_hook(attention_heads.head_mask_hook(kept), with_kwargs=True))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def _output_width(module: nn.Module) -> int | None:
    for attr in ("out_channels", "out_features", "num_features", "num_channels"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1])
    if frozen_norm.is_frozen_norm(module):  # its shift would add the removed channels back, as a BatchNorm's
        return frozen_norm.channels(module)
    return None


def _mask_hook(mask: torch.Tensor, module: nn.Module):
    last_dim = isinstance(module, _LAST_DIM_TYPES)

    def hook(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            return output
        shape = [1] * output.dim()
        dim = output.dim() - 1 if last_dim else 1
        shape[dim] = -1
        return output * mask.to(output.dtype).view(shape)

    return hook


def _normalises_over_channels(module: nn.Module) -> bool:
    """A norm whose statistics mix the channels (so zeroing some changes the rest): GroupNorm, and
    LayerNorm over the channel dimension alone."""
    return isinstance(module, nn.GroupNorm) or (isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1)


def _norm_over_kept_hook(kept: list[int]):
    """A LayerNorm (over its channel dim, `_layer_norm_channel_dim`) or GroupNorm (over dim 1, in as
    many groups) of the kept channels only, zeros elsewhere: what the pruned norm computes. For
    GroupNorm, Torch-Pruning keeps num_groups, and the group's units take the same offsets from every
    norm group, so each keeps as many channels, in order."""
    index = torch.tensor(kept, dtype=torch.long)
    layer_norm_dim = None  # decided on the first call: the layout does not change between batches

    def hook(module: nn.Module, inputs, output):
        nonlocal layer_norm_dim
        x = inputs[0]
        idx = index.to(x.device)
        weight = module.weight[idx] if module.weight is not None else None
        bias = module.bias[idx] if module.bias is not None else None
        if isinstance(module, nn.GroupNorm):
            kept_out = F.group_norm(x.index_select(1, idx), module.num_groups, weight, bias, module.eps)
            return torch.zeros_like(output).index_copy(1, idx, kept_out)
        if layer_norm_dim is None:
            layer_norm_dim = _layer_norm_channel_dim(module, x, output)
        dim = layer_norm_dim
        kept_in = x.index_select(dim, idx).movedim(dim, -1)
        kept_out = F.layer_norm(kept_in, (len(kept),), weight, bias, module.eps).movedim(-1, dim)
        return torch.zeros_like(output).index_copy(dim, idx, kept_out)

    return hook


def _layer_norm_channel_dim(module: nn.LayerNorm, x: torch.Tensor, output: torch.Tensor) -> int:
    """Where a LayerNorm's input holds the channels: the last dim, except for a subclass whose forward
    moves them there from dim 1 (torchvision's and timm's LayerNorm2d on NCHW input, which Torch-Pruning
    prunes as any LayerNorm). A subclass is asked by its output: one that only wraps the norm (CLIP's
    float32 cast) computes the last-dim norm even where dim 1 is as wide. The verification trial catches
    a subclass that does something else."""
    last, width = -1, module.normalized_shape[0]
    if type(module).forward is nn.LayerNorm.forward or x.dim() < 3 or x.shape[1] != width:
        return last
    if x.shape[-1] != width:
        return 1
    over_last = F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)
    if over_last.shape == output.shape and torch.allclose(over_last, output.to(over_last.dtype), atol=1e-5):
        return last
    return 1

