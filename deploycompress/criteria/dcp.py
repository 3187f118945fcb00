"""Discrimination-aware channel pruning as a criterion (``--importance dcp``), ALGORITHMS.md §4.

For each group with a single consumer layer (see blocks.py), DCP chooses the consumer's input
channels greedily from the empty set: at each step the channels whose weight columns have the
largest gradient norm of L = L_M + lambda * L_S join, their weights warm-start from the dense ones
and the selected weights take one SGD step. The order of selection is the score (first picked =
highest), so the top-s of the scores is DCP's selection for every s at once.

Chunked greedy (our speed-up): each step adds `channel_multiple` channels (the top ones by gradient
norm, in that order) instead of one. Policies only ask for widths on that grid, so what a plan can
see is which chunk a channel joined in; adding one at a time costs `channel_multiple` times more
gradient evaluations (220 s instead of ~30 s for the default model). With chunk = 1 this is exactly
research.dcp.dcp_greedy_input_channels (a test checks it).

Kept affordable, and adapted where the paper's setting does not fit a per-group criterion:
- L_S comes from an auxiliary head *right after the consumer* (global average pool -> BN -> ReLU ->
  linear -> cross-entropy), trained briefly on the calibration set with the model frozen. The paper
  places P heads at segment ends and fine-tunes the network with them; a head at the layer itself
  keeps the gradient of L_S with respect to the layer's weights one layer deep. A linear consumer
  whose outputs are the model's logits needs no head: L_S is its own cross-entropy.
- At most MAX_SAMPLES calibration samples. Without labels, L_S uses the dense model's predictions.
- Groups without a single consumer fall back to L2 magnitude (said once in the notes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..graph import ChannelGroup
from ..importance import Criterion, ScoringContext, criteria, magnitude_scores
from ..multi_output import layout_of
from ..research.dcp import column_norms, layer_output, reconstruction_loss
from .blocks import Block, prepare_blocks

MAX_SAMPLES = 64
HEAD_STEPS = 60  # full-batch Adam steps for an auxiliary head on cached features
HEAD_LR = 1e-2
LAMBDA = 1.0  # weight of the discrimination loss, as in the paper
SGD_LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4  # the paper's settings for the weight updates


def chunked_greedy(x: torch.Tensor, dense_weight: torch.Tensor, chunk: int, extra_loss=None,
                   lam: float = LAMBDA, conv_kwargs: dict | None = None) -> list[int]:
    """Every input channel in DCP's greedy order, `chunk` channels per gradient evaluation.

    Start from W = 0 (at the dense weights the reconstruction gradient is zero); each step: G = dL/dW,
    add the `chunk` unselected columns with the largest norms of G, copy their dense weights in, then
    one SGD step (momentum, weight decay) on W restricted to the selected columns.
    """
    n_in = dense_weight.shape[1]
    dense = dense_weight.detach()
    with torch.no_grad():
        y_dense = layer_output(x, dense, conv_kwargs)
    w = torch.zeros_like(dense, requires_grad=True)
    velocity = torch.zeros_like(dense)
    selected: list[int] = []
    chosen = torch.zeros(n_in, dtype=torch.bool)

    def gradient() -> torch.Tensor:
        loss = reconstruction_loss(y_dense, layer_output(x, w, conv_kwargs))
        if extra_loss is not None:
            loss = loss + lam * extra_loss(w)
        return torch.autograd.grad(loss, w)[0]

    while len(selected) < n_in:
        scores = column_norms(gradient()).detach().clone()
        scores[chosen] = -float("inf")
        count = min(chunk, n_in - len(selected))
        # stable sort: ties go to the lower index, as argmax does in the one-at-a-time version
        picks = [int(i) for i in torch.sort(-scores, stable=True).indices[:count]]
        selected.extend(picks)
        chosen[picks] = True
        if len(selected) == n_in:
            break
        with torch.no_grad():
            w[:, picks] = dense[:, picks]
        keep = chosen.view(1, n_in, *([1] * (w.dim() - 2))).to(w.dtype)
        g = gradient()
        with torch.no_grad():
            velocity.mul_(MOMENTUM).add_((g + WEIGHT_DECAY * w) * keep)
            w.sub_(SGD_LR * velocity)
    return selected


class AuxiliaryHead(nn.Module):
    """Global average pool -> BN -> ReLU -> linear, on a feature map [N, C, ...] or features [N, C].

    The paper's head is BN -> ReLU -> pool -> linear; pooling first (our change) makes the head a
    function of C numbers per sample, so it trains in a blink on cached features.
    """

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels)
        self.fc = nn.Linear(channels, classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.flatten(2).mean(2) if features.dim() > 2 else features
        return self.fc(torch.relu(self.bn(pooled)))


def train_head(features: torch.Tensor, labels: torch.Tensor, classes: int, seed: int = 0) -> AuxiliaryHead:
    """Fit a head on frozen features; returned in eval mode (fixed BN statistics, frozen parameters)
    so that L_S is a fixed function of the layer's output while the greedy selection differentiates it."""
    torch.manual_seed(seed)
    head = AuxiliaryHead(features.shape[1], classes)
    optimizer = torch.optim.Adam(head.parameters(), lr=HEAD_LR)
    features = features.detach()
    with torch.enable_grad():  # scoring may run under no_grad; the head is trained regardless
        for _ in range(HEAD_STEPS):
            loss = F.cross_entropy(head(features), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    head.eval()
    for p in head.parameters():
        p.requires_grad_(False)
    return head


def _conv_kwargs(layer: nn.Module) -> dict | None:
    if isinstance(layer, nn.Linear):
        return None
    return {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation, "groups": layer.groups}


def greedy_order(block: Block, layer_input: torch.Tensor, labels: torch.Tensor, classes: int,
                 is_output: bool, chunk: int) -> list[int]:
    """DCP's greedy selection order over the group's channels (all of them, first pick first)."""
    layer = block.consumer
    # Restrict the layer to the group's input channels; other inputs (rare) are left out of L_M.
    x = layer_input[:, block.channels].detach()
    weight = layer.weight.detach()[:, block.channels]
    kwargs = _conv_kwargs(layer)
    bias = None if layer.bias is None else layer.bias.detach()

    def output(w: torch.Tensor) -> torch.Tensor:
        y = layer_output(x, w, kwargs)
        if bias is not None:
            y = y + bias.view(1, -1, *([1] * (y.dim() - 2)))
        return y

    if is_output:
        def extra_loss(w: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(output(w), labels)
    else:
        with torch.no_grad():
            features = output(weight)
        head = train_head(features, labels, classes)

        def extra_loss(w: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(head(output(w)), labels)

    with torch.enable_grad():
        return chunked_greedy(x, weight, chunk, extra_loss, LAMBDA, kwargs)


@criteria.register("dcp")
class DCP(Criterion):
    """Greedy discrimination-aware selection order as scores: (C - position) / C, first pick = 1."""

    def prepare(self, scoring: ScoringContext) -> None:
        layout = layout_of(scoring.model)
        if layout is not None:  # the teacher's argmax over a class map and a box map together is no label
            raise UserError(f"--importance dcp discriminates the classes of one output of class scores; this model "
                            f"returns {len(layout.names)} outputs ({layout.describe()}): choose another criterion")
        x = scoring.calibration[:MAX_SAMPLES]
        self.blocks, self.inputs = prepare_blocks(scoring, "dcp", x)
        if scoring.labels is not None:
            self.labels = scoring.labels[:MAX_SAMPLES]
        else:  # data-free: discriminate what the dense model predicts
            self.labels = scoring.teacher_logits[:MAX_SAMPLES].argmax(1)
        self.classes = int(scoring.teacher_logits.shape[1])
        self.chunk = max(1, scoring.channel_multiple)
        with torch.no_grad():
            logits = scoring.model.eval()(x)
        outputs = {b.consumer for b in self.blocks.values() if isinstance(b.consumer, nn.Linear)
                   and b.consumer.out_features == logits.shape[1]}
        self.is_output = outputs

    def __call__(self, group: ChannelGroup) -> torch.Tensor:
        block = self.blocks.get(group.name)
        if block is None:
            return magnitude_scores(group)
        order = greedy_order(block, self.inputs[block.consumer], self.labels, self.classes,
                             block.consumer in self.is_output, self.chunk)
        channels = group.channels
        scores = torch.zeros(channels)
        for position, j in enumerate(order):
            scores[j] = (channels - position) / channels
        return scores
