"""The distillation loss every unlabelled path scores and trains with (SPDY's calibration loss, the
finetune against the dense model, the Taylor criterion without labels)."""
import pytest
import torch
import torch.nn.functional as F

from deploycompress.training import distillation_loss, distillation_losses


def test_class_scores_are_distilled_with_the_softened_kl():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 10), torch.randn(6, 10)
    expected = F.kl_div(F.log_softmax(student / 2, 1), F.softmax(teacher / 2, 1), reduction="batchmean") * 4
    assert distillation_loss(student, teacher, 2.0) == pytest.approx(float(expected), rel=1e-6)
    per_sample = distillation_losses(student, teacher)
    assert per_sample.shape == (6,) and torch.all(per_sample > 0)
    assert torch.allclose(distillation_losses(teacher, teacher), torch.zeros(6), atol=1e-6)


@pytest.mark.parametrize("shape", [(6, 1), (6,)], ids=["batch-by-1", "flat"])
def test_one_output_per_sample_is_distilled_with_the_squared_error(shape):
    """A softmax over one value is 1, so the KL of a regressor's outputs is 0 whatever the student does:
    SPDY scored every plan of a regression CNN at loss 0.0. The squared error stands in."""
    student, teacher = torch.full(shape, 1.5), torch.full(shape, 0.5)
    assert torch.allclose(distillation_losses(student, teacher), torch.ones(6))
    assert float(distillation_loss(student, teacher, 4.0)) == pytest.approx(1.0)


def test_maps_are_one_loss_per_sample():
    """A (batch, classes, H, W) output (per-pixel class scores) sums its pixels into one loss per sample."""
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    per_sample = distillation_losses(student, teacher)
    kl = F.kl_div(F.log_softmax(student, 1), F.softmax(teacher, 1), reduction="none")
    assert torch.allclose(per_sample, kl.sum((1, 2, 3)), rtol=1e-5)
