"""Data: the built-in digits set, a user's npz, a user's dataset factory, or nothing (data-free:
random calibration inputs, distillation from the dense model, no fine-tuning unless asked).

The built-in sets are made from scikit-learn's handwritten digits (1,797 8x8 images that ship inside
the installed package, so nothing is downloaded), upsampled to 16x16 so that convolutions have room:
`digits` as they are, and `digits_distorted`, the same images rotated, scaled, shifted and noised.
The zoo models reach 99.7% on `digits`, so after a finetune every pruning policy lands within a test
image or two of the dense model; on `digits_distorted` they reach 84-95%, and policies can differ.

Both built-in sets also hold a validation split: digits taken out of the training split, which neither
the zoo's dense models nor any finetune train on. SPDY ranks its finalists on it (stages/prune.py
`finalist_samples`): ranked on training samples, the plans that keep most of the dense model's
function look best whether or not they finetune best. A user's data may bring one (`x_val, y_val`).
"""
from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .errors import UserError


@dataclass
class DataBundle:
    """Train/test tensors and an optional validation split (`x_val`, None when the data has none).
    `y_*` are None when there are no labels (data-free or unlabelled). `val_groups`, when set, names
    the original each validation sample is a copy of (equal-sized groups): copies of one original are
    correlated, so a standard error over validation samples must be taken over originals, not copies."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor | None
    x_test: torch.Tensor
    y_test: torch.Tensor | None
    num_classes: int | None
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    val_groups: torch.Tensor | None = None
    # "uint8, 0-255" where x arrived as integers (images saved as bytes): fed to the model as float32 as
    # they are, which is right for a token model and for one that scales its own input, and not for one
    # trained on [0, 1] (context.py says so when the model is not a token model)
    integer_inputs: str | None = None

    @property
    def has_labels(self) -> bool:
        return self.y_train is not None and self.y_test is not None

    @property
    def has_validation(self) -> bool:
        return self.x_val is not None and len(self.x_val) > 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, *self.x_train.shape[1:])

    def train_loader(self, batch_size: int, seed: int) -> DataLoader:
        tensors = (self.x_train,) if self.y_train is None else (self.x_train, self.y_train)
        generator = torch.Generator().manual_seed(seed)
        # A last batch of one sample is dropped: a BatchNorm1d in training mode cannot normalise one value
        # per channel and raises (129 training samples in batches of 64 did). Other remainders are kept.
        single = len(self.x_train) % batch_size == 1 and len(self.x_train) > 1
        return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=True, generator=generator,
                          drop_last=single)

    def calibration(self, count: int) -> torch.Tensor:
        """The first `count` training inputs: deterministic, so the same seed gives the same plan."""
        return self.x_train[:count]


def _split_indices(count: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of a deterministic split."""
    order = np.random.default_rng(seed).permutation(count)
    n_test = max(1, int(round(count * test_fraction)))
    return order[n_test:], order[:n_test]


def _split(x: np.ndarray, y: np.ndarray | None, test_fraction: float, seed: int):
    train, test = _split_indices(len(x), test_fraction, seed)
    return x[train], None if y is None else y[train], x[test], None if y is None else y[test]


def _digit_images(size: int) -> tuple[torch.Tensor, np.ndarray]:
    """The 1,797 digits upsampled to size x size, in [0, 1], and their labels."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images, digits.target.astype(np.int64)


# The built-in sets' validation split: this fraction of the training digits (the last of the split's
# order, so the calibration samples, the first training inputs, are the same digits with or without it).
VALIDATION_FRACTION = 0.15


def _split_validation(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: the last VALIDATION_FRACTION of a split's training indices."""
    n_val = max(1, int(round(len(train) * VALIDATION_FRACTION)))
    return train[:-n_val], train[-n_val:]


def load_digits(size: int = 16, seed: int = 0) -> DataBundle:
    images, labels = _digit_images(size)
    images = (images - 0.5) / 0.5
    train, test = _split_indices(len(images), 0.2, seed)
    train, val = _split_validation(train)
    y = torch.from_numpy(labels)
    return DataBundle("digits", images[train], y[train], images[test], y[test], 10, images[val], y[val])


# Distortions of digits_distorted: each image is rotated, scaled and shifted at random, then gets
# Gaussian pixel noise. The zoo's dense models (15 epochs, seeds 0 and 1, trained without the validation
# digits) reach resnet_digits 93.5-94.2%, vgg_digits 92.9-94.6%, mobilenet_digits 83.6-84.5% on it
# (against 99.7% on plain digits).
DISTORT_DEGREES = 15.0
DISTORT_SCALE = (0.8, 1.15)
DISTORT_SHIFT = 0.2  # of the half-width: 1.6 pixels at 16x16
DISTORT_NOISE = 0.2  # pixel-noise stdev, images in [0, 1]
DISTORTED_TEST_COPIES = 3  # each held-out digit is tested in 3 distortions: 1,077 test images
# Each validation digit is validated in 6 distortions (1,296 images): SPDY's finalists differ by a few
# tenths of a point, and with 2 (432 images) the validation split ranked two vgg_digits 2x plans
# 0.0457 against 0.0480 while the test split ranked them 93.87% against 94.99% the other way. More
# copies of the same 216 digits cut the part of that noise that comes from the distortions drawn.
DISTORTED_VALIDATION_COPIES = 6
DISTORT_SEED = 1  # the set is fixed: the same on every machine and for every run seed


def distort(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random rotation, scale and shift (one affine map per image) plus pixel noise."""
    count = len(images)
    angle = torch.tensor(rng.uniform(-DISTORT_DEGREES, DISTORT_DEGREES, count) * np.pi / 180, dtype=torch.float32)
    inverse_scale = 1.0 / torch.tensor(rng.uniform(*DISTORT_SCALE, count), dtype=torch.float32)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0] = torch.cos(angle) * inverse_scale
    theta[:, 0, 1] = -torch.sin(angle) * inverse_scale
    theta[:, 1, 0] = torch.sin(angle) * inverse_scale
    theta[:, 1, 1] = torch.cos(angle) * inverse_scale
    theta[:, :, 2] = torch.tensor(rng.uniform(-DISTORT_SHIFT, DISTORT_SHIFT, (count, 2)), dtype=torch.float32)
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    moved = torch.nn.functional.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
    return moved + torch.tensor(rng.normal(0.0, DISTORT_NOISE, moved.shape), dtype=torch.float32)


def load_digits_distorted(size: int = 16, seed: int = 0) -> DataBundle:
    """The digits split as `digits` is (the same held-out and validation originals), each training digit
    distorted once, each validation digit DISTORTED_VALIDATION_COPIES times and each held-out digit
    DISTORTED_TEST_COPIES times, so no validation or test image is a copy of a training one."""
    images, labels = _digit_images(size)
    train, test = _split_indices(len(images), 0.2, seed)
    rng = np.random.default_rng(DISTORT_SEED)
    # Drawn in this order (every training-split digit once, then the test copies) so the training and
    # test images are the ones the set had before it gained a validation split.
    x_train = distort(images[train], rng)
    x_test = torch.cat([distort(images[test], rng) for _ in range(DISTORTED_TEST_COPIES)])
    kept, val = _split_validation(np.arange(len(train)))
    x_val = torch.cat([distort(images[train[val]], rng) for _ in range(DISTORTED_VALIDATION_COPIES)])
    y_train = torch.from_numpy(labels[train[kept]])
    y_test = torch.from_numpy(np.tile(labels[test], DISTORTED_TEST_COPIES))
    y_val = torch.from_numpy(np.tile(labels[train[val]], DISTORTED_VALIDATION_COPIES))
    originals = torch.arange(len(val)).repeat(DISTORTED_VALIDATION_COPIES)
    return DataBundle("digits_distorted", (x_train[kept] - 0.5) / 0.5, y_train, (x_test - 0.5) / 0.5, y_test, 10,
                      (x_val - 0.5) / 0.5, y_val, originals)


def random_data(input_shape: tuple[int, ...], count: int = 256, seed: int = 0, vocab: int | None = None) -> DataBundle:
    """Data-free mode: Gaussian inputs of the model's input shape, no labels; for a model that takes
    token ids (`vocab` entries in its input embedding), ids drawn uniformly from [0, vocab)."""
    generator = torch.Generator().manual_seed(seed)
    if vocab is None:
        x = torch.randn((count, *input_shape[1:]), generator=generator)
    else:
        x = torch.randint(0, vocab, (count, *input_shape[1:]), generator=generator)
    n_test = max(1, count // 4)
    return DataBundle("random", x[n_test:], None, x[:n_test], None, None)


def as_token_ids(data: DataBundle, vocab: int, source: str) -> DataBundle:
    """`data` with its inputs as int64 token ids, for a model whose input goes into an nn.Embedding of
    `vocab` entries. Every input must be a whole number in [0, vocab): a float or out-of-range id
    would be looked up as some other token, or fail inside the model."""
    splits = {"x_train": data.x_train, "x_test": data.x_test, "x_val": data.x_val}
    for name, x in splits.items():
        if x is None or len(x) == 0:
            continue
        if not torch.equal(x, x.round()):
            raise UserError(f"{source}: the model takes integer token ids (its input goes into an nn.Embedding), "
                            f"but {name} holds values that are not whole numbers")
        low, high = int(x.min()), int(x.max())
        if low < 0 or high >= vocab:
            raise UserError(f"{source}: {name} holds token ids from {low} to {high}, but the model's input "
                            f"embedding has {vocab} entries (ids 0 to {vocab - 1})")
    return replace(data, **{name: None if x is None else x.long() for name, x in splits.items()})


BUILTIN_DATASETS = {"digits": load_digits, "digits_distorted": load_digits_distorted}


def _check_split(source: str, name: str, x: np.ndarray, y: np.ndarray | None) -> None:
    if len(x) == 0:
        raise UserError(f"{source}: the {name} split is empty")
    if x.dtype.kind not in "fiub":
        raise UserError(f"{source}: x_{name} must hold numbers, not {x.dtype}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise UserError(f"{source}: x_{name} holds NaN or Inf values")
    if y is None:
        return
    if len(x) != len(y):
        raise UserError(f"{source}: x_{name} has {len(x)} rows but y_{name} has {len(y)}")
    if y.dtype.kind not in "iu":
        raise UserError(f"{source}: y_{name} must hold integer class labels, not {y.dtype} (a model that is "
                        "not a classifier is compressed on distillation alone: leave the y_* arrays out)")
    if y.ndim != 1:
        raise UserError(f"{source}: y_{name} must be one class label per sample, got shape {y.shape}")
    if len(y) and y.min() < 0:
        raise UserError(f"{source}: y_{name} holds negative labels")


def _bundle(name: str, source: str, x_tr: np.ndarray, y_tr: np.ndarray | None, x_te: np.ndarray,
            y_te: np.ndarray | None, x_val: np.ndarray | None = None, y_val: np.ndarray | None = None) -> DataBundle:
    """Validated tensors: float32 inputs, int64 labels; every split's samples must have one shape, and
    a validation split (optional) has labels exactly when the others do."""
    if (y_tr is None) != (y_te is None):
        raise UserError(f"{source}: either both splits have labels or neither does")
    _check_split(source, "train", x_tr, y_tr)
    _check_split(source, "test", x_te, y_te)
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise UserError(f"{source}: train samples have shape {x_tr.shape[1:]} but test samples {x_te.shape[1:]}")
    if x_val is not None:
        if (y_val is None) != (y_tr is None):
            raise UserError(f"{source}: the validation split must have labels exactly when train and test do")
        _check_split(source, "val", x_val, y_val)
        if x_val.shape[1:] != x_tr.shape[1:]:
            raise UserError(f"{source}: train samples have shape {x_tr.shape[1:]} but validation samples "
                            f"{x_val.shape[1:]}")

    def labels(y: np.ndarray | None) -> torch.Tensor | None:
        return None if y is None else torch.tensor(y, dtype=torch.long)

    num_classes = None if y_tr is None else int(max(y.max(initial=0) for y in (y_tr, y_te, y_val) if y is not None)) + 1
    integers = f"{x_tr.dtype}, {x_tr.min()}-{x_tr.max()}" if x_tr.dtype.kind in "iu" else None
    return DataBundle(name, torch.tensor(x_tr, dtype=torch.float32), labels(y_tr),
                      torch.tensor(x_te, dtype=torch.float32), labels(y_te), num_classes,
                      None if x_val is None else torch.tensor(x_val, dtype=torch.float32), labels(y_val),
                      integer_inputs=integers)


def load_npz(path: str | Path, seed: int = 0) -> DataBundle:
    """x_train/y_train/x_test/y_test, or x/y split deterministically (80/20); either form may add a
    validation split x_val (and y_val when labelled). Without the y arrays (x_train/x_test, or x) the data
    is unlabelled: a model that is not a classifier is compressed on distillation alone."""
    path = Path(path)
    try:
        arrays = dict(np.load(path, allow_pickle=False))
    except FileNotFoundError:
        raise UserError(f"data file not found: {path}") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # corrupt or truncated
        raise UserError(f"{path}: not a readable npz file ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    if {"x_train", "x_test"} <= arrays.keys():  # _bundle: both splits labelled, or neither
        parts = [arrays.get(k) for k in ("x_train", "y_train", "x_test", "y_test")]
    elif "x" in arrays:
        x, y = arrays["x"], arrays.get("y")
        if y is not None and len(x) != len(y):
            raise UserError(f"{path}: x has {len(x)} rows but y has {len(y)}")
        if len(x) < 2:
            raise UserError(f"{path}: x needs at least 2 rows to split into train and test")
        parts = list(_split(x, y, 0.2, seed))
    else:
        raise UserError(f"{path}: needs arrays x_train, x_test (with y_train, y_test for labels), or x (and y); "
                        f"found {sorted(arrays)}")
    if "y_val" in arrays and "x_val" not in arrays:
        raise UserError(f"{path}: has y_val but no x_val")
    x_tr, y_tr, x_te, y_te = parts
    return _bundle(path.stem, str(path), x_tr, y_tr, x_te, y_te, arrays.get("x_val"), arrays.get("y_val"))


def _dataset_arrays(dataset, source: str, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Samples of a torch Dataset (items (x, y) or x) or a TensorDataset, stacked into arrays."""
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, tuple) and tensors and all(isinstance(t, torch.Tensor) for t in tensors):
        return tensors[0].detach().cpu().numpy(), tensors[1].detach().cpu().numpy() if len(tensors) > 1 else None
    try:
        count = len(dataset)
    except TypeError:
        raise UserError(f"{source}: the {split} dataset has no len(); return a map-style torch Dataset") from None
    xs, ys = [], []
    for i in range(count):
        item = dataset[i]
        x, y = (item[0], item[1]) if isinstance(item, (tuple, list)) and len(item) >= 2 else (item, None)
        if isinstance(item, (tuple, list)) and len(item) == 1:
            x = item[0]
        try:
            xs.append(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32))
            if y is not None:
                ys.append(int(y.item() if isinstance(y, torch.Tensor) else y))
        except (TypeError, ValueError) as exc:
            raise UserError(f"{source}: {split} sample {i} is not (tensor, integer label): {exc}") from None
    if ys and len(ys) != len(xs):
        raise UserError(f"{source}: some {split} samples have labels and some do not")
    shapes = {a.shape for a in xs}
    if len(shapes) > 1:
        raise UserError(f"{source}: {split} samples differ in shape ({sorted(shapes)[:2]}); every sample needs one shape")
    return np.stack(xs) if xs else np.zeros((0,), np.float32), np.asarray(ys, dtype=np.int64) if ys else None


def load_factory_data(spec: str, seed: int = 0) -> DataBundle:
    """`file.py:factory` or `package.module:factory` returning (train, test) or (train, val, test)
    datasets, or one dataset that is split deterministically (80/20). Samples are copied into memory
    as tensors."""
    from .models.loading import call_factory, import_factory

    result = call_factory(spec, import_factory(spec, "--data"), "--data", seed=seed)
    x_val = y_val = None
    if isinstance(result, (tuple, list)) and len(result) == 3:
        x_val, y_val = _dataset_arrays(result[1], spec, "val")
        result = (result[0], result[2])
    if isinstance(result, (tuple, list)) and len(result) == 2:
        (x_tr, y_tr), (x_te, y_te) = (_dataset_arrays(result[0], spec, "train"),
                                      _dataset_arrays(result[1], spec, "test"))
    elif hasattr(result, "__getitem__") and not isinstance(result, (tuple, list, dict)):
        x, y = _dataset_arrays(result, spec, "whole")
        if len(x) < 2:
            raise UserError(f"{spec}: the dataset needs at least 2 samples to split into train and test")
        x_tr, y_tr, x_te, y_te = _split(x, y, 0.2, seed)
    else:
        raise UserError(f"--data: factory {spec} returned {type(result).__name__}; expected (train, test) "
                        "or (train, val, test) datasets")
    name = spec.rpartition(":")[2]
    return _bundle(name, spec, x_tr, y_tr, x_te, y_te, x_val, y_val)
