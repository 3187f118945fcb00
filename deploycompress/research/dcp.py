"""Discrimination-aware Channel Pruning (DCP): greedy input-channel selection, ALGORITHMS.md §4.

Zhuang et al., NeurIPS 2018. For one layer (a 1-D/2-D/3-D conv or a linear layer with a 2-D
weight [out, in]) the input channels are chosen greedily starting from the *empty* set with zero
weights: the channel whose weight column has the largest gradient norm of the loss is added, its
column is warm-started from the dense weights and the selected weights get SGD steps. (At the
dense weights the reconstruction gradient is zero, which is why scoring must start empty.)
The auxiliary discrimination loss L_S is supplied by the caller as ``extra_loss(W)``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

_MOMENTUM = 0.9
_WEIGHT_DECAY = 1e-4


_CONVOLUTIONS = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}  # by the weight's dimensions


def layer_output(x: Tensor, weight: Tensor, conv_kwargs: Optional[dict] = None) -> Tensor:
    """Y = layer(x; W): ``x @ W^T`` for a 2-D weight, ``F.conv1d``/``conv2d``/``conv3d`` for a 3-, 4- or
    5-D weight (the pruning pipeline scores Conv1d and Conv3d consumers too)."""
    if weight.dim() == 2:
        return x @ weight.t()
    if weight.dim() in _CONVOLUTIONS:
        return _CONVOLUTIONS[weight.dim()](x, weight, **(conv_kwargs or {}))
    raise ValueError(f"weight must be 2-D (linear) or 3- to 5-D (conv), got {tuple(weight.shape)}")


def reconstruction_loss(y_dense: Tensor, y: Tensor) -> Tensor:
    """L_M = 1/(2Q) * ||Y_dense - Y||_F^2 with Q = N * n * h * w, i.e. every element of Y.

    Q follows ALGORITHMS.md §4(a) (n = output channels); Q only rescales L_M, so the greedy
    order is unaffected by the choice, only the effective SGD step size.
    """
    return 0.5 * ((y_dense - y) ** 2).sum() / y.numel()


def reconstruction_gradient(
    x: Tensor, weight: Tensor, dense_weight: Tensor, conv_kwargs: Optional[dict] = None
) -> Tensor:
    """G = dL_M/dW at ``weight`` (same shape as the weight). Sign convention: dL/dW."""
    with torch.no_grad():
        y_dense = layer_output(x, dense_weight, conv_kwargs)
    w = weight.detach().clone().requires_grad_(True)
    loss = reconstruction_loss(y_dense, layer_output(x, w, conv_kwargs))
    (g,) = torch.autograd.grad(loss, w)
    return g


def column_norms(grad: Tensor) -> Tensor:
    """Per input channel j: sum over outputs o of ||G[o, j, ...]||_F (|G[o, j]| for linear)."""
    g = grad.reshape(grad.shape[0], grad.shape[1], -1)
    return g.norm(dim=2).sum(dim=0)


def input_channel_gradient_norms(
    x: Tensor, weight: Tensor, dense_weight: Tensor, conv_kwargs: Optional[dict] = None
) -> Tensor:
    """Greedy DCP score of every input channel at ``weight``: column norms of dL_M/dW."""
    return column_norms(reconstruction_gradient(x, weight, dense_weight, conv_kwargs))


def dcp_greedy_input_channels(
    x: Tensor,
    dense_weight: Tensor,
    target_count: int,
    extra_loss: Optional[Callable[[Tensor], Tensor]] = None,
    lr: float = 0.01,
    steps_per_add: int = 1,
    epsilon: Optional[float] = None,
    lam: float = 1.0,
    conv_kwargs: Optional[dict] = None,
    trace: Optional[list] = None,
) -> list[int]:
    """Choose input channels of a layer greedily (§4(a)); returns them in selection order.

    ``x``: the layer input on the calibration sample ([N, in, h, w] or [N, in]);
    ``dense_weight``: the (fine-tuned) dense weight. Loss L = L_M + lam * extra_loss(W).
    Each round: G = dL/dW at the current W, add k = argmax_{j not in A} column norm of G,
    set W[:, k] = dense[:, k], then ``steps_per_add`` SGD steps (momentum 0.9, wd 1e-4) on W
    restricted to A. Stops at ``target_count`` channels or, if ``epsilon`` is given, when
    |L_{t-1} - L_t| / L_0 <= epsilon. If ``trace`` is a list, one dict per round is appended
    with the scores used, the pick and the loss after the SGD steps.
    """
    n_in = dense_weight.shape[1]
    target_count = max(0, min(int(target_count), n_in))
    x = x.detach()
    dense = dense_weight.detach()
    with torch.no_grad():
        y_dense = layer_output(x, dense, conv_kwargs)

    w = torch.zeros_like(dense, requires_grad=True)
    velocity = torch.zeros_like(dense)  # SGD momentum buffer, kept across additions
    selected: list[int] = []
    col_mask = torch.zeros(n_in, dtype=torch.bool)

    def total_loss() -> Tensor:
        loss = reconstruction_loss(y_dense, layer_output(x, w, conv_kwargs))
        if extra_loss is not None:
            loss = loss + lam * extra_loss(w)
        return loss

    loss_prev = float(total_loss().detach())
    loss_0 = loss_prev
    while len(selected) < target_count:
        (g,) = torch.autograd.grad(total_loss(), w)
        scores = column_norms(g).detach().cpu()
        scores[col_mask] = -float("inf")
        k = int(torch.argmax(scores))
        selected.append(k)
        col_mask[k] = True
        with torch.no_grad():
            w[:, k] = dense[:, k]  # warm start from the fine-tuned weights
        keep = col_mask.to(w.device).view(1, n_in, *([1] * (w.dim() - 2))).to(w.dtype)
        for _ in range(steps_per_add):
            (g,) = torch.autograd.grad(total_loss(), w)
            with torch.no_grad():
                # Plain SGD (torch.optim.SGD convention: v = mu v + g + wd w; w -= lr v),
                # masked to A so W outside A stays exactly 0.
                velocity.mul_(_MOMENTUM).add_((g + _WEIGHT_DECAY * w) * keep)
                w.sub_(lr * velocity)
        loss_t = float(total_loss().detach())
        if trace is not None:
            trace.append({"scores": scores, "pick": k, "loss": loss_t})
        # Adaptive stop: relative improvement of this addition below epsilon.
        if epsilon is not None and loss_0 > 0 and abs(loss_prev - loss_t) / loss_0 <= epsilon:
            break
        loss_prev = loss_t
    return selected
