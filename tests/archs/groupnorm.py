"""GroupNorm instead of BatchNorm (detection heads, diffusion U-Nets, small-batch training): groups of
8 and 16 channels, and one group over all channels, with a residual add across two of them."""
import torch
from torch import nn


def conv_gn(cin: int, cout: int, groups: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(groups, cout), nn.SiLU())


class GroupNormNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = conv_gn(3, 48, 8)
        self.body = conv_gn(48, 96, 8)
        self.residual = nn.Sequential(nn.Conv2d(96, 96, 3, 1, 1, bias=False), nn.GroupNorm(8, 96))
        self.down = conv_gn(96, 96, 1, stride=2)  # one group: normalised over every channel it keeps
        self.wide = conv_gn(96, 192, 16)
        self.fc = nn.Linear(192, num_classes)

    def forward(self, x):
        y = self.body(self.stem(x))
        y = torch.relu(y + self.residual(y))
        return self.fc(self.wide(self.down(y)).mean((2, 3)))


def make(num_classes: int = 10) -> nn.Module:
    return GroupNormNet(num_classes)
