"""Finetune the masked model: distillation from the dense model, plus cross-entropy with labels."""
from __future__ import annotations

import torch

from ..context import RunContext
from ..fileio import atomic_write
from ..training import accuracy, fit
from .base import Stage

DEFAULT_EPOCHS_WITH_LABELS = 6


class FinetuneStage(Stage):
    name = "finetune"
    outputs = ("finetuned.pt",)

    def epochs(self, ctx: RunContext) -> int:
        configured = ctx.config.finetune.epochs
        if configured is not None:
            return configured
        return DEFAULT_EPOCHS_WITH_LABELS if ctx.data.has_labels else 0

    def run(self, ctx: RunContext) -> None:
        cfg = ctx.config.finetune
        epochs = self.epochs(ctx)
        before = accuracy(ctx.model, ctx.data.x_test, ctx.data.y_test)
        losses = fit(ctx.model, ctx.data, epochs, cfg.lr, ctx.config.seed, teacher=ctx.dense,
                     temperature=cfg.temperature, distill_weight=cfg.distill_weight, batch_size=cfg.batch_size,
                     description="finetune")
        after = accuracy(ctx.model, ctx.data.x_test, ctx.data.y_test)
        if epochs:
            print(f"finetune: {epochs} epoch(s), accuracy {_pct(before)} -> {_pct(after)}")
        atomic_write(ctx.run_dir / "finetuned.pt", lambda p: torch.save(ctx.model.state_dict(), p))
        ctx.report["finetune"] = {"epochs": epochs, "losses": losses, "accuracy_before": before, "accuracy_after": after}

    def restore(self, ctx: RunContext) -> None:
        state = torch.load(ctx.run_dir / "finetuned.pt", map_location="cpu", weights_only=True)
        ctx.model.load_state_dict(state)
        ctx.model.eval()


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"
