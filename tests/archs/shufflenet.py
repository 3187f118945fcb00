"""ShuffleNet V2 units as torchvision writes them: the stream split in halves with chunk, one half
through a 1x1 -> depthwise 3x3 -> 1x1 branch, both concatenated and mixed by a channel shuffle
(view to (b, 2, c/2, h, w), transpose, view back). DepGraph cannot follow channels through the
shuffle's 5-D view; the branches' inner widths never pass through it."""
import torch
from torch import nn


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(b, c, h, w)


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, relu: bool = True):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, cin, relu=False), conv_bn(cin, half)) \
            if stride > 1 else nn.Identity()
        width = cin if stride > 1 else half
        self.branch2 = nn.Sequential(conv_bn(width, half), conv_bn(half, half, 3, stride, half, relu=False),
                                     conv_bn(half, half))

    def forward(self, x):
        if self.stride == 1:
            kept, x = x.chunk(2, dim=1)
            out = torch.cat((kept, self.branch2(x)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNet(nn.Module):
    """torchvision's ShuffleNet V2 layout (3, 7, 3 units) cut to (3, 4, 2) units, CIFAR-sized stem."""

    def __init__(self, num_classes: int = 10, widths=(64, 128, 256), units=(3, 4, 2), head: int = 512):
        super().__init__()
        self.stem = conv_bn(3, 24, 3)
        stages, cin = [], 24
        for cout, count in zip(widths, units):
            stages += [ShuffleUnit(cin, cout, 2)] + [ShuffleUnit(cout, cout, 1) for _ in range(count - 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = conv_bn(cin, head)
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x):
        return self.fc(self.head(self.stages(self.stem(x))).mean((2, 3)))


def make(num_classes: int = 10) -> nn.Module:
    return ShuffleNet(num_classes)
