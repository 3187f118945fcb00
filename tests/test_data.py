"""--data: npz files, dataset factories, data-free mode, and the checks around them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deploycompress.context import _load_data, build_context
from deploycompress.data import DataBundle, load_factory_data, load_npz, random_data
from deploycompress.errors import UserError
from deploycompress.recipe import RunConfig

LINEAR_FACTORY = "from torch import nn\ndef make(num_classes=3):\n    return nn.Linear(4, num_classes)\n"


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def xy(n: int = 50, features: int = 4, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features)).astype(np.float32), rng.integers(0, classes, n)


def test_npz_with_explicit_splits(tmp_path):
    x, y = xy()
    bundle = load_npz(write_npz(tmp_path / "d.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:]))
    assert bundle.x_train.shape == (40, 4) and bundle.x_test.shape == (10, 4)
    assert bundle.x_train.dtype == torch.float32 and bundle.y_train.dtype == torch.long
    assert bundle.num_classes == int(y.max()) + 1 and bundle.input_shape == (1, 4) and bundle.name == "d"


def test_npz_x_y_split_is_deterministic(tmp_path):
    x, y = xy(100)
    path = write_npz(tmp_path / "d.npz", x=x, y=y)
    a, b, c = load_npz(path, seed=0), load_npz(path, seed=0), load_npz(path, seed=1)
    assert len(a.x_train) == 80 and len(a.x_test) == 20
    assert torch.equal(a.x_test, b.x_test) and not torch.equal(a.x_test, c.x_test)
    # every sample lands in exactly one split
    together = torch.cat([a.x_train, a.x_test])
    assert sorted(together[:, 0].tolist()) == sorted(x[:, 0].tolist())


@pytest.mark.parametrize("arrays,message", [
    ({"a": np.zeros(3)}, r"needs arrays x_train, x_test \(with y_train, y_test for labels\), or x \(and y\)"),
    ({"x_train": np.zeros((5, 2)), "y_train": np.zeros(5, dtype=int), "x_test": np.zeros((2, 2))},
     "either both splits have labels or neither does"),
    ({"x": np.zeros((4, 2)), "y": np.zeros(3, dtype=np.int64)}, "x has 4 rows but y has 3"),
    ({"x": np.full((5, 2), np.nan, dtype=np.float32), "y": np.zeros(5, dtype=np.int64)}, "NaN or Inf"),
    ({"x": np.zeros((5, 2)), "y": np.zeros(5)}, "integer class labels"),
    ({"x": np.zeros((5, 2)), "y": -np.ones(5, dtype=np.int64)}, "negative labels"),
    ({"x_train": np.zeros((5, 2)), "y_train": np.zeros(5, dtype=int), "x_test": np.zeros((2, 3)),
      "y_test": np.zeros(2, dtype=int)}, "train samples have shape"),
])
def test_npz_problems_are_named(tmp_path, arrays, message):
    with pytest.raises(UserError, match=message):
        load_npz(write_npz(tmp_path / "d.npz", **arrays))


def test_npz_without_labels_is_unlabelled_data(tmp_path):
    """A model that is not a classifier (a regressor, an autoencoder) brings x arrays alone."""
    x, _ = xy(50)
    given = load_npz(write_npz(tmp_path / "given.npz", x_train=x[:40], x_test=x[40:]))
    assert not given.has_labels and given.num_classes is None and len(given.x_test) == 10
    split = load_npz(write_npz(tmp_path / "split.npz", x=x), seed=3)
    assert not split.has_labels and (len(split.x_train), len(split.x_test)) == (40, 10)
    # the same rows as a labelled file with the same x splits into
    labelled = load_npz(write_npz(tmp_path / "labelled.npz", x=x, y=np.zeros(50, dtype=np.int64)), seed=3)
    assert torch.equal(split.x_test, labelled.x_test)


def test_npz_may_add_a_validation_split(tmp_path):
    x, y = xy(60)
    bundle = load_npz(write_npz(tmp_path / "v.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:50],
                                y_test=y[40:50], x_val=x[50:], y_val=y[50:]))
    assert bundle.has_validation and bundle.x_val.shape == (10, 4) and bundle.y_val.dtype == torch.long
    split = load_npz(write_npz(tmp_path / "xy.npz", x=x[:50], y=y[:50], x_val=x[50:], y_val=y[50:]))
    assert len(split.x_train) == 40 and len(split.x_val) == 10
    assert not load_npz(write_npz(tmp_path / "none.npz", x=x, y=y)).has_validation


@pytest.mark.parametrize("extra,message", [
    ({"y_val": np.zeros(3, dtype=int)}, "has y_val but no x_val"),
    ({"x_val": np.zeros((3, 4), np.float32)}, "validation split must have labels exactly when"),
    ({"x_val": np.zeros((3, 5), np.float32), "y_val": np.zeros(3, dtype=int)}, "but validation samples"),
    ({"x_val": np.zeros((3, 4), np.float32), "y_val": np.zeros(2, dtype=int)}, "x_val has 3 rows but y_val has 2"),
    ({"x_val": np.full((3, 4), np.nan, np.float32), "y_val": np.zeros(3, dtype=int)}, "x_val holds NaN"),
])
def test_npz_validation_problems_are_named(tmp_path, extra, message):
    x, y = xy()
    with pytest.raises(UserError, match=message):
        load_npz(write_npz(tmp_path / "bad.npz", x=x, y=y, **extra))


def test_unreadable_npz(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(UserError, match="not a readable npz"):
        load_npz(tmp_path / "bad.npz")
    with pytest.raises(UserError, match="data file not found"):
        load_npz(tmp_path / "absent.npz")


DATA_FACTORIES = '''
import torch
from torch.utils.data import Dataset, TensorDataset

g = torch.Generator().manual_seed(0)
X = torch.randn(30, 2, 5, generator=g)
Y = torch.randint(0, 4, (30,), generator=g)


class Pairs(Dataset):
    """A plain map-style Dataset yielding (tensor, int) pairs, as most user datasets do."""

    def __init__(self, start, stop):
        self.start, self.stop = start, stop

    def __len__(self):
        return self.stop - self.start

    def __getitem__(self, i):
        return X[self.start + i], int(Y[self.start + i])


def tensor_datasets():
    return TensorDataset(X[:24], Y[:24]), TensorDataset(X[24:], Y[24:])


def pair_datasets(seed=0):
    return Pairs(0, 24), Pairs(24, 30)


def one_dataset():
    return Pairs(0, 30)


def with_validation():
    return Pairs(0, 20), Pairs(20, 24), Pairs(24, 30)


def unlabelled():
    return TensorDataset(X[:24]), TensorDataset(X[24:])


def ragged():
    return [torch.zeros(3), torch.zeros(4)], [torch.zeros(3)]


def not_datasets():
    return 42


def float_labels():
    return TensorDataset(X[:24], Y[:24].float()), TensorDataset(X[24:], Y[24:].float())
'''


@pytest.fixture
def factories(tmp_path) -> Path:
    path = tmp_path / "my_data.py"
    path.write_text(DATA_FACTORIES)
    return path


@pytest.mark.parametrize("name", ["tensor_datasets", "pair_datasets"])
def test_factory_train_test_datasets(factories, name):
    bundle = load_factory_data(f"{factories}:{name}")
    assert bundle.x_train.shape == (24, 2, 5) and bundle.x_test.shape == (6, 2, 5)
    assert bundle.y_train.dtype == torch.long and bundle.has_labels and bundle.name == name
    assert bundle.input_shape == (1, 2, 5) and bundle.num_classes >= 2


def test_factory_datasets_match_between_forms(factories):
    a = load_factory_data(f"{factories}:tensor_datasets")
    b = load_factory_data(f"{factories}:pair_datasets")
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)


def test_factory_may_return_a_validation_split(factories):
    bundle = load_factory_data(f"{factories}:with_validation")
    assert bundle.x_train.shape == (20, 2, 5) and bundle.x_val.shape == (4, 2, 5) and bundle.has_validation
    assert torch.equal(bundle.y_val, load_factory_data(f"{factories}:tensor_datasets").y_train[20:24])
    assert not load_factory_data(f"{factories}:tensor_datasets").has_validation


def test_factory_single_dataset_is_split(factories):
    bundle = load_factory_data(f"{factories}:one_dataset", seed=0)
    assert len(bundle.x_train) == 24 and len(bundle.x_test) == 6


def test_factory_without_labels(factories):
    bundle = load_factory_data(f"{factories}:unlabelled")
    assert not bundle.has_labels and bundle.num_classes is None and len(bundle.x_test) == 6


@pytest.mark.parametrize("name,message", [
    ("ragged", "samples differ in shape"),
    ("not_datasets", "returned int; expected \\(train, test\\) or \\(train, val, test\\) datasets"),
    ("float_labels", "integer class labels"),
    ("missing", "no callable named 'missing'"),
])
def test_factory_problems_are_named(factories, name, message):
    with pytest.raises(UserError, match=message):
        load_factory_data(f"{factories}:{name}")


def config(tmp_path, **overrides) -> RunConfig:
    model = tmp_path / "linear.py"
    model.write_text(LINEAR_FACTORY)
    return RunConfig(**{"model": f"{model}:make", "out": str(tmp_path / "run"), **overrides})


def test_context_loads_a_data_factory(tmp_path, factories):
    cfg = config(tmp_path, data=f"{factories}:tensor_datasets")
    bundle = _load_data(cfg, None)
    assert bundle.x_train.shape == (24, 2, 5)


def test_data_free_needs_an_input_shape(tmp_path):
    with pytest.raises(UserError, match="--input-shape is required"):
        build_context(config(tmp_path, data="none"), tmp_path)
    ctx = build_context(config(tmp_path, data="none", input_shape="1,4"), tmp_path)
    assert ctx.data.name == "random" and not ctx.data.has_labels
    assert ctx.report["accuracy"]["dense"] is None


def test_input_shape_must_agree_with_the_data(tmp_path):
    x, y = xy()
    data = write_npz(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(UserError, match="does not match the data's samples \\(4,\\)"):
        build_context(config(tmp_path, data=str(data), input_shape="1,5"), tmp_path)
    ctx = build_context(config(tmp_path, data=str(data)), tmp_path)  # the data gives the shape
    assert tuple(ctx.example_input.shape) == (1, 4) and ctx.data.has_labels


def test_integer_inputs_are_fed_as_they_are_and_the_run_says_so(tmp_path, capsys):
    """Images saved as bytes (0-255) reach the model unscaled: right for a model that scales its own
    input, wrong for one trained on [0, 1], whose dense accuracy then reads like chance."""
    x, y = xy()
    pixels = np.clip(x * 60 + 128, 0, 255).astype(np.uint8)
    data = write_npz(tmp_path / "bytes.npz", x=pixels, y=y)
    ctx = build_context(config(tmp_path, data=str(data)), tmp_path)
    assert ctx.data.integer_inputs == f"uint8, {pixels.min()}-{pixels.max()}"
    assert float(ctx.data.x_train.max()) == pixels.max()  # not scaled
    note = f"x_train holds integers (uint8, {pixels.min()}-{pixels.max()}), fed to the model as float32 as they are"
    assert any(n.startswith(note) for n in ctx.report["setup_notes"]) and note in capsys.readouterr().out
    floats = write_npz(tmp_path / "floats.npz", x=x, y=y)
    ctx = build_context(config(tmp_path, data=str(floats)), tmp_path)
    assert ctx.data.integer_inputs is None and not any("integers" in n for n in ctx.report["setup_notes"])


def test_labels_beyond_the_model_outputs(tmp_path):
    x, _ = xy()
    data = write_npz(tmp_path / "d.npz", x=x, y=np.full(len(x), 7))
    model = tmp_path / "fixed.py"
    model.write_text("from torch import nn\ndef make():\n    return nn.Linear(4, 3)\n")
    with pytest.raises(UserError, match="labels go up to 7 but the model has 3 outputs"):
        build_context(RunConfig(model=f"{model}:make", data=str(data)), tmp_path)


def test_invalid_ignore_regex(tmp_path):
    with pytest.raises(UserError, match="--ignore '\\(' is not a valid regular expression"):
        build_context(config(tmp_path, data="none", input_shape="1,4", ignore="("), tmp_path)


def test_unknown_data_source(tmp_path):
    with pytest.raises(UserError, match="expected a built-in dataset .*file.py:factory"):
        _load_data(config(tmp_path, data="imagenet"), None)


def test_random_data_is_seeded():
    a, b = random_data((1, 3, 4), count=20, seed=1), random_data((1, 3, 4), count=20, seed=1)
    assert torch.equal(a.x_train, b.x_train) and a.x_train.shape[1:] == (3, 4) and a.y_train is None


def test_random_token_ids_stay_inside_the_vocabulary():
    data = random_data((1, 12), count=400, seed=1, vocab=50)
    assert data.x_train.dtype == torch.int64 and data.x_train.shape[1:] == (12,)
    everything = torch.cat([data.x_train, data.x_test])
    assert int(everything.min()) == 0 and int(everything.max()) == 49  # the whole range is drawn


def test_token_ids_from_data_are_whole_numbers_inside_the_vocabulary():
    from deploycompress.data import DataBundle, as_token_ids

    ids = torch.tensor([[0.0, 3.0, 9.0], [1.0, 2.0, 4.0]])  # npz arrays arrive as float32
    labels = torch.tensor([0, 1])
    data = as_token_ids(DataBundle("ids", ids, labels, ids, labels, 2, ids[:1], labels[:1]), 10, "--data ids.npz")
    assert all(x.dtype == torch.int64 and torch.equal(x, ids[: len(x)].long())
               for x in (data.x_train, data.x_test, data.x_val))
    with pytest.raises(UserError, match=r"--data ids.npz: .*x_train holds values that are not whole numbers"):
        as_token_ids(DataBundle("ids", ids + 0.5, labels, ids, labels, 2), 10, "--data ids.npz")
    with pytest.raises(UserError, match=r"x_test holds token ids from 0 to 9, but the model's input embedding has 9 "
                                        r"entries \(ids 0 to 8\)"):
        as_token_ids(DataBundle("ids", ids.clamp(max=8), labels, ids, labels, 2), 9, "--data ids.npz")
    with pytest.raises(UserError, match=r"x_train holds token ids from -1 to 8"):
        as_token_ids(DataBundle("ids", ids - 1, labels, ids, labels, 2), 10, "--data ids.npz")


def test_digits_distorted_is_fixed_and_tests_only_held_out_digits():
    from deploycompress.data import DISTORTED_TEST_COPIES, load_digits, load_digits_distorted

    plain, first, again = load_digits(), load_digits_distorted(), load_digits_distorted()
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.x_test, again.x_test)
    assert len(first.x_train) == len(plain.x_train)
    assert len(first.x_test) == DISTORTED_TEST_COPIES * len(plain.x_test)
    # The same originals are held out as in `digits` (the labels line up), in distinct distortions.
    assert torch.equal(first.y_train, plain.y_train)
    assert torch.equal(first.y_test, plain.y_test.repeat(DISTORTED_TEST_COPIES))
    n = len(plain.x_test)
    assert not torch.equal(first.x_test[:n], first.x_test[n:2 * n])
    assert first.input_shape == plain.input_shape == (1, 1, 16, 16)


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.flatten(1)}


def test_builtin_sets_hold_out_validation_digits_that_nothing_trains_on():
    from deploycompress.data import DISTORTED_VALIDATION_COPIES, VALIDATION_FRACTION, load_digits, load_digits_distorted

    plain, distorted = load_digits(), load_digits_distorted()
    n_val = len(plain.x_val)
    assert n_val == round((len(plain.x_train) + n_val) * VALIDATION_FRACTION)
    # distinct digit images: none of the validation digits is a training or a test digit
    assert not _rows(plain.x_val) & _rows(plain.x_train) and not _rows(plain.x_val) & _rows(plain.x_test)
    assert len(set(plain.y_val.tolist())) == 10  # every class is validated
    # digits_distorted validates the same originals, each in distinct distortions
    assert torch.equal(distorted.y_val, plain.y_val.repeat(DISTORTED_VALIDATION_COPIES))
    assert not torch.equal(distorted.x_val[:n_val], distorted.x_val[n_val:2 * n_val])
    assert not _rows(distorted.x_val) & _rows(distorted.x_train)
    # each validation original is named, so standard errors can be taken over originals, not copies
    assert plain.val_groups is None
    assert torch.equal(torch.bincount(distorted.val_groups), torch.full((n_val,), DISTORTED_VALIDATION_COPIES))
    assert torch.equal(distorted.y_val, plain.y_val[distorted.val_groups])


def test_digits_distorted_is_harder_than_digits():
    """What the set is for: a linear classifier that nearly solves plain digits loses far more on it."""
    from sklearn.linear_model import LogisticRegression

    from deploycompress.data import load_digits, load_digits_distorted

    def linear_accuracy(bundle) -> float:
        classifier = LogisticRegression(max_iter=300).fit(bundle.x_train.flatten(1).numpy(), bundle.y_train.numpy())
        return classifier.score(bundle.x_test.flatten(1).numpy(), bundle.y_test.numpy())

    plain, distorted = linear_accuracy(load_digits()), linear_accuracy(load_digits_distorted())
    assert plain > 0.93
    assert distorted < plain - 0.15, (plain, distorted)


def test_digits_distorted_is_a_builtin_data_source(tmp_path):
    bundle = _load_data(RunConfig(model="resnet_digits", data="digits_distorted", out=str(tmp_path)), None)
    assert bundle.name == "digits_distorted" and bundle.num_classes == 10


@pytest.mark.parametrize("samples, batches", [(129, [64, 64]), (130, [64, 64, 2]), (128, [64, 64]), (1, [1])])
def test_a_last_batch_of_one_sample_is_dropped(samples, batches):
    """A BatchNorm1d in training mode raises on one value per channel (129 samples in batches of 64 did)."""
    x = torch.randn(samples, 3)
    bundle = DataBundle("d", x, None, x, None, None)
    assert [len(b[0]) for b in bundle.train_loader(64, seed=0)] == batches


def test_batchnorm_is_recalibrated_without_a_batch_of_one():
    from types import SimpleNamespace

    from deploycompress.stages.prune import recalibrate_batchnorm

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    recalibrate_batchnorm(SimpleNamespace(model=model, calibration=torch.randn(65, 3)))
    assert model[1].num_batches_tracked == 1 and not model.training
