"""A plain MLP on flat feature vectors: input (batch, 256)."""
from torch import nn


def make(num_classes: int = 10, in_features: int = 256, hidden: int = 1024) -> nn.Module:
    # Three 1024-wide hidden layers: ~2.4M MACs, a few hundred microseconds per sample, so the
    # matrix products (not the handful of ops around them) set the latency at batch 1.
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.GELU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
