"""Worked examples of ALGORITHMS.md §7(c): the Dirichlet scale mixture prior and penalty."""

import math

import numpy as np
import pytest
import torch

from deploycompress.research.dsm import (
    DSMPrior,
    decay_coefficients,
    expected_sum_phi_sq,
    slab_lambda_tilde,
    tau0,
)


def test_expected_sum_phi_sq_closed_form_and_monte_carlo():
    assert expected_sum_phi_sq(100, 0.1) == pytest.approx(0.1, abs=1e-12)
    rng = np.random.default_rng(0)
    phi = rng.dirichlet(np.full(100, 0.1), size=20000)
    assert float((phi**2).sum(axis=1).mean()) == pytest.approx(0.1, abs=0.01)
    # A different alpha gives a different value (the formula is not a constant).
    assert expected_sum_phi_sq(100, 1.0) == pytest.approx(2 / 101, abs=1e-12)


def test_decay_coefficients_example():
    coeff = decay_coefficients(1.0, 1.0, torch.tensor([0.9, 0.1]))
    assert coeff.tolist() == pytest.approx([0.5556, 5.0], abs=1e-4)
    # tau and lambda_tilde enter squared; lambda_tilde is per output row.
    coeff2 = decay_coefficients(2.0, torch.tensor([1.0, 0.5]), torch.full((2, 2), 0.5))
    assert coeff2.tolist()[0] == pytest.approx([0.25, 0.25])
    assert coeff2.tolist()[1] == pytest.approx([1.0, 1.0])


def test_tau0_and_slab():
    assert tau0(100, 100, 4) == pytest.approx(4 / 96 / 10, abs=1e-12)
    with pytest.raises(ValueError):
        tau0(4, 10, 4)
    lt = slab_lambda_tilde(torch.tensor(1.0), torch.tensor(2.0), 4.0)
    assert float(lt) == pytest.approx(math.sqrt(0.5), abs=1e-6)  # 4 / (4 + 4)


def make_prior(shape=(2, 2)):
    # tau = lambda = 1, c^2 = 4 -> lambda_tilde^2 = 4 / 5 = 0.8; phi uniform (0.5, 0.5).
    return DSMPrior(shape, alpha=0.1, tau_0=1.0, c2=4.0, tau_init=1.0, lambda_init=1.0)


def test_penalty_value_linear():
    prior = make_prior()
    assert float(prior.tau()) == pytest.approx(1.0, abs=1e-6)
    assert prior.lam().tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    # 0.5 * 30 / (0.8 * 0.5) + 0.9 * 4 * log(0.5) + 2 log 2 + log 2
    assert float(prior.penalty(w)) == pytest.approx(37.0841, abs=1e-3)


def test_penalty_value_conv_and_gradients():
    prior = make_prior((2, 2, 1, 2))
    # Each connection has a 1x2 kernel; ||Z||^2 sums all entries, log phi counts connections.
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(2, 2, 1, 1).repeat(1, 1, 1, 2)
    expected = 0.5 * 60 / 0.4 + 0.9 * 4 * math.log(0.5) + 3 * math.log(2)
    assert float(prior.penalty(w)) == pytest.approx(expected, abs=1e-3)
    w.requires_grad_(True)
    prior.penalty(w).backward()
    assert all(p.grad is not None for p in prior.parameters())
    # dP/dW = W / scale^2 = 2 * decay coefficient * W.
    assert torch.allclose(w.grad[:, :, 0, 0], w.detach()[:, :, 0, 0] / 0.4, atol=1e-5)
    with pytest.raises(ValueError):
        prior.penalty(torch.zeros(3, 2, 1, 2))


def test_scores_and_decay_of_module():
    prior = make_prior()
    out_scores, in_scores = prior.channel_scores()
    assert out_scores.tolist() == pytest.approx([math.sqrt(0.8)] * 2, abs=1e-5)
    assert in_scores.tolist() == pytest.approx([0.8, 0.8], abs=1e-5)  # 2 * 0.5 * 0.8
    assert prior.weight_decay_coefficients().flatten().tolist() == pytest.approx([1.25] * 4, abs=1e-5)
    # tau_0 from (P = in, N): uses p0 = min(4, in/2).
    assert DSMPrior((3, 100), n_data=100).tau0 == pytest.approx(4 / 96 / 10, abs=1e-12)
    assert DSMPrior((3, 4), n_data=100).tau0 == pytest.approx(2 / 2 / 10, abs=1e-12)


def test_penalty_value_non_uniform():
    # tau = 0.5, lambda = 2, c^2 = 4 -> lambda_tilde^2 = 16 / 5 = 3.2, tau^2 lt^2 = 0.8;
    # phi row 0 = (0.8, 0.2), row 1 = (0.5, 0.5); tau_0 = 0.25.
    prior = DSMPrior((2, 2), alpha=0.1, tau_0=0.25, c2=4.0, tau_init=0.5, lambda_init=2.0)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([[math.log(0.8), math.log(0.2)], [0.0, 0.0]]))
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    # 0.5 * (1/.64 + 4/.16 + 25/.4) + 0.9 * log(.8 * .2 * .25) + 2 log 5 + log(1 + .25/.0625)
    assert float(prior.penalty(w)) == pytest.approx(46.4626, abs=1e-3)
    assert prior.weight_decay_coefficients()[0].tolist() == pytest.approx([0.78125, 3.125], abs=1e-5)
