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


class AuxiliaryHead(torch.nn.Module):
    """As torchvision's GoogLeNet and Inception v3: (output, auxiliary) in training mode, output alone in eval."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(8, 16)
        self.out = torch.nn.Linear(16, 4)
        self.aux = torch.nn.Linear(16, 4)

    def forward(self, x):
        h = self.body(x).relu()
        return (self.out(h), self.aux(h)) if self.training else self.out(h)


@pytest.mark.parametrize("teacher", [False, True])
def test_a_model_with_auxiliary_heads_trains_its_eval_output(teacher):
    """It stopped the finetune with "AttributeError: 'tuple' object has no attribute 'dim'"."""
    from deploycompress.data import DataBundle
    from deploycompress.training import fit

    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    data = DataBundle("aux", x, y, x, y, 4)
    model = AuxiliaryHead()
    aux_before = model.aux.weight.detach().clone()
    out_before = model.out.weight.detach().clone()
    losses = fit(model, data, 3, 0.01, seed=0, teacher=AuxiliaryHead().eval() if teacher else None)
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert not torch.equal(model.out.weight, out_before) and torch.equal(model.aux.weight, aux_before)
    assert not model.training


def test_a_training_output_that_is_not_a_tensor_is_one_line():
    from deploycompress.errors import UserError
    from deploycompress.training import training_output

    with pytest.raises(UserError, match="returns a dict in training mode"):
        training_output({"logits": torch.zeros(1)})
