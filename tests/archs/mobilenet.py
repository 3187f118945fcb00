"""MobileNetV2-style inverted residuals: 1x1 expand, 3x3 depthwise, 1x1 project, residual add."""
from torch import nn


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6()) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 6):
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(conv_bn(cin, hidden), conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                  conv_bn(hidden, cout, act=False))

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, 32, 3)
        # Wide expansions at 32x32 so the 1x1 convs (the compute pruning removes) dominate at batch 1.
        self.blocks = nn.Sequential(InvertedResidual(32, 32, 1), InvertedResidual(32, 48, 2),
                                    InvertedResidual(48, 48, 1), InvertedResidual(48, 64, 2))
        self.head = conv_bn(64, 256)
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x):
        return self.fc(self.head(self.blocks(self.stem(x))).mean((2, 3)))


def make(num_classes: int = 10) -> nn.Module:
    return MobileNet(num_classes)
