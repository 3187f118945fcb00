"""A CNN with parts that cannot be pruned safely, next to ordinary convs that can:

- a channel shuffle written with a hard-coded channel count (a reshape that depends on it);
- a per-channel offset parameter added directly in forward (masks cannot follow a raw add);
- a depthwise conv with a channel multiplier (groups=16, 32 outputs): its input channels cannot
  shrink without breaking its groups.

The run must leave those groups dense, say why in one line each, and still reach 2x with the rest.
"""
import torch
from torch import nn


def conv_bn(cin: int, cout: int, kernel: int = 3, groups: int = 1):
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, 1, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class AwkwardNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.multiplier = conv_bn(16, 32, groups=16)  # depthwise with 2 outputs per input channel
        self.before_shuffle = conv_bn(32, 32)
        self.offset_conv = nn.Conv2d(32, 48, 3, 1, 1)
        self.offset = nn.Parameter(torch.linspace(-1, 1, 48).view(1, 48, 1, 1))
        # The prunable bulk: 3x3 convs up to 128 wide at 16x16 (~75M of ~100M MACs), so 2x is
        # reachable with the awkward parts (~25M MACs at 32x32) left dense.
        self.body = nn.Sequential(nn.MaxPool2d(2), conv_bn(48, 64), conv_bn(64, 128), conv_bn(128, 128),
                                  conv_bn(128, 64))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.before_shuffle(self.multiplier(self.stem(x)))
        b, _, h, w = x.shape
        x = x.reshape(b, 4, 8, h, w).transpose(1, 2).reshape(b, 32, h, w)  # hard-coded 32 channels
        x = torch.relu(self.offset_conv(x) + self.offset)
        return self.fc(self.body(x).mean((2, 3)))


def make(num_classes: int = 10) -> nn.Module:
    return AwkwardNet(num_classes)
