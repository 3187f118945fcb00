"""Reparametrized weights, as audio and GAN codebases write them: torch.nn.utils.parametrizations.weight_norm,
the older hook-based torch.nn.utils.weight_norm, and spectral_norm, on convs of a small CNN."""
import warnings

import torch
from torch import nn


class WeightNormNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        with warnings.catch_warnings():  # the hook-based weight_norm is deprecated, and still common
            warnings.simplefilter("ignore")
            self.c1 = nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 48, 3, padding=1))
            self.c2 = nn.utils.weight_norm(nn.Conv2d(48, 96, 3, padding=1, stride=2))
            self.c3 = nn.utils.spectral_norm(nn.Conv2d(96, 96, 3, padding=1))
        self.fc = nn.Linear(96, num_classes)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(x))
        return self.fc(x.mean((2, 3)))


def make(num_classes: int = 10) -> nn.Module:
    return WeightNormNet(num_classes)
