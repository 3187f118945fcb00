"""Models whose forward returns several tensors (a detector's class and box maps, a multi-task net's
heads, a dict of named outputs).

The search, the finetune, the shrink check and the profile read one output tensor per batch. Rather
than teach each of them about tuples, such a model's forward is swapped, in place, for one returning
its outputs flattened per sample and concatenated, (batch, sum of each output's per-sample size); the
`OutputLayout` kept on the model says where each output lies in that tensor, so a loss is computed per
output (`per_output`) and the report gives each output's error of its own. The swap is a subclass of
the user's class with only `forward` replaced: module names, state_dict keys and the class name stay
the user's, and deepcopies keep it. The ONNX export, which ships, puts the original forward back
(`structured`): the exported model returns the outputs as the user's forward does, one ONNX output each.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import UserError


@dataclass(frozen=True)
class OutputLayout:
    """Where each of a model's outputs lies in its flattened, concatenated output."""

    names: tuple[str, ...]  # the ONNX output names: a dict's keys, else output_0, output_1, ...
    shapes: tuple[tuple[int, ...], ...]  # each output's shape without the batch dim

    @property
    def sizes(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """(batch, sum of sizes) -> each output, (batch, *shape); numpy arrays split the same way."""
        parts, start = [], 0
        for size, shape in zip(self.sizes, self.shapes):
            parts.append(flat[:, start:start + size].reshape(len(flat), *shape))
            start += size
        return parts

    def describe(self) -> str:
        return ", ".join(f"{n} {tuple(s)}" for n, s in zip(self.names, self.shapes))


def output_layout(out, batch: int, where: str) -> OutputLayout | None:
    """None for one tensor; the layout of a tuple, list or dict of tensors (nested ones too), each with
    the batch first. Anything else is one clear line: `where` names the model."""
    if isinstance(out, torch.Tensor):
        return None
    named = _named_tensors(out, "", where)
    if not named:
        raise UserError(f"{where}: forward returns a {type(out).__name__} holding no tensor; deploycompress "
                        "compresses a model whose forward returns its output tensor(s)")
    for name, tensor in named:
        if tensor.dim() == 0 or tensor.shape[0] != batch:
            raise UserError(f"{where}: output {name} has shape {tuple(tensor.shape)}, not the batch ({batch}) first: "
                            "every output must hold one row per input sample (return per-sample outputs, and "
                            "compute batch reductions such as a loss outside forward)")
        if not tensor.is_floating_point():
            raise UserError(f"{where}: output {name} holds {str(tensor.dtype).removeprefix('torch.')}, not floats: "
                            "return the scores it is computed from (an argmax or a threshold is applied after the model)")
    names = tuple(n for n, _ in named)
    if len(set(names)) != len(names):
        raise UserError(f"{where}: two outputs would share the name {sorted(n for n in names if names.count(n) > 1)[0]}")
    return OutputLayout(names, tuple(tuple(t.shape[1:]) for _, t in named))


def _named_tensors(out, prefix: str, where: str) -> list[tuple[str, torch.Tensor]]:
    if isinstance(out, torch.Tensor):
        return [(prefix or "output", out)]
    if isinstance(out, dict):
        items = [(str(k), v) for k, v in out.items()]
    elif isinstance(out, (tuple, list)):
        items = [(f"output_{i}" if not prefix else str(i), v) for i, v in enumerate(out)]
    else:
        raise UserError(f"{where}: forward returns a {type(out).__name__} among its outputs; deploycompress "
                        "compresses a model whose forward returns tensors (a tensor, or a tuple, list or dict of them)")
    named = []
    for key, value in items:
        named += _named_tensors(value, f"{prefix}_{key}" if prefix else key, where)
    return named


def flatten_outputs(model: nn.Module, layout: OutputLayout) -> None:
    """Swaps `model`'s forward, in place, for one returning (batch, sum of sizes) in `layout`'s order."""
    structured_class = type(model)
    model.__class__ = type(structured_class.__name__, (structured_class,), {
        "forward": _flat_forward, "__module__": structured_class.__module__,
        "__qualname__": structured_class.__qualname__,
        "_deploycompress_layout": layout, "_deploycompress_structured_class": structured_class})


def _flat_forward(self, *args, **kwargs) -> torch.Tensor:
    out = type(self)._deploycompress_structured_class.forward(self, *args, **kwargs)
    return torch.cat([t.reshape(t.shape[0], -1) for _, t in _named_tensors(out, "", "the model")], 1)


def layout_of(model: nn.Module) -> OutputLayout | None:
    """The layout of a model whose outputs were flattened, or None (one output tensor)."""
    return getattr(type(model), "_deploycompress_layout", None)


@contextlib.contextmanager
def structured(model: nn.Module):
    """The user's own forward, for as long as the block runs (the ONNX export: one output each)."""
    structured_class = getattr(type(model), "_deploycompress_structured_class", None)
    if structured_class is None:
        yield model
        return
    flat_class = type(model)
    model.__class__ = structured_class
    try:
        yield model
    finally:
        model.__class__ = flat_class


def join_outputs(outputs: list):
    """An ONNX session's outputs as the flat forward returns them: one output as it is, several flattened
    per sample and concatenated in order."""
    if len(outputs) == 1:
        return outputs[0]
    return np.concatenate([o.reshape(len(o), -1) for o in outputs], 1)


def output_names(model: nn.Module, default: str) -> list[str]:
    layout = layout_of(model)
    return [default] if layout is None else list(layout.names)


def per_output(layout: OutputLayout, student: torch.Tensor, teacher: torch.Tensor, loss) -> torch.Tensor:
    """`loss(student, teacher)` (per sample) summed over each output, each in its own shape: a softmax
    over one output's classes must not run across another output's box coordinates."""
    if student.shape[1] != sum(layout.sizes):
        raise UserError(f"the model's outputs in training mode ({student.shape[1]} values a sample) are not the "
                        f"{sum(layout.sizes)} it returns in eval mode ({layout.describe()}): the finetune "
                        "distils the outputs the exported model has, so forward must return them in both modes")
    return sum(loss(s, t) for s, t in zip(layout.split(student), layout.split(teacher)))
