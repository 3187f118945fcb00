"""Synaptic Strength (Lin et al., NeurIPS 2018), ALGORITHMS.md §5. Partly inferred (no code).

A connection from input map i to output map j (kernel K_ij = W[j, i, ...]) has strength
S_ij = |gamma_i| * ||K_ij||, gamma_i being the BatchNorm scale of input map i. Re-parameterised:
fold the BN scale into the consumer's kernels and write K_ij = s_ij * K_hat_ij, ||K_hat_ij|| = 1,
so s_ij is one free scalar per connection, trained with an L1 penalty and pruned by threshold.
Tensors here are indexed [out=j, in=i] like conv / linear weights.
"""

from __future__ import annotations

from typing import Iterable, Union

import torch
from torch import Tensor

_EPS = 1e-12


def fold_bn_scale(gamma: Tensor, beta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Fold the BN scale out of relu(gamma * x + beta): returns (new_gamma, new_beta, scale).

    relu(gamma * x + beta) = scale * relu(new_gamma * x + new_beta) with scale = |gamma|,
    new_gamma = sign(gamma) and new_beta = beta / |gamma| (relu is positively homogeneous, so
    the positive factor can leave the activation; the sign must stay inside). ``scale`` then
    multiplies the consumer's input-channel kernels (``fold_into_consumer``). For gamma > 0 this
    is the spec's "gamma = 1, beta -> beta / gamma". Exact for gamma != 0; a gamma == 0 channel
    is the constant relu(beta) and gets scale 0 (its constant belongs in the consumer's bias).
    """
    scale = gamma.abs()
    new_gamma = torch.where(gamma < 0, -torch.ones_like(gamma), torch.ones_like(gamma))
    new_beta = torch.where(scale > 0, beta / scale.clamp_min(_EPS), beta)
    return new_gamma, new_beta, scale


def fold_into_consumer(weight: Tensor, scale: Tensor) -> Tensor:
    """Multiply every input-channel kernel W[:, i, ...] by scale[i] (the folded BN scale)."""
    return weight * scale.view(1, -1, *([1] * (weight.dim() - 2)))


def reparameterise(kernel_ij: Tensor) -> tuple[Tensor, Tensor]:
    """Split one kernel K_ij into (s, K_hat) with s = ||K_ij||_F and K_hat = K_ij / s.

    A zero kernel gives s = 0 and K_hat = 0 (there is no direction to keep).
    """
    s = kernel_ij.norm()
    k_hat = kernel_ij / s if float(s) > 0 else torch.zeros_like(kernel_ij)
    return s, k_hat


def reparameterise_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Per-connection version of ``reparameterise`` for W[out, in, ...] -> (s[out, in], K_hat).

    ``s[..., None, None] * K_hat`` (broadcast over the kernel dims) reconstructs ``weight``.
    """
    flat = weight.reshape(weight.shape[0], weight.shape[1], -1)
    s = flat.norm(dim=2)
    k_hat = flat / s.clamp_min(_EPS).unsqueeze(-1)
    return s, k_hat.reshape(weight.shape)


def compose_weight(s: Tensor, k_hat: Tensor) -> Tensor:
    """Inverse of ``reparameterise_weight``: W[j, i, ...] = s[j, i] * K_hat[j, i, ...]."""
    return k_hat * s.view(*s.shape, *([1] * (k_hat.dim() - 2)))


def connection_strength(weight: Tensor, input_bn_gamma: Tensor) -> Tensor:
    """S[j, i] = |gamma_i| * ||W[j, i, ...]||_F for a weight [out, in, ...] (linear: |W[j, i]|)."""
    if input_bn_gamma.numel() != weight.shape[1]:
        raise ValueError("input_bn_gamma must have one entry per input channel")
    norms = weight.reshape(weight.shape[0], weight.shape[1], -1).norm(dim=2)
    return norms * input_bn_gamma.abs().view(1, -1)


def channel_scores(strength: Tensor) -> tuple[Tensor, Tensor]:
    """(input_scores[in], output_scores[out]) from strengths S[out, in] (§5(b)).

    Input channel i: sum over consumers j of |S[j, i]|; output channel j: sum over inputs i.
    """
    s = strength.abs()
    return s.sum(dim=0), s.sum(dim=1)


def l1_penalty(strengths: Union[Tensor, Iterable[Tensor]]) -> Tensor:
    """sum |s_ij| over one strength tensor or several (multiply by lambda, ~1e-5..1e-4)."""
    if isinstance(strengths, Tensor):
        return strengths.abs().sum()
    parts = [s.abs().sum() for s in strengths]
    return torch.stack(parts).sum() if parts else torch.tensor(0.0)


def global_threshold(strengths: Iterable[Tensor], prune_fraction: float) -> float:
    """Global threshold: |s| <= it covers ``prune_fraction`` of all connections (ties may add more)."""
    allv = torch.cat([s.detach().abs().reshape(-1) for s in strengths])
    k = int(prune_fraction * allv.numel())
    if k <= 0:
        return float("-inf")
    return float(torch.sort(allv).values[k - 1])


def connection_mask(strength: Tensor, threshold: float) -> Tensor:
    """Boolean keep-mask [out, in]: True where |s_ij| > threshold."""
    return strength.abs() > threshold


def removable_channels(mask: Tensor) -> tuple[Tensor, Tensor]:
    """(removable input channels, removable output channels): all their connections pruned."""
    return ~mask.any(dim=0), ~mask.any(dim=1)
