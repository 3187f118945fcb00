"""Gated linear units: a conv's output chunked in two, one half gating the other (`a * sigmoid(b)`,
GLU / gated convs in speech and language CNNs), and the same with tanh (a gated
activation unit, as in WaveNet)."""
import torch
from torch import nn


class GatedNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU())
        self.gate = nn.Conv2d(48, 192, 3, padding=1)  # chunk(2): 96 values, 96 gates
        self.mix = nn.Sequential(nn.Conv2d(96, 96, 3, stride=2, padding=1), nn.BatchNorm2d(96), nn.ReLU())
        self.gated_tanh = nn.Conv2d(96, 128, 1)  # split into 64 filters and 64 gates
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        a, b = self.gate(self.stem(x)).chunk(2, dim=1)
        y = self.mix(a * torch.sigmoid(b))
        p, q = self.gated_tanh(y).chunk(2, dim=1)
        return self.fc((torch.tanh(p) * torch.sigmoid(q)).mean((2, 3)))


def make(num_classes: int = 10) -> nn.Module:
    return GatedNet(num_classes)
