"""i-SpaSP: structured pruning via sparse signal recovery, ALGORITHMS.md §3.

Wolfe & Kyrillidis, L4DC 2022. A block is producer -> hidden H (C channels, post-activation) ->
consumer -> Y. The selector keeps s hidden channels chosen by a CoSaMP-like loop: the gradient of
the residual nominates 2s candidates, the aggregate activation decides which s of the candidates
plus the current support survive. The kept channels keep their original weights (no refit).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor


def _channel_mask(support: list[int], hidden: Tensor) -> Tensor:
    """A {0,1} mask of shape [1, C, 1, ...] broadcastable against ``hidden``."""
    mask = torch.zeros(hidden.shape[1], dtype=hidden.dtype, device=hidden.device)
    if support:
        mask[torch.tensor(support, device=hidden.device)] = 1
    return mask.view(1, -1, *([1] * (hidden.dim() - 2)))


def _per_channel_sum(t: Tensor) -> Tensor:
    """Sum over samples (dim 0) and positions (dims 2..) -> one number per channel."""
    dims = [0] + list(range(2, t.dim()))
    return t.sum(dim=dims)


def _top(values: Tensor, k: int, among: Optional[list[int]] = None) -> list[int]:
    """Indices of the k largest values (optionally restricted to ``among``), ties -> lower index.

    A stable sort keeps the result deterministic when many values tie (e.g. zero gradients).
    """
    idx = torch.arange(values.numel()) if among is None else torch.tensor(sorted(among))
    order = torch.sort(values.detach().cpu()[idx], descending=True, stable=True).indices
    return [int(i) for i in idx[order[:k]]]


def residual_and_gradient(
    hidden: Tensor, consumer: Callable[[Tensor], Tensor], support: list[int]
) -> tuple[float, Tensor]:
    """R = 0.5 * ||Y_dense - consumer(H restricted to S)||^2 and g_j = sum_{n,pos} dR/dH[n, j].

    The pruned path is detached, so dR/dH flows through the dense path only:
    dR/dH = J^T (Y_dense - Y_S). With an identity consumer g is just the per-channel residual, so
    the largest *signed* g are the channels whose removal hurts the output most.
    """
    h = hidden.detach().requires_grad_(True)
    with torch.no_grad():
        y_pruned = consumer(hidden.detach() * _channel_mask(support, hidden))
    # Y_dense = consumer(h) is recomputed with a graph each call: the only path R depends on.
    diff = consumer(h) - y_pruned
    r = 0.5 * (diff**2).sum()
    (grad,) = torch.autograd.grad(r, h)
    return float(r.detach()), _per_channel_sum(grad)


def ispasp_select(
    hidden: Tensor,
    consumer: Callable[[Tensor], Tensor],
    keep: int,
    iterations: int = 20,
    trace: Optional[list] = None,
) -> list[int]:
    """Select ``keep`` of the C hidden channels of ``hidden`` [N, C, ...] by i-SpaSP (§3(a)).

    ``consumer`` maps H to the block output Y (e.g. the next conv/linear layers, weights fixed).
    Each of ``iterations`` rounds: g from the residual gradient, candidates = top-2s channels by
    g, U = candidates | S, S = top-s of U by a_j = sum_{n,pos} H[n, j]. If ``trace`` is a list,
    one dict per round is appended: {'iteration', 'support' (sorted), 'candidates', 'R'} where R
    is the residual objective of the new support. Returns the sorted kept indices.
    """
    if hidden.dim() < 2:
        raise ValueError("hidden must be [N, C, ...]")
    channels = hidden.shape[1]
    if keep <= 0 or iterations <= 0:
        raise ValueError("keep and iterations must be >= 1")
    if keep >= channels:
        return list(range(channels))
    hidden = hidden.detach()
    activation = _per_channel_sum(hidden)  # a_j: sum over samples and positions (signed)

    support: list[int] = []
    _, grad = residual_and_gradient(hidden, consumer, support)
    n_cand = min(2 * keep, channels)
    for it in range(1, iterations + 1):
        candidates = _top(grad, n_cand)
        union = sorted(set(candidates) | set(support))
        new_support = sorted(_top(activation, keep, among=union))
        if new_support != support or it == 1:
            support = new_support
            # The gradient at the new support feeds the next round; R is kept for the trace.
            r, grad = residual_and_gradient(hidden, consumer, support)
        # else: S is a fixed point -> g, the candidates and S repeat; skip the recomputation.
        if trace is not None:
            trace.append(
                {"iteration": it, "support": list(support), "candidates": sorted(candidates), "R": r}
            )
    return support
