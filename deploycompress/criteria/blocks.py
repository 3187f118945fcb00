"""Blocks for the selector criteria: a group's producers -> hidden H -> one consumer layer.

i-SpaSP and DCP both work on "the layer that reads the group's channels": i-SpaSP reconstructs its
output from a subset of H, DCP chooses its input channels greedily. That is well defined when exactly
one ordinary conv or linear layer reads the group (a ResNet block's inner group conv1 -> bn1 -> relu
-> conv2 has consumer conv2; a MobileNet expand/depthwise group has consumer `project`). When several
layers read the channels (residual stages, concatenations) there is no single block to reconstruct,
and the criteria fall back to L2 magnitude for that group.

Zeroing a group's channels at every producer zeroes exactly those channels of H at the consumer's
input (that is what the group's masks do), so selecting channels of the consumer's *input* is the
same as selecting the group's channels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..graph import ChannelGroup, GroupGraph

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class Block:
    group: str
    consumer: nn.Module
    consumer_name: str
    channels: list[int]  # the group's channel j sits at input channel channels[j] of the consumer


def single_consumer(graph: GroupGraph, group: ChannelGroup) -> Block | None:
    """The one conv/linear layer reading this group's channels, or None when there is not exactly one."""
    consumers = []
    names = {m: n for n, m in graph.model.named_modules()}
    for dep, idxs in group.tp_group:
        module = dep.target.module
        if not isinstance(module, _LAYERS) or not graph.dg.is_in_channel_pruning_fn(dep.handler):
            continue
        consumers.append((module, [int(i) for i in idxs]))
    if len(consumers) != 1:
        return None
    module, idxs = consumers[0]
    if isinstance(module, nn.Linear):
        fan_in = module.in_features
    else:
        # Grouped convs couple input and output channels; non-zero padding modes need more than F.conv.
        if module.groups != 1 or module.padding_mode != "zeros":
            return None
        fan_in = module.in_channels
    # A flatten that spreads one channel over several features would need an index map: skip it.
    if len(idxs) != group.channels or max(idxs) >= fan_in:
        return None
    return Block(group.name, module, names[module], idxs)


def find_blocks(graph: GroupGraph) -> tuple[dict[str, Block], list[str]]:
    """Blocks by group name, and the names of groups without a single consumer."""
    blocks, without = {}, []
    for group in graph.groups:
        if group.kind != "channels":  # attention heads are scored by their own rule (graph.py)
            continue
        block = single_consumer(graph, group)
        if block is None:
            without.append(group.name)
        else:
            blocks[group.name] = block
    return blocks, without


@torch.no_grad()
def capture_inputs(model: nn.Module, layers: list[nn.Module], x: torch.Tensor,
                   batch_size: int = 64) -> dict[nn.Module, torch.Tensor]:
    """Each layer's input over the calibration batch `x` (eval mode, one pass of the model)."""
    seen: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in layers}

    def hook(module, inputs):
        seen[module].append(inputs[0].detach())

    handles = [m.register_forward_pre_hook(hook) for m in layers]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {m: torch.cat(chunks) for m, chunks in seen.items()}


def consumer_view(block: Block, hidden: torch.Tensor) -> torch.Tensor:
    """The consumer's input restricted to the group's channels, in group order: [N, C_group, ...]."""
    return hidden[:, block.channels]


def width_grid(channels: int, multiple: int) -> list[int]:
    """The widths below `channels` a policy can ask for (round_channels' grid)."""
    if channels <= multiple or multiple <= 1:
        return list(range(1, channels))
    return list(range(multiple, channels, multiple))


def fallback_note(criterion: str, without: list[str]) -> str | None:
    if not without:
        return None
    return (f"{criterion}: no single consumer layer for {len(without)} group(s) ({', '.join(without)}); "
            f"scored them by L2 magnitude")


def prepare_blocks(scoring, criterion: str, x: torch.Tensor) -> tuple[dict[str, Block], dict[nn.Module, torch.Tensor]]:
    """The blocks a block-wise criterion can score, their consumers' cached inputs on `x`, and (once)
    a note naming the groups that fall back to L2 because no single consumer could be isolated."""
    blocks, without = find_blocks(scoring.graph)
    consumers = list({b.consumer: None for b in blocks.values()})
    inputs = capture_inputs(scoring.model, consumers, x)
    note = fallback_note(criterion, without)
    if note and note not in scoring.notes:
        scoring.notes.append(note)
        print(f"prune: {note}")
    return blocks, inputs
