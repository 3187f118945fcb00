"""An encoder-decoder with transposed convolutions (segmentation-style output, one map per class)."""
from torch import nn


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.BatchNorm2d(128), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(128, 64, 2, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
                                nn.ConvTranspose2d(64, 32, 2, stride=2), nn.BatchNorm2d(32), nn.ReLU())
        self.classes = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        return self.classes(self.up(self.down(x)))


def make():
    return Decoder()
