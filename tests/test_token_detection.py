"""Which models are fed token ids: found by running the model (context._example_input)."""
import torch
from torch import nn

from deploycompress.context import _example_input


class CastsItsInput(nn.Module):
    """Takes floats and casts them to ids itself: random float calibration inputs gave it negative ids
    (IndexError, a traceback, before)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.emb(x.long()).mean(1))


class Codebook(nn.Module):
    """A float model that reads an embedding at ids it computes (a vector quantiser's nearest code):
    not a token model."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(1, 8)
        self.codes = nn.Embedding(16, 8)

    def forward(self, x):
        z = self.proj(x.unsqueeze(-1))
        nearest = torch.cdist(z, self.codes.weight.unsqueeze(0)).argmin(-1)
        return (z + self.codes(nearest)).mean(1)


class Positions(nn.Module):
    """Float features plus a position embedding read at arange: not a token model."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Embedding(12, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc((x + self.pos(torch.arange(x.shape[1]))).mean(1))


def test_a_model_that_casts_its_float_input_to_ids_is_fed_token_ids():
    example, out, vocab = _example_input(CastsItsInput().eval(), (1, 16))
    assert example.dtype == torch.int64 and vocab == 100 and out.shape == (1, 4)


def test_float_models_that_read_embeddings_at_other_ids_stay_float():
    example, _, vocab = _example_input(Codebook().eval(), (1, 10))
    assert example.dtype == torch.float32 and vocab is None
    example, _, vocab = _example_input(Positions().eval(), (1, 12, 6))
    assert example.dtype == torch.float32 and vocab is None
