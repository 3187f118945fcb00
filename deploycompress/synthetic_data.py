"""Data-free inputs that look, to the model, like the data it was trained on (ZeroQ, Cai et al. 2020).

A data-free run scores SPDY's candidates and re-estimates BatchNorm on its calibration inputs. Gaussian
noise is far from what a trained model saw, and re-estimating its BatchNorm statistics on noise loses
what training put there: the trained resnet_digits, compressed to 2x data-free on noise, kept 44.8% of
the digits test split right (dense 99.7%); leaving BatchNorm as trained instead kept 16.4%. A trained
BatchNorm stores the mean and variance of its input over the training data, so inputs can be optimised
until every BatchNorm sees those statistics on them: the same run on 448 such inputs (the default
budget, 113 steps a batch) kept 96.4% (the training images themselves, unlabelled: 97.8%), and vgg_digits
99.2% against 35.4% on noise. Not a cure: mobilenet_digits kept 9.2% against 11.7% on noise, and 60.4%
on the real images (README).

Runs only where the model has BatchNorms with trained statistics (an untrained one's are 0 and 1 and
say nothing) and floating-point inputs, within `prune.synthetic_budget_s`.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from . import frozen_norm
from .data import DataBundle
from .fileio import atomic_write
from .progress import bar as progress_bar
from .training import requires_grad_while

BATCH = 64  # samples optimised together: a batch's statistics are matched, as in ZeroQ
# Steps a batch are set so that about TARGET_BATCHES batches fit the budget: SPDY's loss and the
# BatchNorm re-estimation want hundreds of samples more than the last digit of the statistics' loss
# (resnet_digits at 2x: 7 batches of 113 steps, statistics loss 87 -> 0.37, kept 96.4%; 9 of 87, loss 0.7,
# 95.3%; one batch of 768 samples optimised 300 steps, loss 0.04, passed as --data, 96.9%).
TARGET_BATCHES = 8
MAX_STEPS = 200
MIN_STEPS = 30
LEARNING_RATE = 0.1


def trained_norms(model: nn.Module) -> list[nn.Module]:
    """BatchNorms (and frozen ones) whose running statistics are not the 0 and 1 they start at."""
    norms = []
    for module in model.modules():
        tracked = isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
        if not (tracked or frozen_norm.is_frozen_norm(module)) or module.running_mean is None:
            continue
        if bool((module.running_mean != 0).any()) or bool((module.running_var != 1).any()):
            norms.append(module)
    return norms


def synthesize(model: nn.Module, random: DataBundle, budget_s: float, seed: int,
               cache: Path | None = None) -> tuple[DataBundle, str] | None:
    """Inputs whose statistics at every trained BatchNorm match its running ones, started from `random`'s
    Gaussian samples; as many whole batches as `budget_s` allows, at least one. None where the model has
    no trained BatchNorm or takes token ids. Returns the data and a line saying what was done.

    How many batches fit depends on the machine's speed, so the inputs are kept in `cache` (named by the
    model, its input shape, the seed and the budget): a second run of the same model, or a resumed one,
    reads them back and decides as the first did."""
    norms = trained_norms(model)
    if not norms or budget_s <= 0 or not random.x_train.is_floating_point():
        return None
    if cache is not None and cache.is_file():
        try:
            x = torch.load(cache, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged cache entry is synthesised again
            x = None
        if isinstance(x, torch.Tensor) and x.shape[1:] == random.x_train.shape[1:]:
            return _bundle(x), _line(x, norms, "synthesised earlier for this model", f", read from {cache}")
    pool = torch.cat([random.x_test, random.x_train])
    seen: list[tuple[torch.Tensor, nn.Module]] = []

    def record(module, inputs, _output):
        seen.append((inputs[0], module))

    handles = [m.register_forward_hook(record) for m in norms]
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    start = time.perf_counter()
    try:
        with requires_grad_while(list(model.parameters()), False):
            batches, steps, last_loss = _optimise(model, pool, seen, budget_s, start)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    x = torch.cat(batches)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda p: torch.save(x, p))
    return _bundle(x), _line(x, norms, f"synthesised in {time.perf_counter() - start:.0f} s",
                             f" ({steps} Adam steps a batch of {BATCH}, statistics loss {last_loss:.3g})")


def _line(x: torch.Tensor, norms: list[nn.Module], how: str, detail: str) -> str:
    """What the run calibrates on. Frozen norms keep their statistics (the prune stage re-estimates
    torch's BatchNorms only), so re-estimation is claimed only where the model has those."""
    reestimated = any(isinstance(n, nn.modules.batchnorm._BatchNorm) for n in norms)
    return (f"data-free: {len(x)} inputs {how} so that each of the {len(norms)} BatchNorms sees its trained mean "
            f"and variance on them{detail}; they, not Gaussian noise, calibrate the search"
            f"{' and re-estimate BatchNorm' if reestimated else ''} (prune.synthetic_budget_s)")


def _bundle(x: torch.Tensor) -> DataBundle:
    n_test = max(1, len(x) // 4)
    return DataBundle("synthetic", x[n_test:], None, x[:n_test], None, None)


def _statistics_loss(seen: list[tuple[torch.Tensor, nn.Module]]) -> torch.Tensor:
    loss = torch.zeros(())
    for x, norm in seen:
        dims = [d for d in range(x.dim()) if d != 1]
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        loss = loss + ((mean - norm.running_mean) ** 2).mean() + ((var - norm.running_var) ** 2).mean()
    return loss


def _optimise(model: nn.Module, pool: torch.Tensor, seen: list, budget_s: float, start: float):
    """Optimise batches of `pool` in turn until the budget is spent. The first batch's second and third
    steps (the first warms up) set how many steps each batch gets: TARGET_BATCHES of them in the budget,
    within [MIN_STEPS, MAX_STEPS]."""
    wanted = max(1, len(pool) // BATCH)
    batches: list[torch.Tensor] = []
    steps = MAX_STEPS
    last_loss = float("nan")
    progress = progress_bar(wanted * steps, "synthesise inputs", unit="step")
    for b in range(wanted):
        x = pool[b * BATCH:(b + 1) * BATCH].clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=LEARNING_RATE)
        step = 0
        while step < steps:
            seen.clear()
            optimizer.zero_grad(set_to_none=True)
            model(x)
            loss = _statistics_loss(seen)
            loss.backward()
            optimizer.step()
            step += 1
            progress.update(1)
            if b == 0 and step == 1:
                warm = time.perf_counter()
            if b == 0 and step == 3:
                per_step = (time.perf_counter() - warm) / 2
                steps = int(min(MAX_STEPS, max(MIN_STEPS, budget_s / TARGET_BATCHES / max(per_step, 1e-6))))
                progress.total = wanted * steps
            progress.set_postfix(loss=f"{float(loss.detach()):.3g}")
        last_loss = float(loss.detach())
        batches.append(x.detach())
        elapsed = time.perf_counter() - start
        if elapsed + elapsed / len(batches) > budget_s:  # another batch would not fit
            break
    progress.close()
    return batches, steps, last_loss
