"""Data: the built-in digits set, a user's npz, or nothing (random calibration inputs).

The built-in set is scikit-learn's handwritten digits (1,797 8x8 images that ship inside the
installed package, so nothing is downloaded), upsampled to 16x16 so that convolutions have room.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .errors import UserError


@dataclass
class DataBundle:
    """Train/test tensors. `y_*` are None when there are no labels (data-free or unlabelled)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor | None
    x_test: torch.Tensor
    y_test: torch.Tensor | None
    num_classes: int | None

    @property
    def has_labels(self) -> bool:
        return self.y_train is not None and self.y_test is not None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, *self.x_train.shape[1:])

    def train_loader(self, batch_size: int, seed: int) -> DataLoader:
        tensors = (self.x_train,) if self.y_train is None else (self.x_train, self.y_train)
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=True, generator=generator)

    def calibration(self, count: int) -> torch.Tensor:
        """The first `count` training inputs: deterministic, so the same seed gives the same plan."""
        return self.x_train[:count]


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, int(round(len(x) * test_fraction)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def load_digits(size: int = 16, seed: int = 0) -> DataBundle:
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = (images - 0.5) / 0.5
    x_tr, y_tr, x_te, y_te = _split(images.numpy(), digits.target.astype(np.int64), 0.2, seed)
    return DataBundle("digits", torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te),
                      torch.from_numpy(y_te), 10)


def random_data(input_shape: tuple[int, ...], count: int = 256, seed: int = 0) -> DataBundle:
    """Data-free mode: Gaussian inputs of the model's input shape, no labels."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((count, *input_shape[1:]), generator=generator)
    n_test = max(1, count // 4)
    return DataBundle("random", x[n_test:], None, x[:n_test], None, None)


BUILTIN_DATASETS = {"digits": load_digits}


def _check_array(name: str, array: np.ndarray, path: Path) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise UserError(f"{path}: array {name!r} holds NaN or Inf values")


def load_npz(path: str | Path, seed: int = 0) -> DataBundle:
    """x_train/y_train/x_test/y_test, or x/y split deterministically (80/20)."""
    path = Path(path)
    try:
        arrays = dict(np.load(path, allow_pickle=False))
    except FileNotFoundError:
        raise UserError(f"data file not found: {path}") from None
    except (ValueError, OSError) as exc:
        raise UserError(f"{path}: not a readable npz file ({exc})") from None
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        parts = [arrays[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    elif {"x", "y"} <= arrays.keys():
        if len(arrays["x"]) != len(arrays["y"]):
            raise UserError(f"{path}: x has {len(arrays['x'])} rows but y has {len(arrays['y'])}")
        parts = list(_split(arrays["x"], arrays["y"], 0.2, seed))
    else:
        raise UserError(f"{path}: needs arrays x_train, y_train, x_test, y_test (or x and y); found {sorted(arrays)}")
    x_tr, y_tr, x_te, y_te = parts
    for name, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        if len(x) != len(y):
            raise UserError(f"{path}: x_{name} has {len(x)} rows but y_{name} has {len(y)}")
        _check_array(f"x_{name}", x, path)
        if y.dtype.kind not in "iu":
            raise UserError(f"{path}: y_{name} must hold integer class labels, not {y.dtype}")
        if len(y) and y.min() < 0:
            raise UserError(f"{path}: y_{name} holds negative labels")
    num_classes = int(max(y_tr.max(initial=0), y_te.max(initial=0))) + 1
    return DataBundle(path.stem, torch.tensor(x_tr, dtype=torch.float32), torch.tensor(y_tr, dtype=torch.long),
                      torch.tensor(x_te, dtype=torch.float32), torch.tensor(y_te, dtype=torch.long), num_classes)
