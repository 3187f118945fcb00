"""Importance criteria: a criterion scores every channel of a group (one number per channel, higher
means keep). Criteria are registered by name and selected with `--importance NAME`.

A criterion is a class with `prepare(scoring)` (one pass over the model and calibration data, for
criteria that need activations or gradients) and `__call__(group) -> 1-D tensor`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from .graph import ChannelGroup, GroupGraph
from .registry import Registry


@dataclass
class ScoringContext:
    """What a criterion may look at: the dense model, its groups, calibration data and the teacher."""

    model: nn.Module
    graph: GroupGraph
    calibration: torch.Tensor
    labels: torch.Tensor | None
    teacher_logits: torch.Tensor


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
            scores = tp.importance.GroupMagnitudeImportance(p=2)(group.tp_group)
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
                target = F.softmax(scoring.teacher_logits[start:start + 64], 1)
                loss = F.kl_div(F.log_softmax(logits, 1), target, reduction="sum")
            loss.backward()
        model.train(was_training)

    def __call__(self, group: ChannelGroup) -> torch.Tensor:
        scores = super().__call__(group)
        return scores


def score_groups(name: str, scoring: ScoringContext) -> dict[str, torch.Tensor]:
    """Scores for every prunable group, by criterion name."""
    criterion = criteria.get(name)()
    criterion.prepare(scoring)
    scores = {g.name: criterion(g) for g in scoring.graph.groups}
    scoring.model.zero_grad(set_to_none=True)
    return scores


def keep_top(scores: torch.Tensor, count: int) -> list[int]:
    """Indices of the `count` highest scores, ascending (ties broken by index for determinism)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:count])
