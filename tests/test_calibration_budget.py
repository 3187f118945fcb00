"""prune.calibration_budget_s: the calibration samples are cut where one pass over them is slow."""
import time

import pytest
from torch import nn

from deploycompress.context import CALIBRATION_FLOOR, calibration_count
from deploycompress.data import random_data
from deploycompress.errors import UserError
from deploycompress.recipe import PruneConfig, RunConfig


class Sleepy(nn.Module):
    """Takes `per_sample` seconds per sample, whatever the machine."""

    def __init__(self, per_sample: float):
        super().__init__()
        self.per_sample = per_sample

    def forward(self, x):
        time.sleep(self.per_sample * len(x))
        return x.flatten(1)[:, :2]


def _count(per_sample: float, budget: float, samples: int = 1024):
    data = random_data((1, 4), count=2 * samples, seed=0)
    config = RunConfig(model="m", prune=PruneConfig(calibration_samples=samples, calibration_budget_s=budget))
    return calibration_count(Sleepy(per_sample), data, config)


@pytest.mark.parametrize("budget, expected", [(1.0, 64), (2.0, 128), (6.0, 512)])
def test_a_slow_pass_is_halved_until_it_fits(budget, expected):
    count, note = _count(0.01, budget)  # 10 ms a sample: 10 s over 1024
    assert count == expected
    assert note.startswith(f"calibration on the first {expected} of 1024 training samples") and "about 10 s" in note


def test_a_fast_pass_or_no_budget_keeps_every_sample():
    assert _count(0.0, 1.0) == (1024, None)
    assert _count(0.01, 0.0) == (1024, None)  # 0: no cap


def test_never_below_the_floor():
    count, note = _count(0.05, 0.1, samples=256)  # even 64 samples take 3.2 s
    assert count == CALIBRATION_FLOOR and note is not None


def test_a_negative_budget_is_refused():
    with pytest.raises(UserError, match="calibration_budget_s"):
        PruneConfig(calibration_budget_s=-1)
