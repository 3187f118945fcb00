"""Worked example of ALGORITHMS.md §4(c): DCP greedy input-channel selection."""

import pytest
import torch

from deploycompress.research.dcp import (
    dcp_greedy_input_channels,
    input_channel_gradient_norms,
    reconstruction_gradient,
    reconstruction_loss,
)

X = torch.diag(torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64))  # 3 samples x 3 channels
WB = torch.tensor([[3.0, 1.0, 2.0]], dtype=torch.float64)  # linear [out=1, in=3]


def test_dense_output_and_loss():
    y = X @ WB.t()
    assert y.flatten().tolist() == [3.0, 2.0, 2.0]
    # L_M at W = 0 is (9 + 4 + 4) / (2 * 3).
    assert float(reconstruction_loss(y, torch.zeros_like(y))) == pytest.approx(17 / 6, abs=1e-9)


def test_gradient_at_empty_set():
    g = reconstruction_gradient(X, torch.zeros_like(WB), WB)
    assert g.flatten().tolist() == pytest.approx([-1.0, -1.3333, -0.6667], abs=1e-4)
    norms = input_channel_gradient_norms(X, torch.zeros_like(WB), WB)
    assert norms.tolist() == pytest.approx([1.0, 1.3333, 0.6667], abs=1e-4)
    assert int(norms.argmax()) == 1  # where weight magnitude would pick channel 0
    assert int(WB.abs().argmax()) == 0
    # At the dense weights the reconstruction gradient vanishes (why scoring starts empty).
    assert reconstruction_gradient(X, WB, WB).abs().max() == pytest.approx(0.0, abs=1e-12)


def test_gradient_after_exact_fit_of_channel_1():
    w = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    g = reconstruction_gradient(X, w, WB)
    assert g.flatten().tolist() == pytest.approx([-1.0, 0.0, -0.6667], abs=1e-4)


def test_greedy_order_and_trace():
    trace = []
    order = dcp_greedy_input_channels(X, WB, 3, trace=trace)
    assert order == [1, 0, 2]
    assert trace[0]["scores"].tolist() == pytest.approx([1.0, 1.3333, 0.6667], abs=1e-4)
    second = trace[1]["scores"]
    assert float(second[1]) == float("-inf")  # already selected
    # After warm start W_1 = 1 (plus one SGD step that only applies weight decay 1e-6).
    assert [float(second[0]), float(second[2])] == pytest.approx([1.0, 0.6667], abs=1e-4)
    assert dcp_greedy_input_channels(X, WB, 2) == [1, 0]


def test_conv_1x1_matches_linear():
    x = X.view(3, 3, 1, 1)
    w = WB.view(1, 3, 1, 1)
    norms = input_channel_gradient_norms(x, torch.zeros_like(w), w)
    assert norms.tolist() == pytest.approx([1.0, 1.3333, 0.6667], abs=1e-4)
    assert dcp_greedy_input_channels(x, w, 2) == [1, 0]


@pytest.mark.parametrize("spatial", [(1,), (1, 1, 1)], ids=["conv1d", "conv3d"])
def test_conv1d_and_conv3d_match_linear(spatial):
    """The pipeline scores Conv1d and Conv3d consumers too (a text CNN, a volume model): a 1-wide kernel
    is the linear worked example again."""
    x = X.view(3, 3, *spatial)
    w = WB.view(1, 3, *spatial)
    norms = input_channel_gradient_norms(x, torch.zeros_like(w), w, {"padding": 0})
    assert norms.tolist() == pytest.approx([1.0, 1.3333, 0.6667], abs=1e-4)
    assert dcp_greedy_input_channels(x, w, 2) == [1, 0]


def test_q_counts_every_output_element():
    # Two identical output channels: Q = N * n = 6, so each row's gradient is halved and the
    # per-channel norm (sum over outputs) is unchanged.
    wb2 = torch.cat([WB, WB])
    g = reconstruction_gradient(X, torch.zeros_like(wb2), wb2)
    assert g[0].tolist() == pytest.approx([-0.5, -0.6667, -0.3333], abs=1e-4)
    norms = input_channel_gradient_norms(X, torch.zeros_like(wb2), wb2)
    assert norms.tolist() == pytest.approx([1.0, 1.3333, 0.6667], abs=1e-4)


def test_extra_loss_changes_the_pick():
    # lambda * L_S with dL_S/dW[0, 2] = -10: channel 2's score becomes |-0.667 - 10|.
    extra = lambda w: -10.0 * w[0, 2]  # noqa: E731
    trace = []
    assert dcp_greedy_input_channels(X, WB, 1, extra_loss=extra, trace=trace) == [2]
    assert float(trace[0]["scores"][2]) == pytest.approx(10.6667, abs=1e-4)
    assert dcp_greedy_input_channels(X, WB, 1, extra_loss=extra, lam=0.0) == [1]


def test_adaptive_stop_and_bounds():
    # L_0 = 17/6; after channel 1: 13/6 (improvement 4/17 = 0.235 of L_0).
    assert dcp_greedy_input_channels(X, WB, 3, epsilon=0.3) == [1]
    assert dcp_greedy_input_channels(X, WB, 3, epsilon=0.2) == [1, 0, 2]
    assert dcp_greedy_input_channels(X, WB, 0) == []
    assert dcp_greedy_input_channels(X, WB, 10) == [1, 0, 2]
