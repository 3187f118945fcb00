"""Worked example of ALGORITHMS.md §3(c): the i-SpaSP selector."""

import pytest
import torch

from deploycompress.research.ispasp import ispasp_select, residual_and_gradient

A = [5.0, 0.0, 3.0, 0.0, 1.0, 0.0]


def identity(h):
    return h


def test_identity_consumer_example():
    hidden = torch.tensor([A])  # one sample, 6 channels
    trace = []
    kept = ispasp_select(hidden, identity, keep=2, iterations=20, trace=trace)
    assert kept == [0, 2]
    assert len(trace) == 20
    # Iteration 1: g = the full residual [5,0,3,0,1,0]; S = top-2 by activation = {0, 2}.
    assert trace[0]["support"] == [0, 2]
    assert trace[0]["R"] == pytest.approx(0.5, abs=1e-9)
    for step in trace[1:]:
        assert step["support"] == [0, 2]
        assert step["R"] == pytest.approx(0.5, abs=1e-9)


def test_residual_after_first_iteration():
    hidden = torch.tensor([A])
    r, g = residual_and_gradient(hidden, identity, [0, 2])
    assert r == pytest.approx(0.5, abs=1e-9)
    # The pruned path is detached, so g is +residual = [0,0,0,0,1,0] (signed, not absolute).
    assert g.tolist() == pytest.approx([0, 0, 0, 0, 1, 0], abs=1e-9)
    r0, g0 = residual_and_gradient(hidden, identity, [])
    assert r0 == pytest.approx(0.5 * (25 + 9 + 1), abs=1e-9)
    assert g0.tolist() == pytest.approx(A, abs=1e-9)


def test_gradient_goes_through_consumer_and_sums_positions():
    # Y = 2 * H: dR/dH = 2 * (Y_dense - Y_S) = 4 * (H - H_S); summed over samples and positions.
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float64).reshape(2, 3, 2)
    r, g = residual_and_gradient(hidden, lambda h: 2 * h, [1])
    res = hidden.clone()
    res[:, 1] = 0
    assert r == pytest.approx(0.5 * float((2 * res).pow(2).sum()), abs=1e-9)
    assert g.tolist() == pytest.approx((4 * res).sum(dim=(0, 2)).tolist(), abs=1e-9)


def test_signed_candidates_matter():
    # Channel 3 has a huge activation but the consumer ignores it (g_3 = 0): it is not a
    # top-2 candidate by signed g, so the activation ranking never sees it. With the sign flipped
    # (g = -residual) the candidates would be {3, 2} and channel 3 would be kept.
    hidden = torch.tensor([[[4.0], [6.0], [1.0], [100.0]]])  # [1, 4, 1]
    weight = torch.tensor([1.0, 1.0, 1.0, 0.0]).view(1, 4, 1)
    consumer = lambda h: h * weight  # noqa: E731
    kept = ispasp_select(hidden, consumer, keep=1, iterations=5)
    # g = [4, 6, 1, 0]: candidates (top-2) = {1, 0}; S = argmax a over {0, 1} = {1}.
    assert kept == [1]


def test_keep_all_and_validation():
    hidden = torch.rand(3, 4, 2, 2)
    assert ispasp_select(hidden, identity, keep=4) == [0, 1, 2, 3]
    assert ispasp_select(hidden, identity, keep=9) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        ispasp_select(hidden, identity, keep=0)


def test_conv_consumer_returns_sorted_support_of_right_size():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 4, 3, padding=1)
    hidden = torch.relu(torch.randn(5, 8, 6, 6))
    kept = ispasp_select(hidden, conv, keep=3, iterations=4)
    assert kept == sorted(kept) and len(set(kept)) == 3
    assert all(0 <= k < 8 for k in kept)


def test_final_choice_is_by_activation_not_gradient():
    # Consumer weights [5, 1, 0]: g = w^2 * h = [25, 2, 0] nominates {0, 1}; among those the
    # aggregate activation a = [1, 2, 10] keeps channel 1 (by g it would be channel 0).
    hidden = torch.tensor([[1.0, 2.0, 10.0]])
    weight = torch.tensor([5.0, 1.0, 0.0])
    trace = []
    kept = ispasp_select(hidden, lambda h: h * weight, keep=1, iterations=3, trace=trace)
    assert trace[0]["candidates"] == [0, 1]
    assert kept == [1]
    assert trace[-1]["R"] == pytest.approx(0.5 * 25, abs=1e-9)
