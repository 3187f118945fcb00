"""Worked examples of ALGORITHMS.md §5(c): Synaptic Strength."""

import pytest
import torch
import torch.nn.functional as F

from deploycompress.research.synaptic import (
    channel_scores,
    compose_weight,
    connection_mask,
    connection_strength,
    fold_bn_scale,
    fold_into_consumer,
    global_threshold,
    l1_penalty,
    removable_channels,
    reparameterise,
    reparameterise_weight,
)


def test_folding_gamma_is_exact_example():
    gamma, beta, x = torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([0.3])
    new_gamma, new_beta, scale = fold_bn_scale(gamma, beta)
    assert new_gamma.tolist() == [1.0]
    assert new_beta.tolist() == pytest.approx([0.5], abs=1e-12)
    assert scale.tolist() == [2.0]
    original = torch.relu(gamma * x + beta)
    folded = scale * torch.relu(new_gamma * x + new_beta)
    assert original.item() == pytest.approx(1.6, abs=1e-6)
    assert folded.item() == pytest.approx(1.6, abs=1e-6)


def test_folding_negative_gamma_keeps_sign_inside():
    gamma, beta = torch.tensor([-2.0, 0.5]), torch.tensor([1.0, -0.2])
    x = torch.linspace(-3, 3, 13).unsqueeze(1)
    ng, nb, scale = fold_bn_scale(gamma, beta)
    assert ng.tolist() == [-1.0, 1.0]
    assert torch.allclose(torch.relu(gamma * x + beta), scale * torch.relu(ng * x + nb))


def test_reparameterise_example():
    kernel = torch.tensor([3.0, 4.0])
    _, _, scale = fold_bn_scale(torch.tensor([2.0]), torch.tensor([0.0]))
    s, k_hat = reparameterise(kernel * scale)
    assert float(s) == pytest.approx(10.0, abs=1e-6)
    assert k_hat.tolist() == pytest.approx([0.6, 0.8], abs=1e-6)
    assert float(k_hat.norm()) == pytest.approx(1.0, abs=1e-6)
    w = kernel.view(1, 1, 2)  # [out=1, in=1, 2]
    assert connection_strength(w, torch.tensor([2.0])).flatten().tolist() == pytest.approx([10.0])
    zero_s, zero_hat = reparameterise(torch.zeros(3))
    assert float(zero_s) == 0.0 and zero_hat.abs().sum() == 0


def test_reparameterised_layer_equals_original():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    gamma = torch.tensor([2.0, -0.5, 1.5], dtype=torch.float64)
    beta = torch.tensor([1.0, 0.3, -0.4], dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    bn = lambda t, g, b: t * g.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)  # noqa: E731
    original = F.conv2d(torch.relu(bn(x, gamma, beta)), w, padding=1)

    ng, nb, scale = fold_bn_scale(gamma, beta)
    s, k_hat = reparameterise_weight(fold_into_consumer(w, scale))
    folded = F.conv2d(torch.relu(bn(x, ng, nb)), compose_weight(s, k_hat), padding=1)
    assert torch.allclose(original, folded, atol=1e-10)
    # s is exactly the synaptic strength |gamma_i| * ||K_ij||.
    assert torch.allclose(s, connection_strength(w, gamma))
    assert torch.allclose(k_hat.reshape(4, 3, -1).norm(dim=2), torch.ones(4, 3, dtype=torch.float64))


def test_channel_scores_and_penalty():
    strength = torch.tensor([[1.0, 2.0], [3.0, -4.0]])  # [out, in]
    inputs, outputs = channel_scores(strength)
    assert inputs.tolist() == [4.0, 6.0]
    assert outputs.tolist() == [3.0, 7.0]
    assert float(l1_penalty(strength)) == 10.0
    assert float(l1_penalty([strength, torch.tensor([-0.5])])) == 10.5


def test_threshold_and_removable_channels():
    strength = torch.tensor([[0.1, 2.0, 0.05], [0.2, 3.0, 0.01]])
    t = global_threshold([strength], 1 / 3)  # 2 of 6 connections: .01 and .05
    assert t == pytest.approx(0.05)
    mask = connection_mask(strength, t)
    assert mask.tolist() == [[True, True, False], [True, True, False]]
    removable_in, removable_out = removable_channels(mask)
    assert removable_in.tolist() == [False, False, True]
    assert removable_out.tolist() == [False, False]
