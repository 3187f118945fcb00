"""Prune: score channels, choose per-group widths against measured latency, mask the rest."""
from __future__ import annotations

import itertools
import json
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..allocation import AllocationProblem, SpeedupMeter, policies
from ..allocation.base import model_digest
from ..allocation.decisions import BaselineDecisions
from ..models.loading import cache_dir
from ..context import RunContext
from ..errors import TargetUnreachable, UserError
from ..fileio import atomic_write, write_json
from ..allocation.latency_model import build_latency_model
from ..data import DataBundle
from ..graph import ChannelMasks, GroupGraph, Plan
from ..onnx_export import export_bytes
from ..allocation.sap import layer_pqi
from ..importance import ScoringContext, criterion_scorer
from .. import recurrent
from ..latency import profiler, runtime
from ..multi_output import layout_of
from ..training import distillation_losses, predict
from .base import Stage
from .finetune import (finetune_epochs, finetune_round_fn, record_pqi_after, regularize_before_scoring,
                       regularized_finetune, short_fit)


# Without a validation split, SPDY's finalists are finetuned briefly on the training data after the
# first this-many calibration samples and compared on those: a paired comparison needs only a few
# hundred samples, and the short finetune keeps the rest of the training set.
FINALIST_HELD_OUT = 256
# With labels, a finalist's score per held-out sample is 1 if it is misclassified, plus this times its
# cross-entropy: the errors decide (what the user measures), and the loss breaks ties between plans
# within an image of each other. Why not the loss alone: on vgg_digits 3x (digits_distorted, seed 2)
# the DP's plan, which keeps the last conv wide, had the lower validation loss after the full finetune
# (0.2085 against uniform's 0.2233) yet classified fewer correctly (93.29% against 94.21%), and so it
# did on the test split (93.22% against 94.61%). Seed 1 went the same way.
FINALIST_LOSS_WEIGHT = 0.01
# A finalist's repeated finetunes (finetune.select_repeats) use the run's seed plus multiples of this:
# repeat 0 is the run's own finetune, the one the chosen plan ships with. Not a multiple of the
# allocation benchmark's repeat step (1000), so the finetunes that rank the finalists are not the ones
# the benchmark scores on the test split.
FINALIST_REPEAT_SEED_STEP = 101


def _loss_objective(ctx: RunContext, x: torch.Tensor, labels: torch.Tensor | None, loss_weight: float = 1.0,
                    error_weight: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """logits on `x` -> loss per sample: `loss_weight` x cross-entropy with `labels`, plus `error_weight`
    for each misclassified sample; without labels, distillation against the dense model on `x`."""
    teacher = predict(ctx.dense, x)

    def objective(logits: torch.Tensor) -> torch.Tensor:
        if labels is not None:
            errors = (logits.argmax(1) != labels).float()
            return loss_weight * F.cross_entropy(logits, labels, reduction="none") + error_weight * errors
        return distillation_losses(logits, teacher, layout=layout_of(ctx.dense))

    return objective


def _calibration_objective(ctx: RunContext) -> Callable[[torch.Tensor], torch.Tensor]:
    """The calibration loss per sample; its mean is the calibration loss."""
    x = ctx.calibration
    return _loss_objective(ctx, x, ctx.data.y_train[: len(x)] if ctx.data.has_labels else None)


class FinalistSamples(NamedTuple):
    """What SPDY's finalists are finetuned on and scored on (`finalist_samples`)."""
    inputs: torch.Tensor
    labels: torch.Tensor | None
    train_on: DataBundle  # the data each finalist's short finetune trains on
    groups: torch.Tensor | None  # which original each input copies (`per_original`); None: all distinct
    description: str  # for the report


def finalist_samples(ctx: RunContext) -> FinalistSamples:
    """The samples of SPDY's finalist ranking: the data's validation split where it has one, with the
    whole training split to finetune on. Why: the dense model trained on every training sample and each
    finalist starts from its weights, so on training samples the plans that keep the most of the dense
    function look best whether or not they finetune best (vgg_digits 3x, seed 0: the plan a wide last
    conv kept had held-out loss 0.053 against uniform's 0.087, and test loss 0.163 against 0.156).
    Without one, the first FINALIST_HELD_OUT calibration samples, left out of the finalists' finetune."""
    data = ctx.data
    scored = (f"errors + {FINALIST_LOSS_WEIGHT:g} x cross-entropy after a {finalist_epochs(ctx):g}-epoch finetune"
              if data.has_labels else f"distillation loss after a {finalist_epochs(ctx):g}-epoch finetune")
    if data.has_validation:
        copies = ("" if data.val_groups is None else
                  f" of {len(torch.unique(data.val_groups))} originals, scored per original")
        return FinalistSamples(data.x_val, data.y_val if data.has_labels else None, data, data.val_groups,
                               f"{scored}, on the validation split ({len(data.x_val)} samples{copies}, "
                               "not trained on)")
    held_out = ctx.calibration[:FINALIST_HELD_OUT]
    rest = DataBundle(data.name, data.x_train[len(held_out):],
                      None if data.y_train is None else data.y_train[len(held_out):],
                      data.x_test, data.y_test, data.num_classes)
    return FinalistSamples(held_out, data.y_train[: len(held_out)] if data.has_labels else None, rest, None,
                           f"{scored}, on the first {len(held_out)} calibration samples, left out of the "
                           "finalists' finetune (no validation split: the dense model may have trained on them)")


def calibration_loss_fn(ctx: RunContext, graph: GroupGraph) -> Callable[[Plan], float]:
    """Loss of the model masked to a plan, on calibration data. BatchNorm statistics are re-estimated
    for each plan first (and restored afterwards): with stale statistics every heavily pruned plan
    looks equally broken and the allocation search has nothing to go on."""
    objective = _calibration_objective(ctx)

    def loss(plan: Plan) -> float:
        saved = _batchnorm_buffers(ctx.model)
        masks = ChannelMasks(graph, plan)
        try:
            recalibrate_batchnorm(ctx)
            logits = predict(ctx.model, ctx.calibration)
        finally:
            masks.remove()
            _restore_batchnorm_buffers(ctx.model, saved)
        return float(objective(logits).mean())

    return loss


def per_original(scores: np.ndarray, groups: torch.Tensor | None) -> np.ndarray:
    """Per-sample scores averaged over the copies of each original (`DataBundle.val_groups`; the scores
    unchanged without groups). Why: `choose_plan` takes standard errors over the entries it is given,
    and the copies of one validation digit are misclassified together more often than apart. Over
    copies the standard error understates the one over digits (by up to sqrt(6) with digits_distorted's
    6 copies, were copies always scored alike), and the finalist repeats then left out plans that were
    not clearly behind. The groups are equal in size, so the mean is unchanged."""
    if groups is None:
        return scores
    _, original = np.unique(groups.numpy(), return_inverse=True)
    return np.bincount(original, weights=scores) / np.bincount(original)


def finetuned_loss_fn(ctx: RunContext, graph: GroupGraph) -> Callable[[Plan, int], np.ndarray] | None:
    """Score per held-out sample (`finalist_samples`; per original, `per_original`, where the validation
    split holds copies) of the model masked to a plan after a finetune (`finalist_epochs`), from the same
    weights for every plan, with the run's seed (repeat 0) or another (repeat k: FINALIST_REPEAT_SEED_STEP
    apart); the weights are restored afterwards. With labels the loss is the misclassification plus
    FINALIST_LOSS_WEIGHT times the cross-entropy; without, distillation against the dense model. None when
    no finetune follows the prune stage (the calibration loss is then the right criterion) or when nothing
    is left to train on.

    Why: the calibration loss right after pruning ranks plans by how little they break the model, and a
    finetune changes that ranking. On mobilenet_digits at 3x the plan with the lower calibration loss
    finetuned to lower accuracy (benchmarks/results/allocation_digits.md); which plan recovers best is
    measured, the way NetAdapt picks among its proposals by short-term finetuned accuracy."""
    epochs = finalist_epochs(ctx)
    if finetune_epochs(ctx) == 0 or epochs <= 0:
        return None
    samples = finalist_samples(ctx)
    if len(samples.train_on.x_train) == 0:
        return None
    objective = _loss_objective(ctx, samples.inputs, samples.labels, loss_weight=FINALIST_LOSS_WEIGHT,
                                error_weight=1.0)
    finalists = itertools.count(1)

    def loss(plan: Plan, repeat: int = 0) -> np.ndarray:
        number = next(finalists)
        saved = {name: tensor.clone() for name, tensor in ctx.model.state_dict().items()}
        masks = ChannelMasks(graph, plan)
        seed = ctx.config.seed + FINALIST_REPEAT_SEED_STEP * repeat
        try:
            recalibrate_batchnorm(ctx)  # as the prune stage does before the real finetune
            short_fit(ctx, epochs, seed, description=f"finalist {number} finetune (seed {seed})",
                      data=samples.train_on)
            logits = predict(ctx.model, samples.inputs)
        finally:
            masks.remove()
            ctx.model.load_state_dict(saved)
            ctx.model.eval()
        return per_original(objective(logits).numpy(), samples.groups)

    return loss


def finalist_epochs(ctx: RunContext) -> float:
    """finetune.select_epochs, else as many as the finetune stage will run: a shorter finetune ranks the
    finalists by how fast they recover, not by where they end. vgg_digits 3x, seed 1: after 2 epochs
    the DP's plan led uniform's on validation loss by 0.13 (0.29 against 0.42), after 6 they were level
    (0.229 against 0.231) and uniform's classified more correctly (93.06% against 92.36%)."""
    configured = ctx.config.finetune.select_epochs
    return finetune_epochs(ctx) if configured is None else configured


def _batchnorms(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def _batchnorm_buffers(model: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in bn.state_dict().items() if k.startswith(("running_", "num_batches"))}
            for bn in _batchnorms(model)]


def _restore_batchnorm_buffers(model: torch.nn.Module, saved: list[dict[str, torch.Tensor]]) -> None:
    for bn, buffers in zip(_batchnorms(model), saved):
        bn.load_state_dict(buffers, strict=False)


@torch.no_grad()
def recalibrate_batchnorm(ctx: RunContext) -> None:
    """Re-estimate BatchNorm statistics on calibration data: pruning shifts them."""
    bns = _batchnorms(ctx.model)
    if not bns:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    ctx.model.train()
    x = ctx.calibration
    for start in range(0, len(x), 64):
        if len(x[start:start + 64]) == 1 < len(x):
            break  # one sample: a BatchNorm1d in training mode cannot take it (see DataBundle.train_loader)
        ctx.model(x[start:start + 64])
    ctx.model.eval()
    for bn in bns:
        bn.momentum = 0.1


def nothing_to_prune(graph: GroupGraph, ignore: str | None) -> str:
    """The one line for a model with no channel group to prune, with what kept each candidate dense."""
    why = [f"the output layer(s) {', '.join(graph.output_names)} are always kept"] if graph.output_names else []
    matched = [n for n in graph.ignored if n not in graph.output_names]
    if ignore and matched:
        more = f" and {len(matched) - 5} more" if len(matched) > 5 else ""
        why.append(f"--ignore {ignore!r} matched {', '.join(matched[:5])}{more}")
    if graph.skipped:
        first = graph.skipped[0]
        why.append(f"{len(graph.skipped)} group(s) left dense, the first {first.name}: {first.reason}")
    return ("nothing to prune: the model has no channel group deploycompress can prune (it prunes the output "
            "channels of convolutions and linear layers, with every layer they feed, the hidden units of "
            "LSTM, GRU and RNN layers, and nn.MultiheadAttention heads)" + "".join(f"; {reason}" for reason in why))


def time_outside_groups(ctx: RunContext, graph: GroupGraph) -> str | None:
    """Why a target is out of reach, from one profile of the dense model: how much of its time is in
    layers no group shrinks (an embedding, a recurrent layer left dense, a group left dense), and which."""
    cfg = ctx.config
    try:
        breakdown = profiler.operator_breakdown(export_bytes(ctx.dense, ctx.example_input), cfg.profile.threads,
                                                cfg.profile.batch_size, cfg.device)
    except Exception:  # noqa: BLE001 - an explanation that fails must not replace the verdict it explains
        return None
    types = {name: type(module).__name__ for name, module in ctx.dense.named_modules() if name}
    return profiler.time_outside(breakdown, types, {m for g in graph.groups for m in g.members})


class PruneStage(Stage):
    name = "prune"
    # pruned.pt: the working model's weights, which regularised phases and SAP's rounds have trained
    outputs = ("plan.json", "pruned.pt")

    def run(self, ctx: RunContext) -> None:
        cfg = ctx.config
        # verify: test-prune each group on a copy; groups that would break the model stay dense
        graph = GroupGraph(ctx.model, ctx.example_input, cfg.ignore, verify=True, verify_inputs=ctx.calibration[:2])
        for skipped in graph.skipped:
            print(f"prune: left {skipped.name} dense: {skipped.reason}")
        if not graph.groups:
            raise UserError(nothing_to_prune(graph, cfg.ignore))
        x = ctx.calibration
        # The runtime's own channel block unless the recipe sets one: off the block a width costs what the
        # next multiple up does (resnet_digits on an AVX-512 EPYC: 8 channels off every group, 1.00x).
        multiple = cfg.prune.channel_multiple or runtime.channel_block(cfg.device)
        multiple_source = "prune.channel_multiple" if cfg.prune.channel_multiple else "the runtime's channel block"
        if any(g.recurrent for g in graph.groups):
            multiple_source += (f"; hidden units of recurrent layers in multiples of "
                                f"{min(multiple, recurrent.HIDDEN_MULTIPLE)}")
        pqi_before = layer_pqi(graph)  # of the dense model, before any regularised phase changes it
        regularizer = regularize_before_scoring(ctx, graph)
        scoring = ScoringContext(ctx.model, graph, x, ctx.data.y_train[: len(x)] if ctx.data.has_labels else None,
                                 predict(ctx.dense, x), regularizer=regularizer,
                                 finetune=lambda name: regularized_finetune(ctx, name, graph),
                                 channel_multiple=multiple)
        rescore = criterion_scorer(cfg.prune.importance, scoring)
        scores = rescore()
        print(f"prune: {len(graph.groups)} channel groups, importance {cfg.prune.importance}, "
              f"policy {cfg.prune.policy}, channels in multiples of {multiple} ({multiple_source}); "
              f"measuring candidates on ONNX Runtime ({cfg.profile.threads} thread(s))")
        cache = cache_dir() / "measurements" / f"{model_digest(ctx.dense, ctx.example_input)}.json"
        # A re-solve after an overshoot measures afresh: the figures the first attempt read no longer held.
        fresh = bool(ctx.resolves and ctx.resolves[-1].get("fresh_measurements"))
        meter = SpeedupMeter(ctx.dense, ctx.example_input, cfg.profile.threads, cfg.profile.batch_size,
                             cfg.prune.search_rounds, cfg.device,
                             cache_path=cache if cfg.prune.reuse_measurements else None,
                             drift_limit=cfg.prune.measurement_drift_limit, fresh=fresh)
        for note in meter.notes:
            print(f"prune: {note}")
        problem = AllocationProblem(graph, scores, cfg.target_speedup, cfg.prune.max_overshoot,
                                    multiple, meter, calibration_loss_fn(ctx, graph), cfg.seed,
                                    spdy_evaluations=cfg.prune.spdy_evaluations, spdy_min_keep=cfg.prune.spdy_min_keep,
                                    spdy_search_budget_s=cfg.prune.spdy_search_budget_s,
                                    finetune_round=finetune_round_fn(ctx, graph, rescore),
                                    finetuned_loss=finetuned_loss_fn(ctx, graph),
                                    finalist_repeats=cfg.finetune.select_repeats, aim_shift=ctx.aim_shift,
                                    baseline_decisions=BaselineDecisions(cache.with_suffix(".baselines.json"),
                                                                         load=not fresh)
                                    if cfg.prune.reuse_measurements else None)
        if ctx.resolves:
            last = ctx.resolves[-1]
            if last.get("reason") == "overshoot":
                problem.notes.append(f"pruned again (re-solve {len(ctx.resolves)}): the profile measured "
                                     f"{last['measured']:.2f}x, above the allowed "
                                     f"{cfg.allowed_speedup:.2f}x, so every "
                                     "candidate was measured afresh")
            else:
                problem.notes.append(f"pruned again (re-solve {len(ctx.resolves)}): the profile measured "
                                     f"{last['measured']:.2f}x against the {cfg.target_speedup:g}x target, so "
                                     f"the search window's goal is raised by {last['aim_shift']:.1%}")
        try:
            result = policies.get(cfg.prune.policy)().allocate(problem)
        except TargetUnreachable as exc:
            where = time_outside_groups(ctx, graph)
            raise TargetUnreachable(f"{exc}; {where}" if where else str(exc), exc.best_speedup) from None
        # Per-group latency and the whole-model prediction, for every policy: the latency model is fitted
        # to every candidate measured during the search except the chosen plan itself, so the error of
        # the prediction reported here is an honest out-of-sample figure.
        widths = {name: len(kept) for name, kept in result.plan.items()}
        if result.details.get("finalists"):
            result.details["finalists_ranked_on"] = finalist_samples(ctx).description
        latency_model = build_latency_model(problem)
        for m in meter.history:
            latency_model.add_measurement(m.widths, m.speedup)
        predicted_ms = latency_model.predict_ms_excluding(widths)
        result.predicted_speedup = meter.dense_ms / predicted_ms
        print(f"prune: chose a plan measured at {result.measured_speedup:.2f}x after "
              f"{len(meter.history)} measured candidates")
        ctx.apply_masks(result.plan)
        recalibrate_batchnorm(ctx)
        layers = [{"name": g.name, "channels_before": g.channels, "channels_after": len(result.plan[g.name]),
                   "latency_ms_before": latency_model.scale * latency_model.group_ms(g.name),
                   "latency_ms_after": latency_model.scale * latency_model.group_ms(g.name, widths),
                   "pqi_before": pqi_before.get(g.name), "members": g.members} for g in graph.groups]
        info = {"policy": cfg.prune.policy, "importance": cfg.prune.importance,
                "channel_multiple": multiple, "channel_multiple_source": multiple_source,
                "search_speedup": result.measured_speedup, "predicted_speedup": result.predicted_speedup,
                "predicted_latency_ms": predicted_ms, "search_dense_ms": meter.dense_ms,
                "notes": meter.notes + scoring.notes + problem.notes,
                "candidates": [{"speedup": m.speedup, "latency_ms": m.latency_ms, "widths": m.widths}
                               for m in meter.history],
                "details": result.details, "layers": layers,
                "skipped": [{"name": s.name, "reason": s.reason} for s in graph.skipped],
                "ignored": graph.ignored}
        write_json(ctx.run_dir / "plan.json", {"plan": result.plan, "prune": info})
        atomic_write(ctx.run_dir / "pruned.pt", lambda p: torch.save(ctx.model.state_dict(), p))
        ctx.report["prune"] = info
        record_pqi_after(ctx)  # the finetune stage updates it for the finetuned weights

    def restore(self, ctx: RunContext) -> None:
        saved = json.loads((ctx.run_dir / "plan.json").read_text())
        ctx.apply_masks(saved["plan"])
        ctx.model.load_state_dict(torch.load(ctx.run_dir / "pruned.pt", map_location="cpu", weights_only=True))
        ctx.model.eval()
        ctx.report["prune"] = saved["prune"]
