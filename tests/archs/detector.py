"""A detector-style net of several outputs: a class map and a box map from one backbone (a tuple),
the same as a dict, and a classifier whose forward returns its logits in a dict (as Hugging Face
models do)."""
from torch import nn


class Detector(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        # About 40M MACs at 32x32: compute, not per-op overhead, sets the latency at batch 1.
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 128, 3, 2, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, 128, 3, 1, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, 128, 3, 1, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU())
        self.classes = nn.Conv2d(128, num_classes, 1)
        self.boxes = nn.Conv2d(128, 4, 1)

    def forward(self, x):
        features = self.backbone(x)
        return self.classes(features), self.boxes(features)


class NamedDetector(Detector):
    def forward(self, x):
        scores, boxes = super().forward(x)
        return {"scores": scores, "boxes": boxes}


class DictClassifier(Detector):
    def forward(self, x):
        return {"logits": self.classes(self.backbone(x)).mean((2, 3))}


def make(num_classes: int = 10) -> nn.Module:
    return Detector(num_classes)


def named(num_classes: int = 10) -> nn.Module:
    return NamedDetector(num_classes)


def dict_classifier(num_classes: int = 10) -> nn.Module:
    return DictClassifier(num_classes)
