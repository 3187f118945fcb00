"""What the run checks and adapts about a user's model before pruning it."""
import pytest
import torch
from torch import nn

from deploycompress.context import _check_batch_and_autograd, _example_input, _to_float32
from deploycompress.errors import UserError, first_line
from deploycompress.graph import GroupGraph


def test_a_float64_model_is_converted_to_float32_and_says_so():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.LazyLinear(4)).double()
    model(torch.zeros(1, 1, 6, 6, dtype=torch.float64))
    note = _to_float32(model)
    assert note == "parameters and buffers converted from float64 to float32, as the exported model runs"
    assert all(t.dtype == torch.float32 for t in [*model.parameters(), *model.buffers()] if t.is_floating_point())
    assert _to_float32(model) is None  # float32 already: nothing to say


class LogInput(nn.Module):
    """Takes the log of its input (spectrogram magnitudes, say): NaN on random normal inputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(torch.log(x)))).mean((2, 3))


def test_verification_uses_the_datas_samples_and_names_non_finite_outputs():
    """On random normals every group of a log-input model failed verification as 'outputs differ by
    nan'; on the data's own (positive) samples it is pruned, and on random ones the reason says why."""
    model, example = LogInput().eval(), torch.ones(1, 1, 8, 8)
    random_inputs = GroupGraph(model, example, verify=True)
    assert random_inputs.groups == [] and "not finite (NaN or Inf)" in random_inputs.skipped[0].reason
    real = GroupGraph(model, example, verify=True, verify_inputs=torch.rand(2, 1, 8, 8) + 0.1)
    assert [g.name for g in real.groups] == ["conv"] and real.skipped == []


def test_a_frozen_backbone_passes_the_autograd_check_and_keeps_its_flags():
    """Parameters the user froze (requires_grad False) are not a forward without autograd; the check
    leaves every flag as it found it."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 1, 5, 5))
    model[0].weight.requires_grad_(False)
    _check_batch_and_autograd(model, torch.zeros(1, 1, 5, 5))
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True]


class SilentFailure(nn.Module):
    """Raises an exception with no message for an input it does not take."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        if x.shape[-1] != 28:
            raise RuntimeError()
        return self.conv(x).mean((2, 3))


def test_an_error_without_a_message_is_named_by_its_type():
    """`str(exc).splitlines()[0]` of an empty message raised IndexError: a traceback instead of one line."""
    with pytest.raises(UserError, match=r"^input shape \(1, 1, 16, 16\) does not fit the model: RuntimeError$"):
        _example_input(SilentFailure().eval(), (1, 1, 16, 16))
    assert first_line(ValueError("\n  first\nsecond"), 3) == "fir"
    # torch.export colours its step names; the one line stays plain text
    assert first_line(RuntimeError("Failed to export. \x1b[96mThis is step 1/3\x1b[0m of exporting")) == \
        "Failed to export. This is step 1/3 of exporting"
