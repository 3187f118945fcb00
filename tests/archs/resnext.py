"""ResNeXt-style bottlenecks: 1x1 reduce, 3x3 grouped conv (8 groups), 1x1 expand, residual add."""
import torch
from torch import nn


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, cout: int, groups: int = 8, stride: int = 1):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False),
                                     nn.BatchNorm2d(width), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.expand(self.grouped(self.reduce(x))) + self.shortcut(x))


class ResNeXt(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 48, 3, 1, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU())
        # 32x32 inputs, 96- and 192-wide bottlenecks: about 100M MACs, so compute, not ORT's per-op
        # overhead, sets the latency at batch 1 (at half this size 2x is only just reachable).
        self.blocks = nn.Sequential(Bottleneck(48, 96, 96), Bottleneck(96, 96, 96),
                                    Bottleneck(96, 192, 192, stride=2))
        self.fc = nn.Linear(192, num_classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def make(num_classes: int = 10) -> nn.Module:
    return ResNeXt(num_classes)
