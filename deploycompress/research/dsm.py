"""Dirichlet Scale Mixture (DSM) prior as a fine-tuning regulariser, ALGORITHMS.md §7.

Prior (Arnstad, Ronneberg, Storvik): w_ij = tau * lambda_tilde_j * sqrt(phi_ji) * z_ij,
z ~ N(0, 1), phi_j ~ Dirichlet(alpha), lambda_j ~ half-Cauchy(0, 1), tau ~ half-Cauchy(0, tau0)
and a regularised slab lambda_tilde^2 = c^2 lambda^2 / (c^2 + tau^2 lambda^2).
Our adaptation (§7(b), not in the paper): a MAP penalty added to the fine-tuning loss, with
phi_j = softmax(logits_j), lambda = softplus(.), tau = softplus(.) as free parameters.
Indexing: j = output channel, i = input channel; a weight is [out, in, ...].
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def tau0(P: int, N: int, p0: float = 4) -> float:
    """Global scale of the half-Cauchy on tau: tau_0 = p0 / (P - p0) / sqrt(N).

    P = number of inputs per unit, N = number of data points, p0 = prior guess of relevant inputs.
    """
    if P <= p0:
        raise ValueError(f"tau0 needs P > p0, got P={P}, p0={p0}")
    if N <= 0:
        raise ValueError("tau0 needs N > 0")
    return p0 / (P - p0) / math.sqrt(N)


def expected_sum_phi_sq(P: int, alpha: float) -> float:
    """E[sum_i phi_i^2] = (alpha + 1) / (P * alpha + 1) for phi ~ Dirichlet(alpha * 1_P).

    Its inverse is the "effective number of inputs" a unit uses under the prior.
    """
    return (alpha + 1.0) / (P * alpha + 1.0)


def slab_lambda_tilde(lam: Tensor, tau: Tensor, c2: float) -> Tensor:
    """Regularised slab: lambda_tilde = sqrt(c^2 lambda^2 / (c^2 + tau^2 lambda^2))."""
    l2 = lam**2
    return torch.sqrt(c2 * l2 / (c2 + tau**2 * l2))


def decay_coefficients(tau, lambda_tilde, phi) -> Tensor:
    """Adaptive weight-decay view: 1 / (2 tau^2 lambda_tilde_j^2 phi_ji) per connection.

    0.5 * z^2 = w^2 / (2 tau^2 lambda_tilde^2 phi), so this is the coefficient of w^2 in the
    penalty. ``lambda_tilde`` [out] broadcasts against ``phi`` [out, in] along dim 0.
    """
    tau, lt, phi = (torch.as_tensor(v, dtype=torch.float64) for v in (tau, lambda_tilde, phi))
    if phi.dim() == 2 and lt.dim() == 1:
        lt = lt.unsqueeze(1)
    return 1.0 / (2.0 * tau**2 * lt**2 * phi)


def _softplus_inv(v: float) -> float:
    """x with softplus(x) = v (for initialising the unconstrained parameters)."""
    if v <= 0:
        raise ValueError("softplus target must be > 0")
    return v + math.log(-math.expm1(-v))


class DSMPrior(nn.Module):
    """Per-layer DSM prior parameters and MAP penalty for a weight [out, in, ...] (§7(b)).

    Parameters: ``logits`` [out, in] (phi_j = softmax over inputs), ``lambda_raw`` [out]
    (lambda = softplus), ``tau_raw`` scalar (tau = softplus). c^2 of the slab is fixed at
    ``c2`` (4 = the mean of InvGamma(2, 4)); the penalty as specified has no c^2 term.
    ``tau_0``: given directly, or computed by ``tau0(P=in, N=n_data, p0)`` where p0 is
    capped at in/2 for layers with few inputs (our choice; the formula needs P > p0).
    Add ``penalty(weight)`` (scaled as you like, e.g. by 1/N) to the fine-tuning loss and
    optimise these parameters together with the weights.
    """

    def __init__(
        self,
        weight_shape: Sequence[int],
        alpha: float = 0.1,
        tau_0: Optional[float] = None,
        n_data: Optional[int] = None,
        p0: float = 4,
        c2: float = 4.0,
        eps: float = 1e-8,
        tau_init: float = 1.0,
        lambda_init: float = 1.0,
    ):
        super().__init__()
        out_ch, in_ch = int(weight_shape[0]), int(weight_shape[1])
        if tau_0 is None:
            if n_data is None:
                raise ValueError("DSMPrior needs tau_0 or n_data")
            tau_0 = tau0(in_ch, n_data, min(p0, in_ch / 2))
        self.alpha, self.tau0, self.c2, self.eps = float(alpha), float(tau_0), float(c2), float(eps)
        self.weight_shape = tuple(int(s) for s in weight_shape)
        self.logits = nn.Parameter(torch.zeros(out_ch, in_ch))  # uniform phi at the start
        self.lambda_raw = nn.Parameter(torch.full((out_ch,), _softplus_inv(lambda_init)))
        self.tau_raw = nn.Parameter(torch.tensor(_softplus_inv(tau_init)))

    def phi(self) -> Tensor:
        """phi [out, in]: each output channel's variance shares over its input channels."""
        return torch.softmax(self.logits, dim=1)

    def lam(self) -> Tensor:
        """lambda_j [out] = softplus(lambda_raw)."""
        return F.softplus(self.lambda_raw)

    def tau(self) -> Tensor:
        """Global scale tau = softplus(tau_raw)."""
        return F.softplus(self.tau_raw)

    def lambda_tilde(self) -> Tensor:
        """Regularised slab lambda_tilde_j [out]."""
        return slab_lambda_tilde(self.lam(), self.tau(), self.c2)

    def _scale(self, weight: Tensor) -> Tensor:
        """Prior std of every weight entry, tau * lambda_tilde_j * sqrt(phi_ji), shaped like it."""
        s = self.tau() * self.lambda_tilde().unsqueeze(1) * torch.sqrt(self.phi())
        return s.view(*s.shape, *([1] * (weight.dim() - 2)))

    def penalty(self, weight: Tensor) -> Tensor:
        """MAP penalty 0.5||Z||^2 + (1-alpha) sum log(phi+eps) + sum log(1+lambda^2)
        + log(1 + tau^2/tau0^2), with Z = W / (tau * lambda_tilde_j * sqrt(phi_ji)).

        Interpretation for conv weights [out, in, kh, kw]: all kh*kw entries of kernel K_ji share
        the scale of connection (j, i), so ||Z||^2 sums over every entry, while the Dirichlet term
        counts each connection once (phi is per connection, not per kernel entry). The term
        (1-alpha) * log phi is -log Dirichlet(alpha) up to a constant; it rewards phi -> 0, hence
        eps. As in the spec, the Gaussian normaliser sum log(scale) is not included, so this is
        the adaptive-weight-decay view rather than the full negative log posterior.
        """
        if tuple(weight.shape[:2]) != self.weight_shape[:2]:
            raise ValueError(f"weight {tuple(weight.shape)} does not match {self.weight_shape}")
        z = weight / self._scale(weight)
        tau, lam = self.tau(), self.lam()
        return (
            0.5 * (z**2).sum()
            + (1.0 - self.alpha) * torch.log(self.phi() + self.eps).sum()
            + torch.log1p(lam**2).sum()
            + torch.log1p(tau**2 / self.tau0**2)
        )

    def weight_decay_coefficients(self) -> Tensor:
        """Per-connection decay 1 / (2 tau^2 lambda_tilde_j^2 phi_ji) [out, in] (no grad)."""
        with torch.no_grad():
            return decay_coefficients(self.tau(), self.lambda_tilde(), self.phi())

    def channel_scores(self) -> tuple[Tensor, Tensor]:
        """(out_scores [out] = tau * lambda_tilde_j, in_scores [in] = sum_j phi_ji lambda_tilde_j^2)."""
        with torch.no_grad():
            lt = self.lambda_tilde()
            out_scores = self.tau() * lt
            in_scores = (self.phi() * (lt**2).unsqueeze(1)).sum(dim=0)
        return out_scores, in_scores
