"""A Conv1d network over sequences (e.g. audio or sensor windows): input (batch, 8, 512)."""
from torch import nn


def block(cin: int, cout: int, stride: int = 1):
    return nn.Sequential(nn.Conv1d(cin, cout, 5, stride, 2, bias=False), nn.BatchNorm1d(cout), nn.ReLU())


class SequenceNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 8):
        super().__init__()
        # 512 steps and 64-256 channels: ~100M MACs, so the convs, not per-op overhead, dominate at batch 1.
        self.features = nn.Sequential(block(in_channels, 64), block(64, 128, 2), block(128, 128),
                                      block(128, 256, 2), block(256, 256))
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean(2))


def make(num_classes: int = 10) -> nn.Module:
    return SequenceNet(num_classes)
