"""Data-free calibration inputs synthesised to give a trained model's BatchNorms their statistics."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from deploycompress.context import build_context
from deploycompress.data import random_data
from deploycompress.recipe import PruneConfig, RunConfig
from deploycompress.synthetic_data import _statistics_loss, synthesize, trained_norms


def trained_net() -> nn.Sequential:
    """conv -> BN -> ReLU -> conv -> BN, with statistics Gaussian inputs do not give (mean 0.5, var 0.2
    at the first; training on real images leaves such figures)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 36, 4))
    model[1].running_mean.fill_(0.5)
    model[1].running_var.fill_(0.2)
    model[4].running_mean.fill_(0.1)
    model[4].running_var.fill_(0.3)
    return model.eval()


def statistics_loss(model: nn.Module, x: torch.Tensor) -> float:
    seen = []
    handles = [m.register_forward_hook(lambda m, i, o: seen.append((i[0], m))) for m in trained_norms(model)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return float(_statistics_loss(seen))


def test_only_batch_norms_with_trained_statistics_count():
    untrained = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.BatchNorm2d(8, track_running_stats=False))
    assert trained_norms(untrained) == []
    model = trained_net()
    assert trained_norms(model) == [model[1], model[4]]


def test_synthesised_inputs_give_the_batch_norms_their_statistics():
    model = trained_net()
    noise = random_data((1, 3, 6, 6), count=256, seed=0)
    data, line = synthesize(model, noise, budget_s=4.0, seed=0)
    assert data.name == "synthetic" and not data.has_labels
    x = torch.cat([data.x_test, data.x_train])
    assert x.shape[1:] == (3, 6, 6) and len(x) % 64 == 0 and len(x) >= 64
    start = statistics_loss(model, torch.cat([noise.x_test, noise.x_train])[:len(x)])
    # 0.35 -> 0.044 here; a slow machine gets MIN_STEPS (30) a batch: 0.075 with MAX_STEPS forced to 30
    assert statistics_loss(model, x) < start / 3, (statistics_loss(model, x), start)
    assert line.startswith(f"data-free: {len(x)} inputs synthesised") and "2 BatchNorms" in line
    # the model is as it was: eval mode, its parameters' flags
    assert not model.training and all(p.requires_grad for p in model.parameters())


def test_nothing_is_synthesised_without_trained_statistics_token_ids_or_budget():
    noise = random_data((1, 3, 6, 6), count=64, seed=0)
    assert synthesize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), noise, 4.0, 0) is None
    assert synthesize(trained_net(), noise, 0.0, 0) is None
    tokens = random_data((1, 6), count=64, seed=0, vocab=10)
    assert synthesize(nn.Sequential(nn.Embedding(10, 4), nn.BatchNorm1d(6)), tokens, 4.0, 0) is None


@pytest.mark.parametrize("budget, name", [(3.0, "synthetic"), (0.0, "random")])
def test_a_data_free_run_of_a_trained_model_calibrates_on_synthesised_inputs(tmp_path, budget, name):
    (tmp_path / "net.py").write_text("import torch\nfrom torch import nn\n\ndef make():\n"
                                     "    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),\n"
                                     "                      nn.Flatten(), nn.Linear(8 * 36, 4))\n"
                                     "    m[1].running_mean.fill_(0.5)\n    return m\n")
    config = RunConfig(model=f"{tmp_path}/net.py:make", data="none", input_shape="1,3,6,6", target_speedup=2.0,
                       out=str(tmp_path / "run"), prune=PruneConfig(synthetic_budget_s=budget))
    ctx = build_context(config, tmp_path / "run")
    assert ctx.data.name == name
    assert any(n.startswith("data-free: ") for n in ctx.report["setup_notes"]) == (name == "synthetic")


def test_a_second_run_reads_the_inputs_the_first_synthesised(tmp_path):
    """How many batches fit the budget depends on the machine's speed: the inputs are cached, so the same
    model run again (or resumed) calibrates on the same inputs and decides as before."""
    model, noise, cache = trained_net(), random_data((1, 3, 6, 6), count=128, seed=0), tmp_path / "x.pt"
    first, _ = synthesize(model, noise, budget_s=1.0, seed=0, cache=cache)
    assert cache.is_file()
    again, line = synthesize(model, noise, budget_s=1.0, seed=0, cache=cache)
    assert torch.equal(again.x_train, first.x_train) and torch.equal(again.x_test, first.x_test)
    assert "synthesised earlier for this model" in line
    cache.write_bytes(b"damaged")
    assert synthesize(model, noise, budget_s=1.0, seed=0, cache=cache)[0].name == "synthetic"


def test_the_line_claims_re_estimation_only_where_torch_batch_norms_are():
    """Frozen norms keep their statistics: the prune stage re-estimates torch's BatchNorms only."""
    class Frozen(nn.Module):
        def __init__(self, n: int):
            super().__init__()
            self.register_buffer("running_mean", torch.full((n,), 0.5))
            self.register_buffer("running_var", torch.full((n,), 0.2))

        def forward(self, x):
            return (x - self.running_mean.reshape(1, -1, 1, 1)) * self.running_var.rsqrt().reshape(1, -1, 1, 1)

    noise = random_data((1, 3, 6, 6), count=64, seed=0)
    frozen = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Frozen(8), nn.Flatten(), nn.Linear(8 * 36, 4)).eval()
    assert synthesize(frozen, noise, 1.0, 0)[1].endswith("calibrate the search (prune.synthetic_budget_s)")
    assert synthesize(trained_net(), noise, 1.0, 0)[1].endswith(
        "calibrate the search and re-estimate BatchNorm (prune.synthetic_budget_s)")
