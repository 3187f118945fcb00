"""Prune: score channels, choose per-group widths against measured latency, mask the rest."""
from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from ..allocation import AllocationProblem, SpeedupMeter, policies
from ..context import RunContext
from ..fileio import write_json
from ..graph import GroupGraph, Plan
from ..importance import ScoringContext, score_groups
from ..training import predict
from .base import Stage


def calibration_loss_fn(ctx: RunContext):
    """Loss of the masked model on calibration data: cross-entropy with labels, else distillation."""
    x = ctx.calibration
    labels = ctx.data.y_train[: len(x)] if ctx.data.has_labels else None
    teacher = predict(ctx.dense, x)

    def loss(plan: Plan) -> float:
        ctx.apply_masks(plan)
        logits = predict(ctx.model, x)
        ctx.masks.remove()
        ctx.masks = None
        if labels is not None:
            return float(F.cross_entropy(logits, labels))
        return float(F.kl_div(F.log_softmax(logits, 1), F.softmax(teacher, 1), reduction="batchmean"))

    return loss


@torch.no_grad()
def recalibrate_batchnorm(ctx: RunContext) -> None:
    """Re-estimate BatchNorm statistics on calibration data: pruning shifts them."""
    bns = [m for m in ctx.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    ctx.model.train()
    x = ctx.calibration
    for start in range(0, len(x), 64):
        ctx.model(x[start:start + 64])
    ctx.model.eval()
    for bn in bns:
        bn.momentum = 0.1


class PruneStage(Stage):
    name = "prune"
    outputs = ("plan.json",)

    def run(self, ctx: RunContext) -> None:
        cfg = ctx.config
        graph = GroupGraph(ctx.model, ctx.example_input, cfg.ignore)
        x = ctx.calibration
        scoring = ScoringContext(ctx.model, graph, x, ctx.data.y_train[: len(x)] if ctx.data.has_labels else None,
                                 predict(ctx.dense, x))
        scores = score_groups(cfg.prune.importance, scoring)
        print(f"prune: {len(graph.groups)} channel groups, importance {cfg.prune.importance}, "
              f"policy {cfg.prune.policy}; measuring candidates on ONNX Runtime ({cfg.profile.threads} thread(s))")
        meter = SpeedupMeter(ctx.dense, ctx.example_input, cfg.profile.threads, cfg.profile.batch_size,
                             cfg.prune.search_rounds, cfg.device)
        problem = AllocationProblem(graph, scores, cfg.target_speedup, cfg.prune.max_overshoot,
                                    cfg.prune.channel_multiple, meter, calibration_loss_fn(ctx), cfg.seed)
        result = policies.get(cfg.prune.policy)().allocate(problem)
        print(f"prune: chose a plan measured at {result.measured_speedup:.2f}x after "
              f"{len(meter.history)} measured candidates")
        ctx.apply_masks(result.plan)
        recalibrate_batchnorm(ctx)
        layers = [{"name": g.name, "channels_before": g.channels, "channels_after": len(result.plan[g.name]),
                   "members": g.members} for g in graph.groups]
        info = {"policy": cfg.prune.policy, "importance": cfg.prune.importance,
                "search_speedup": result.measured_speedup, "predicted_speedup": result.predicted_speedup,
                "candidates": [{"speedup": m.speedup, "latency_ms": m.latency_ms, "widths": m.widths}
                               for m in meter.history],
                "details": result.details, "layers": layers,
                "skipped": [{"name": s.name, "reason": s.reason} for s in graph.skipped],
                "ignored": graph.ignored}
        write_json(ctx.run_dir / "plan.json", {"plan": result.plan, "prune": info})
        ctx.report["prune"] = info

    def restore(self, ctx: RunContext) -> None:
        saved = json.loads((ctx.run_dir / "plan.json").read_text())
        ctx.apply_masks(saved["plan"])
        recalibrate_batchnorm(ctx)
        ctx.report["prune"] = saved["prune"]
