"""Which layers produce a model's output: their width is the model's output width, so they are never
pruned (graph.GroupGraph ignores them; tiles.py leaves them dense too)."""
from __future__ import annotations

import torch
from torch import nn

from . import multi_output

# Layers whose output channels a plan could remove: the ones an output layer has to be one of.
CHANNEL_LAYERS = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding)


def output_modules(model: nn.Module, example_input: torch.Tensor) -> list[nn.Module]:
    """The layers whose output is the model's output (classifier heads).

    Found by running the model once. Where the output comes from a module that removes no channels of
    its own (an nn.Softmax or nn.Sigmoid after the classifier, an nn.PixelShuffle after a
    super-resolution model's last conv, a norm), or from a functional op (a flatten, a reshape), the
    last channel layer executed before it is the output layer: a classifier ending in nn.Softmax had
    its Linear's 10 classes offered to the search, saved only by the verification trial, which left it
    dense as "pruning changes the shape of the model's outputs".
    """
    produced: list[tuple[nn.Module, torch.Tensor]] = []

    def hook(module, _inputs, output):
        if isinstance(output, torch.Tensor):
            produced.append((module, output))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        # the user's own outputs, not their concatenation (multi_output.py), which no layer produces
        with torch.no_grad(), multi_output.structured(model):
            was_training = model.training
            model.eval()
            out = model(example_input)
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    outputs = output_tensors(out)
    heads = []
    for index, (module, tensor) in enumerate(produced):
        if not any(tensor is o for o in outputs):
            continue
        if not isinstance(module, CHANNEL_LAYERS):
            module = _last_channel_layer(produced[:index])
        if module is not None and module not in heads:
            heads.append(module)
    if not heads:
        last = _last_channel_layer(produced)
        heads = [] if last is None else [last]
    return heads


def _last_channel_layer(produced: list[tuple[nn.Module, torch.Tensor]]) -> nn.Module | None:
    return next((m for m, _ in reversed(produced) if isinstance(m, CHANNEL_LAYERS)), None)


def output_tensors(out) -> list[torch.Tensor]:
    """Every tensor in a model's output (a tensor, or tuples/lists/dicts of them)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in output_tensors(item)]
    return []
