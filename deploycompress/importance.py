"""Importance criteria: a criterion scores every channel of a group (one number per channel, higher
means keep). Criteria are registered by name and selected with `--importance NAME`.

A criterion is a class with `prepare(scoring)` (one pass over the model and calibration data, for
criteria that need activations or gradients) and `__call__(group) -> 1-D tensor`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from . import recurrent
from .graph import ChannelGroup, GroupGraph
from .registry import Registry
from .multi_output import layout_of
from .training import distillation_losses


@dataclass
class ScoringContext:
    """What a criterion may look at: the dense model, its groups, calibration data and the teacher.

    The optional fields serve the research criteria (deploycompress/criteria/): `regularizer` is one
    that was already trained on `model` (DSM reads its prior), `finetune(name)` builds regularizer
    `name` on `model`, runs the configured short regularised finetune and returns it (for criteria
    that need their own), and
    `channel_multiple` tells selectors which widths the policies will ask for. A criterion that has
    to fall back (no clean consumer layer, say) appends one line to `notes`; the report shows them.
    """

    model: nn.Module
    graph: GroupGraph
    calibration: torch.Tensor
    labels: torch.Tensor | None
    teacher_logits: torch.Tensor
    regularizer: object | None = None
    finetune: Callable[[str], object] | None = None
    channel_multiple: int = 8
    notes: list[str] = field(default_factory=list)


class Criterion:
    name = "base"

    def prepare(self, scoring: ScoringContext) -> None:  # noqa: B027 - optional hook
        pass

    def __call__(self, group: ChannelGroup) -> torch.Tensor:
        raise NotImplementedError


criteria: Registry[type[Criterion]] = Registry("importance criterion")


class _TorchPruningCriterion(Criterion):
    """Adapter over a Torch-Pruning importance (group-aware: sums over every coupled layer)."""

    def make(self) -> tp.importance.Importance:
        raise NotImplementedError

    def __init__(self) -> None:
        self.importance = self.make()

    def __call__(self, group: ChannelGroup) -> torch.Tensor:
        with torch.no_grad():
            scores = self.importance(group.tp_group)
        if scores is None:  # the group has no layer this criterion can read (e.g. no BatchNorm)
            return magnitude_scores(group)
        return scores.detach().float().flatten()


@criteria.register("l1")
class L1(_TorchPruningCriterion):
    def make(self):
        return tp.importance.GroupMagnitudeImportance(p=1)


@criteria.register("l2")
class L2(_TorchPruningCriterion):
    def make(self):
        return tp.importance.GroupMagnitudeImportance(p=2)


@criteria.register("bn_scale")
class BNScale(_TorchPruningCriterion):
    def make(self):
        return tp.importance.BNScaleImportance()


@criteria.register("fpgm")
class FPGM(_TorchPruningCriterion):
    def make(self):
        return tp.importance.FPGMImportance(p=2)


@criteria.register("taylor")
class Taylor(_TorchPruningCriterion):
    """First-order Taylor: |w * dL/dw|, with L the cross-entropy (or distillation loss without labels)."""

    def make(self):
        return tp.importance.GroupTaylorImportance()

    def prepare(self, scoring: ScoringContext) -> None:
        model = scoring.model
        model.zero_grad(set_to_none=True)
        was_training = model.training
        model.eval()
        for start in range(0, len(scoring.calibration), 64):
            x = scoring.calibration[start:start + 64]
            logits = model(x)
            if scoring.labels is not None:
                loss = F.cross_entropy(logits, scoring.labels[start:start + 64], reduction="sum")
            else:
                loss = distillation_losses(logits, scoring.teacher_logits[start:start + 64], layout=layout_of(model)).sum()
            loss.backward()
        model.train(was_training)

    def __call__(self, group: ChannelGroup) -> torch.Tensor:
        scores = super().__call__(group)
        return scores


# The research methods live one module each in deploycompress/criteria/ and load on first use.
criteria.register_lazy("ispasp", "deploycompress.criteria.ispasp:ISpaSP")
criteria.register_lazy("dcp", "deploycompress.criteria.dcp:DCP")
criteria.register_lazy("synaptic_strength", "deploycompress.criteria.synaptic:SynapticStrength")
criteria.register_lazy("dsm", "deploycompress.criteria.dsm:DSM")


def criterion_scorer(name: str, scoring: ScoringContext) -> Callable[[], dict[str, torch.Tensor]]:
    """A function that (re)scores every group with one criterion instance, so iterative policies can
    rescore the finetuned model between rounds without repeating a criterion's one-off work."""
    criterion = criteria.get(name)()

    def score() -> dict[str, torch.Tensor]:
        criterion.prepare(scoring)
        scores = {g.name: g.unit_scores(criterion) for g in scoring.graph.groups}  # per unit (channel, channel set, head)
        scoring.model.zero_grad(set_to_none=True)
        return scores

    return score


def score_groups(name: str, scoring: ScoringContext) -> dict[str, torch.Tensor]:
    """Scores for every prunable group, by criterion name."""
    return criterion_scorer(name, scoring)()


def magnitude_scores(group: ChannelGroup) -> torch.Tensor:
    """L2 group magnitude: the baseline every research criterion falls back to. A recurrent layer that
    feeds only another (an LSTM into a GRU) leaves Torch-Pruning nothing it reads: its own units'
    weights are scored instead."""
    with torch.no_grad():
        scores = tp.importance.GroupMagnitudeImportance(p=2)(group.tp_group)
    if scores is None and group.recurrent:
        return recurrent.unit_scores(group.tp_group[0].dep.target.module)
    return scores.detach().float().flatten()


def keep_top(scores: torch.Tensor, count: int) -> list[int]:
    """Indices of the `count` highest scores, ascending (ties broken by index for determinism)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:count])
