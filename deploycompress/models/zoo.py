"""Built-in models, registered by name, timm style: a registered function is a dict of settings
passed to one builder. torchvision is deliberately not used (its wheel does not import with the CPU
torch this project pins), so every architecture here is our own.

Each zoo entry also names the data it is meant for, so `deploycompress run --model NAME` needs nothing
else to run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..registry import Registry


@dataclass(frozen=True)
class ZooModel:
    name: str
    build: Callable[..., nn.Module]
    input_shape: tuple[int, ...]  # one sample, batch dimension included as 1
    dataset: str  # a built-in dataset name (see deploycompress.data)
    description: str


model_registry: Registry[ZooModel] = Registry("model")


def _register(name: str, input_shape: tuple[int, ...], dataset: str, description: str):
    def decorator(build: Callable[..., nn.Module]):
        model_registry.register(name)(ZooModel(name, build, input_shape, dataset, description))
        return build

    return decorator


def create_model(name: str, num_classes: int | None = None) -> nn.Module:
    entry = model_registry.get(name)
    return entry.build() if num_classes is None else entry.build(num_classes=num_classes)


def list_models(pattern: str = "*") -> list[str]:
    return model_registry.names(pattern)


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """ResNet basic block; a projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, widths=(32, 64, 128), blocks=(2, 2, 2), in_channels=1, num_classes=10):
        super().__init__()
        self.stem = conv_bn_relu(in_channels, widths[0])
        layers, cin = [], widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks)):
            for i in range(count):
                layers.append(BasicBlock(cin, width, stride=2 if (stage > 0 and i == 0) else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class VGG(nn.Module):
    """Plain conv stack: no coupling between layers, the easiest case for pruning."""

    def __init__(self, widths=(32, 32, 64, 64, 128, 128), pool_after=(1, 3), in_channels=1, num_classes=10):
        super().__init__()
        layers, cin = [], in_channels
        for i, width in enumerate(widths):
            layers.append(conv_bn_relu(cin, width))
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
            cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.expand = conv_bn_relu(cin, hidden, 1)
        self.depthwise = conv_bn_relu(hidden, hidden, 3, stride, groups=hidden)
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, settings=((24, 1, 1, 4), (32, 2, 2, 4), (64, 2, 2, 4)), stem=24, in_channels=1, num_classes=10):
        super().__init__()
        self.stem = conv_bn_relu(in_channels, stem)
        blocks, cin = [], stem
        for cout, count, stride, expand in settings:
            for i in range(count):
                blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn_relu(cin, 128, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.head(self.blocks(self.stem(x)))), 1))


@_register("resnet_digits", (1, 1, 16, 16), "digits", "ResNet-style CNN, 6 basic blocks, widths 32-64-128")
def resnet_digits(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return ResNet((32, 64, 128), (2, 2, 2), in_channels, num_classes)


@_register("vgg_digits", (1, 1, 16, 16), "digits", "plain VGG-style CNN, 6 conv layers, widths 32-128")
def vgg_digits(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return VGG(in_channels=in_channels, num_classes=num_classes)


@_register("mobilenet_digits", (1, 1, 16, 16), "digits", "MobileNetV2-style inverted residuals (depthwise)")
def mobilenet_digits(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return MobileNetV2(in_channels=in_channels, num_classes=num_classes)
