"""Training, distillation and evaluation loops shared by the zoo cache and the finetune stage."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from .progress import bar as progress_bar

from .data import DataBundle
from .errors import UserError
from .multi_output import OutputLayout, layout_of, per_output


@contextlib.contextmanager
def requires_grad_while(parameters: list[torch.Tensor], value: bool):
    """Each of `parameters` requires grad (or not) for as long as the block runs; its own flag after."""
    flags = [p.requires_grad for p in parameters]
    for p in parameters:
        p.requires_grad_(value)
    try:
        yield
    finally:
        for p, flag in zip(parameters, flags):
            p.requires_grad_(flag)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> float | None:
    """Top-1 accuracy in percent, or None without labels."""
    if y is None:
        return None
    return float((predict(model, x).argmax(1) == y).float().mean() * 100)


def distillation_losses(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
                        layout: OutputLayout | None = None) -> torch.Tensor:
    """Per sample: KL(teacher || student) on softened logits over dim 1 (every other dim summed), scaled
    by T^2 so gradients keep their size. Where a sample has one output (a regressor's (batch, 1) or
    (batch,)) the softmax of one value is 1 and the KL is 0 whatever the student computes: a search
    ranked every plan at loss 0.0. There the squared error against the teacher's outputs stands in.
    A model of several outputs (`layout`, multi_output.py) sums each output's loss, each in its shape."""
    if layout is not None:
        return per_output(layout, student, teacher, lambda s, t: distillation_losses(s, t, temperature))
    if _one_output(student):
        return (student - teacher).pow(2).reshape(len(student), -1).sum(1)
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="none")
    return kl.reshape(len(student), -1).sum(1) * t * t


def _one_output(scores: torch.Tensor) -> bool:
    return scores.dim() < 2 or scores.shape[1] == 1


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                      layout: OutputLayout | None = None) -> torch.Tensor:
    """The batch mean of `distillation_losses`. Class scores keep the finetune's batchmean KL as it was
    written before (the same sum in the same order, so finetunes reproduce bit for bit)."""
    if layout is not None or _one_output(student_logits):
        return distillation_losses(student_logits, teacher_logits, temperature, layout).mean()
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.softmax(teacher_logits / t, 1),
                    reduction="batchmean") * t * t


def training_output(out) -> torch.Tensor:
    """The output to train on. A model with auxiliary heads (torchvision's GoogLeNet and Inception v3,
    or any `if self.training: return out, aux`) returns a tuple in training mode and its output alone in
    eval mode, which is what is exported and checked: the finetune trains that first element (the
    auxiliary heads get no loss; they are not in the exported model)."""
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if not isinstance(out, torch.Tensor):
        raise UserError(f"the model's forward returns a {type(out).__name__} in training mode; the finetune needs "
                        "a tensor, or a tuple whose first element is the output eval mode returns")
    return out


def fit(
    model: nn.Module,
    data: DataBundle,
    epochs: int,
    lr: float,
    seed: int,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    distill_weight: float = 0.7,
    batch_size: int = 64,
    regularizer: Callable[[], torch.Tensor] | None = None,
    after_step: Callable[[], None] | None = None,
    description: str = "train",
) -> list[float]:
    """Train with cross-entropy (labels) and/or distillation (teacher). Returns per-epoch mean loss.

    With a teacher and labels the loss is distill_weight * KL + (1 - distill_weight) * CE; with a
    teacher and no labels it is KL alone. `regularizer` adds a penalty (DSM, synaptic strength);
    `after_step` runs after each optimiser step (re-applying masks, for example).
    """
    if epochs <= 0:
        return []
    torch.manual_seed(seed)
    loader = data.train_loader(batch_size, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(loader))
    if teacher is not None:
        teacher.eval()
    losses = []
    bar = progress_bar(epochs * len(loader), description, unit="step")
    for _ in range(epochs):
        model.train()
        total, count = 0.0, 0
        for batch in loader:
            x = batch[0]
            y = batch[1] if len(batch) > 1 else None
            logits = training_output(model(x))
            loss = torch.zeros(())
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(x)
                kd = distillation_loss(logits, teacher_logits, temperature, layout_of(model))
                loss = kd if y is None else distill_weight * kd + (1 - distill_weight) * F.cross_entropy(logits, y)
            elif y is not None:
                loss = F.cross_entropy(logits, y)
            if regularizer is not None:
                loss = loss + regularizer()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if after_step is not None:
                after_step()
            total += float(loss.detach()) * len(x)
            count += len(x)
            bar.update(1)
            bar.set_postfix(loss=f"{total / count:.4g}")
        losses.append(total / max(count, 1))
    bar.close()
    model.eval()
    return losses
