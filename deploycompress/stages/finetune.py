"""Finetune the masked model: distillation from the dense model, plus cross-entropy with labels, plus
the configured regularizer's penalty (`--regularizer`).

This module also holds the short finetunes the prune stage asks for, so every training loop of a run
uses the same data, teacher, learning rate and loss:
- `regularized_finetune`: a regularised phase on the dense model before channels are scored
  (finetune.regularize_epochs; `--regularizer synaptic_strength`, `--importance dsm`);
- `finetune_round_fn`: the brief finetunes between rounds of an iterative policy (SAP), of the model
  masked to the round's plan (finetune.round_epochs);
- `short_fit` also runs SPDY's finalist finetunes (prune.finetuned_loss_fn, finetune.select_epochs).
"""
from __future__ import annotations

import itertools
import math
from typing import Callable

import torch

from ..allocation.sap import layer_pqi
from ..context import RunContext
from ..data import DataBundle
from ..fileio import atomic_write
from ..graph import ChannelMasks, GroupGraph, Plan
from ..regularizers import Regularizer, build as build_regularizer
from ..training import accuracy, fit
from .base import Stage

DEFAULT_EPOCHS_WITH_LABELS = 6


def finetune_epochs(ctx: RunContext) -> int:
    """The finetune stage's epochs: as configured, else the default (6 with labels, 0 data-free)."""
    configured = ctx.config.finetune.epochs
    if configured is not None:
        return configured
    return DEFAULT_EPOCHS_WITH_LABELS if ctx.data.has_labels else 0


def short_fit(ctx: RunContext, epochs: float, seed: int, regularizer: Regularizer | None = None,
              description: str = "finetune", data: DataBundle | None = None) -> list[float]:
    """Finetune ctx.model for `epochs` on `data` (default: the run's data); below one epoch, one pass
    over a random fraction of the training set (a different fraction for each seed), so a "short"
    finetune costs what it says."""
    if epochs <= 0:
        return []
    cfg = ctx.config.finetune
    data = ctx.data if data is None else data
    whole = max(1, round(epochs))
    if epochs < 1:
        count = max(cfg.batch_size, math.ceil(epochs * len(data.x_train)))
        index = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))[:count]
        y = None if data.y_train is None else data.y_train[index]
        data = DataBundle(data.name, data.x_train[index], y, data.x_test, data.y_test, data.num_classes)
        whole = 1
    return fit(ctx.model, data, whole, cfg.lr, seed, teacher=ctx.dense, temperature=cfg.temperature,
               distill_weight=cfg.distill_weight, batch_size=cfg.batch_size,
               regularizer=None if regularizer is None else regularizer.penalty,
               after_step=None if regularizer is None else regularizer.after_step, description=description)


def regularized_finetune(ctx: RunContext, name: str, graph: GroupGraph) -> Regularizer:
    """Build regularizer `name` on ctx.model and finetune with it for finetune.regularize_epochs."""
    regularizer = build_regularizer(name, ctx.model, graph, len(ctx.data.x_train))
    epochs = ctx.config.finetune.regularize_epochs
    if epochs > 0:
        print(f"prune: {epochs:g} epoch(s) of {name}-regularised finetuning before scoring")
        short_fit(ctx, epochs, ctx.config.seed, regularizer, description=f"regularize ({name})")
    return regularizer


def regularize_before_scoring(ctx: RunContext, graph: GroupGraph) -> Regularizer | None:
    """The configured regularizer's phase on the dense model, or None when none is configured."""
    name = ctx.config.finetune.regularizer
    return regularized_finetune(ctx, name, graph) if name else None


def finetune_round_fn(ctx: RunContext, graph: GroupGraph,
                      rescore: Callable[[], dict[str, torch.Tensor]]) -> Callable[[Plan], dict[str, torch.Tensor]]:
    """For iterative policies: mask ctx.model to a plan, finetune it briefly, unmask, rescore."""
    rounds = itertools.count(1)

    def finetune_round(plan: Plan) -> dict[str, torch.Tensor]:
        number = next(rounds)
        epochs = ctx.config.finetune.round_epochs
        if epochs > 0:
            masks = ChannelMasks(graph, plan)
            try:
                short_fit(ctx, epochs, ctx.config.seed + number, description=f"round {number} finetune")
            finally:
                masks.remove()
        return rescore()

    return finetune_round


def record_pqi_after(ctx: RunContext) -> None:
    """PQ Index of every layer's kept channels in the current model, next to pqi_before."""
    layers = ctx.report.get("prune", {}).get("layers", [])
    if not layers or ctx.graph is None or ctx.plan is None:
        return
    after = layer_pqi(ctx.graph, ctx.plan)
    for layer in layers:
        layer["pqi_after"] = after.get(layer["name"])


class FinetuneStage(Stage):
    name = "finetune"
    outputs = ("finetuned.pt",)

    def run(self, ctx: RunContext) -> None:
        cfg = ctx.config.finetune
        epochs = finetune_epochs(ctx)
        regularizer = None
        if cfg.regularizer and epochs:
            graph = ctx.graph or GroupGraph(ctx.model, ctx.example_input, ctx.config.ignore)
            regularizer = build_regularizer(cfg.regularizer, ctx.model, graph, len(ctx.data.x_train))
        before = accuracy(ctx.model, ctx.data.x_test, ctx.data.y_test)
        losses = fit(ctx.model, ctx.data, epochs, cfg.lr, ctx.config.seed, teacher=ctx.dense,
                     temperature=cfg.temperature, distill_weight=cfg.distill_weight, batch_size=cfg.batch_size,
                     regularizer=None if regularizer is None else regularizer.penalty,
                     after_step=None if regularizer is None else regularizer.after_step,
                     description="finetune")
        after = accuracy(ctx.model, ctx.data.x_test, ctx.data.y_test)
        if epochs:
            with_penalty = f" with the {cfg.regularizer} penalty" if regularizer else ""
            print(f"finetune: {epochs} epoch(s){with_penalty}, accuracy {_pct(before)} -> {_pct(after)}")
        atomic_write(ctx.run_dir / "finetuned.pt", lambda p: torch.save(ctx.model.state_dict(), p))
        ctx.report["finetune"] = {"epochs": epochs, "losses": losses, "accuracy_before": before,
                                  "accuracy_after": after, "regularizer": cfg.regularizer}
        record_pqi_after(ctx)

    def restore(self, ctx: RunContext) -> None:
        state = torch.load(ctx.run_dir / "finetuned.pt", map_location="cpu", weights_only=True)
        ctx.model.load_state_dict(state)
        ctx.model.eval()
        record_pqi_after(ctx)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"
