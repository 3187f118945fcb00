"""Recurrent text classifiers over int64 token ids, input (batch, 64 tokens):

- `make`: an nn.Embedding, an nn.LSTM and an nn.GRU stacked (batch first), the last step's state into a
  linear head. The LSTM's hidden units are also the GRU's input width.
- `make_stacked`: a two-layer nn.GRU in time-major layout (batch_first=False), the mean over time.

64 steps of 4 x 192 x (128 + 192) and 3 x 192 x (192 + 192) MACs: about 30M, so the recurrent kernels
set the latency at batch 1.
"""
import torch
from torch import nn

VOCAB, TOKENS, WIDTH, HIDDEN = 1000, 64, 128, 192


class LSTMThenGRU(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.lstm = nn.LSTM(WIDTH, HIDDEN, batch_first=True)
        self.gru = nn.GRU(HIDDEN, HIDDEN, batch_first=True)
        self.fc = nn.Linear(HIDDEN, num_classes)

    def forward(self, ids):
        out, _ = self.lstm(self.embed(ids))
        _, state = self.gru(out)
        return self.fc(state[-1])


class StackedGRU(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.gru = nn.GRU(WIDTH, HIDDEN, num_layers=2)
        self.fc = nn.Linear(HIDDEN, num_classes)

    def forward(self, ids):
        out, _ = self.gru(self.embed(ids).transpose(0, 1))
        return self.fc(torch.relu(out.mean(0)))


def make(num_classes: int = 10) -> nn.Module:
    return LSTMThenGRU(num_classes)


def make_stacked(num_classes: int = 10) -> nn.Module:
    return StackedGRU(num_classes)
