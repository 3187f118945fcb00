"""3-D convolutions (video clips, volumes): Conv3d with BatchNorm3d, then a linear head."""
from torch import nn


class Volumetric(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(1, 32, 3, padding=1), nn.BatchNorm3d(32), nn.ReLU(),
            nn.Conv3d(32, 64, 3, padding=1, stride=2), nn.BatchNorm3d(64), nn.ReLU(),
            nn.Conv3d(64, 64, 3, padding=1), nn.BatchNorm3d(64), nn.ReLU())
        self.head = nn.Linear(64, 5)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3, 4)))


def make():
    return Volumetric()
