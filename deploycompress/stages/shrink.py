"""Shrink: remove the masked channels physically and prove nothing else changed."""
from __future__ import annotations

import torch

from ..context import RunContext
from ..errors import UserError
from ..fileio import atomic_write
from ..graph import apply_plan
from ..model_size import count_macs, count_params
from ..training import predict
from .base import Stage

# Shrinking only deletes channels that are exactly zero, so outputs agree up to float summation order.
SHRINK_TOLERANCE = 1e-3


class ShrinkStage(Stage):
    name = "shrink"
    outputs = ("compressed.pt",)

    def run(self, ctx: RunContext) -> None:
        x = ctx.data.x_test[:64]
        masked_out = predict(ctx.model, x)
        ctx.masks.remove()
        ctx.masks = None
        apply_plan(ctx.model, ctx.example_input, ctx.plan, ctx.config.ignore)
        shrunk_out = predict(ctx.model, x)
        diff = float((masked_out - shrunk_out).abs().max())
        scale = max(1.0, float(masked_out.abs().max()))
        if diff > SHRINK_TOLERANCE * scale:
            raise UserError(f"shrinking changed the model's outputs by {diff:.3g}: a group was not removed cleanly")
        atomic_write(ctx.run_dir / "compressed.pt", lambda p: torch.save(ctx.model.state_dict(), p))
        self._record(ctx, diff)

    def restore(self, ctx: RunContext) -> None:
        if ctx.masks is not None:
            ctx.masks.remove()
            ctx.masks = None
        apply_plan(ctx.model, ctx.example_input, ctx.plan, ctx.config.ignore)
        ctx.model.load_state_dict(torch.load(ctx.run_dir / "compressed.pt", map_location="cpu", weights_only=True))
        ctx.model.eval()
        self._record(ctx, None)

    def _record(self, ctx: RunContext, diff: float | None) -> None:
        ctx.report["params"] = {"dense": count_params(ctx.dense), "compressed": count_params(ctx.model)}
        ctx.report["macs"] = {"dense": count_macs(ctx.dense, ctx.example_input),
                              "compressed": count_macs(ctx.model, ctx.example_input)}
        if diff is not None:
            ctx.report["shrink_max_abs_diff"] = diff
