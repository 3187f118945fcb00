"""Bad input, in one table: every case gets exactly one line on stderr, exit code 2, no traceback, and
nothing the user had is lost (their input files, and what their --out directory already held).

Each row of CASES is (id, the `deploycompress run` arguments, a regular expression the line must
match). The commands run through the installed console script, three at once; recipe and option
errors fail before torch is imported, the rest before pruning starts, except a model with nothing to
prune (found when the prune stage builds its channel groups) and the unreachable target, which
measures one candidate of a uniform search on the default model (its trained weights are copied from
the user's cache, so nothing is retrained).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from conftest import cli_executable
from deploycompress.models.loading import cache_dir

MODEL_PY = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))


def make():  # ten outputs, whatever the labels say
    return Net()


def boom():
    raise RuntimeError("factory exploded")


def not_a_module():
    return 42


class WithLoss(Net):  # the logits and a batch loss, which is no per-sample output
    def forward(self, x):
        logits = super().forward(x)
        return logits, logits.pow(2).mean()


def with_loss():
    return WithLoss()


class UnflattenedScores(Net):  # (batch, 10, 1, 1)
    def forward(self, x):
        return super().forward(x)[:, :, None, None]


def unflattened():
    return UnflattenedScores()


def _from_ones(lstm: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    """The LSTM's last output step, started from a state of ones: zeroed units would not stay zero."""
    state = torch.ones(1, x.shape[0], lstm.hidden_size)
    return lstm(x, (state, state))[0][:, -1]


class Recurrent(nn.Module):  # nothing to prune: an LSTM from its own state (left dense), the output layer
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(_from_ones(self.lstm, x[:, 0]))


def recurrent():
    return Recurrent()


class BatchOne(nn.Module):  # runs on one sample only: the view hard-codes the batch size
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(1, -1))


def batch_one():
    return BatchOne()


class NoGradForward(Net):  # an inference wrapper: forward under no_grad builds no autograd graph
    @torch.no_grad()
    def forward(self, x):
        return super().forward(x)


def no_grad_forward():
    return NoGradForward()


class RecurrentWithHidden(nn.Module):  # a wide LSTM from its own state (left dense), a prunable layer
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 256, batch_first=True)
        self.hidden = nn.Linear(256, 64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.hidden(_from_ones(self.lstm, x[:, 0]))))


def recurrent_with_hidden():
    return RecurrentWithHidden()


class Tokens(nn.Module):  # integer token ids in
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.embed(x).mean(1))


def tokens():
    return Tokens()


class TokenSequence(nn.Module):  # integer token ids in, a sequence of exactly 12
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.fc = nn.Linear(12 * 16, 10)

    def forward(self, x):
        return self.fc(self.embed(x).flatten(1))


def token_sequence():
    return TokenSequence()


class IndexPicker(nn.Module):  # integer indices in, but not into the embedding it holds
    def __init__(self):
        super().__init__()
        self.unused = nn.Embedding(10, 4)
        self.table = nn.Parameter(torch.randn(20, 8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.index_select(self.table, 0, x.flatten()))


def index_picker():
    return IndexPicker()


class TwoInputs(nn.Module):  # forward(x, y)
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x, y):
        return self.fc((x + y).flatten(1))


def two_inputs():
    return TwoInputs()
'''

# Code that must never run: a file the user did not name as file.py:factory, a pickle inside an npz.
MARKER = "payload_ran"
EVIL_PY = f'open(__file__.rsplit("/", 1)[0] + "/{MARKER}", "w").close()\n'


class WritesMarker:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# A disk that fills while writing, injected: fsync reports ENOSPC, as ext4 and NFS may on a full disk.
INJECT_ENOSPC = (
    "import errno, os, sys\n"
    "def fsync(fd):\n"
    "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
    "os.fsync = fsync\n"
    "from deploycompress.cli import main\n"
    "sys.argv[0] = 'deploycompress'\n"
    "main()\n"
)


class Workspace:
    """The user's files, made once: a model file, weights, npz data, recipes, awkward output paths."""

    def __init__(self, root: Path):
        self.root = root
        self.mounts: list[Path] = []
        root.mkdir(parents=True, exist_ok=True)
        (root / "model.py").write_text(MODEL_PY)
        (root / "garbage.py").write_bytes(b"\x00\xff def (:\n")
        (root / "raises.py").write_text("raise ImportError('no module named fancy_layers')\n")
        (root / "evil.py").write_text(EVIL_PY)
        namespace: dict = {}
        exec(MODEL_PY, namespace)  # noqa: S102 - our own test model
        good = root / "good.pt"
        torch.save(namespace["Net"]().state_dict(), good)
        torch.save(namespace["Net"](width=32).state_dict(), root / "other_model.pt")
        (root / "corrupt.pt").write_bytes(random.Random(0).randbytes(4096))
        # 0x80 then a byte reads as "pickle protocol 153": torch warns before it fails
        (root / "corrupt_pickle_header.pt").write_bytes(b"\x80\x99" + random.Random(1).randbytes(4094))
        (root / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        (root / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
        torch.save([1, 2, 3], root / "not_a_state_dict.pt")
        torch.jit.trace(namespace["Net"]().eval(), torch.randn(1, 3, 8, 8)).save(str(root / "scripted.pt"))

        rng = np.random.default_rng(0)

        def npz(name: str, **arrays) -> None:
            np.savez(root / name, **arrays)

        x = rng.standard_normal((20, 3, 8, 8)).astype(np.float32)
        y = rng.integers(0, 10, 20)
        npz("good.npz", x=x, y=y)
        npz("channels_last.npz", x=x.transpose(0, 2, 3, 1), y=y)  # as PIL, OpenCV and TensorFlow hold images
        npz("only_x.npz", x_train=x)
        npz("lengths.npz", x=x, y=y[:19])
        nan = x.copy()
        nan[3, 0, 0, 0] = np.nan
        npz("nan.npz", x=nan, y=y)
        inf = x.copy()
        inf[5, 1, 2, 3] = np.inf
        npz("inf.npz", x=inf, y=y)
        npz("labels_too_big.npz", x=x, y=np.where(np.arange(20) == 7, 12, y))
        npz("negative_labels.npz", x=x, y=np.where(np.arange(20) == 2, -1, y))
        (root / "corrupt.npz").write_bytes(b"PK\x03\x04" + os.urandom(300))
        good_npz = (root / "good.npz").read_bytes()
        (root / "truncated.npz").write_bytes(good_npz[: len(good_npz) // 2])
        # An npz whose y is a pickled object that would write the marker if it were ever unpickled.
        with zipfile.ZipFile(root / "pickled.npz", "w") as archive:
            with archive.open("x.npy", "w") as handle:
                np.lib.format.write_array(handle, x)
            with archive.open("y.npy", "w") as handle:
                payload = np.empty(1, dtype=object)
                payload[0] = WritesMarker(str(root / MARKER))
                np.lib.format.write_array(handle, payload, allow_pickle=True)

        recipes = {
            "unknown_key.toml": '[prune]\npolcy = "uniform"\n',
            "unknown_top_key.toml": "targt_speedup = 2\n",
            "wrong_type.toml": 'seed = "zero"\n',
            "section_not_table.toml": "prune = 3\n",
            "bad_value.toml": "[profile]\nrounds = 1\n",
            "bad_target.toml": 'target_speedup = "quick"\n',
            "not_toml.toml": "target_speedup = = 2\n[prune\n",
            # The unreachable target: one uniform-search candidate, briefly timed, is enough to know.
            "search.toml": '[prune]\npolicy = "uniform"\nsearch_rounds = 3\ncalibration_samples = 32\n',
        }
        for name, text in recipes.items():
            (root / name).write_text(text)
        (root / "a_file").write_text("keep me\n")
        self.read_only = self._mount("read_only", "ro,size=64k")
        self.full_disk = self._mount("full_disk", "size=64k")
        if self.full_disk is not None:
            (self.full_disk / "keep.txt").write_text("the user's own file\n")
            (self.full_disk / "manifest.json").write_text('{"from": "an earlier run"}\n')
            with open(self.full_disk / "filler.bin", "wb") as handle:  # the user's data fills the disk
                try:
                    handle.write(b"\x01" * (1 << 20))
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        self.inputs = {p: _digest(p) for p in sorted(root.iterdir()) if p.is_file()}

    def _mount(self, name: str, options: str) -> Path | None:
        """A small tmpfs (root only); None where mounting is not allowed."""
        target = self.root / name
        target.mkdir()
        if os.geteuid() != 0:
            return None
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options.replace("ro,", ""), "tmpfs", str(target)],
                                capture_output=True)
        if result.returncode != 0:
            return None
        self.mounts.append(target)
        if options.startswith("ro,"):
            subprocess.run(["mount", "-o", "remount,ro", str(target)], check=True)
        return target

    def unwritable(self) -> str:
        if self.read_only is not None:
            return str(self.read_only / "run")
        if os.geteuid() != 0:
            locked = self.root / "locked"
            locked.mkdir(exist_ok=True)
            locked.chmod(0o500)
            return str(locked / "run")
        return "/proc/deploycompress-test/run"  # root without mount: a filesystem nobody may write to

    def close(self) -> None:
        for target in self.mounts:
            subprocess.run(["umount", str(target)], capture_output=True)


def visible_lines(stderr: str) -> list[str]:
    """The lines a terminal shows: a progress bar erases itself with carriage returns (tqdm leave=False)."""
    shown = [line.rsplit("\r", 1)[-1].strip() for line in stderr.split("\n")]
    return [line for line in shown if line]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Case:
    id: str
    args: Callable[[Workspace], list]  # `deploycompress run` arguments; --out is added unless given
    expected: str  # regular expression the one stderr line must match
    starts_run: bool = False  # the input is fine until the search: the run (and its manifest) begins
    inject_enospc: bool = False
    needs_mount: bool = False  # a real tmpfs (root); where none can be mounted, the injected case runs instead


def user(w: Workspace, *extra) -> list:
    """The user's own model, data-free unless `extra` names data."""
    args = ["--model", f"{w.root}/model.py:make", *extra]
    return args if "--data" in extra else [*args, "--input-shape", "1,3,8,8", "--data", "none"]


CASES = [
    # the model: missing, unreadable, no such factory, a factory that raises
    Case("model-file-missing", lambda w: user(w) + ["--model", f"{w.root}/missing.py:make"], r"file not found: .*missing\.py"),
    Case("model-file-not-python", lambda w: user(w) + ["--model", f"{w.root}/garbage.py:make"], r"garbage\.py raised SyntaxError"),
    Case("model-file-raises-on-import", lambda w: user(w) + ["--model", f"{w.root}/raises.py:make"], r"raises\.py raised ImportError: no module named fancy_layers"),
    Case("model-a-saved-file", lambda w: user(w) + ["--model", f"{w.root}/good.pt"],
         r"--model .*good\.pt is a saved file, not code that builds a model: pass the function"),
    Case("model-an-onnx-file", lambda w: user(w) + ["--model", f"{w.root}/model.onnx"],
         r"--model .*model\.onnx is an ONNX file: deploycompress prunes the PyTorch model it was exported from"),
    Case("model-a-file-without-its-factory", lambda w: user(w) + ["--model", f"{w.root}/model.py"],
         r"--model .*model\.py: name the function in it that returns the model"),
    Case("factory-does-not-exist", lambda w: user(w) + ["--model", f"{w.root}/model.py:mkae"], r"no callable named 'mkae'"),
    Case("factory-raises", lambda w: user(w) + ["--model", f"{w.root}/model.py:boom"], r"factory .*:boom raised RuntimeError: factory exploded"),
    Case("model-returns-a-loss-beside-its-output", lambda w: user(w) + ["--model", f"{w.root}/model.py:with_loss"],
         r"output output_1 has shape \(\), not the batch \(1\) first"),
    Case("model-scores-not-flat", lambda w: user(w, "--data", w.root / "good.npz") + ["--model", f"{w.root}/model.py:unflattened"],
         r"must return class scores of shape \(batch, classes\); it returns \(1, 10, 1, 1\)"),
    Case("model-nothing-to-prune", lambda w: user(w) + ["--model", f"{w.root}/model.py:recurrent", "--finetune-epochs", "0"],
         r"nothing to prune: .*the output layer\(s\) fc are always kept; 1 group\(s\) left dense, the first lstm: "
         r"zeroing its channels is not the same as removing them", starts_run=True),
    Case("ignore-matches-every-layer", lambda w: user(w, "--ignore", "conv|bn", "--finetune-epochs", "0"),
         r"nothing to prune: .*--ignore 'conv\|bn' matched bn, conv", starts_run=True),
    Case("token-ids-not-whole-numbers", lambda w: user(w, "--data", w.root / "good.npz") + ["--model", f"{w.root}/model.py:tokens"],
         r"the model takes integer token ids .*but x_train holds values that are not whole numbers"),
    Case("token-ids-do-not-fit", lambda w: user(w) + ["--model", f"{w.root}/model.py:token_sequence", "--input-shape", "1,3,12"],
         r"input shape \(1, 3, 12\) does not fit the model: .*\(with int64 token ids, as its input goes into an nn.Embedding\)"),
    Case("model-takes-two-inputs", lambda w: user(w) + ["--model", f"{w.root}/model.py:two_inputs"],
         r"does not fit the model: .*missing 1 required positional argument.*models that take several inputs are not supported"),
    Case("model-takes-integers-not-token-ids", lambda w: user(w) + ["--model", f"{w.root}/model.py:index_picker", "--input-shape", "1,1"],
         r"input shape \(1, 1\) does not fit the model: index_select\(\): Expected dtype int32 or int64"),
    Case("model-fixes-its-batch-size", lambda w: user(w) + ["--model", f"{w.root}/model.py:batch_one"],
         r"the model runs on a batch of 1 but not of 2: .*\(its forward fixes the batch size, e\.g\. x\.view\(1, -1\)"),
    Case("model-forward-without-autograd", lambda w: user(w) + ["--model", f"{w.root}/model.py:no_grad_forward"],
         r"the model's forward builds no autograd graph \(it runs under torch\.no_grad or torch\.inference_mode"),
    # the input shape
    Case("input-shape-does-not-fit", lambda w: user(w) + ["--input-shape", "1,5,8,8"], r"input shape \(1, 5, 8, 8\) does not fit the model"),
    Case("input-shape-not-numbers", lambda w: user(w) + ["--input-shape", "1,three,8,8"], r"comma-separated integers"),
    Case("input-shape-zero", lambda w: user(w) + ["--input-shape", "1,0,8,8"], r"positive sizes"),
    Case("input-shape-disagrees-with-data", lambda w: user(w, "--data", w.root / "good.npz") + ["--input-shape", "1,3,9,9"], r"does not match the data's samples"),
    Case("data-channels-last", lambda w: user(w, "--data", w.root / "channels_last.npz"),
         r"input shape \(1, 8, 8, 3\) does not fit the model: .*\(this shape is channels-last; the model runs on "
         r"1,3,8,8, channels first: transpose the inputs to \(N, C, H, W\), x\.transpose\(0, 3, 1, 2\)\)"),
    Case("input-shape-channels-first-data-channels-last",
         lambda w: user(w, "--data", w.root / "channels_last.npz") + ["--input-shape", "1,3,8,8"],
         r"does not match the data's samples \(8, 8, 3\): they are channels-last; save the data's x as "
         r"x\.transpose\(0, 3, 1, 2\)"),
    # the target
    Case("target-1", lambda w: ["--target-speedup", "1"], r"greater than 1"),
    Case("target-below-1", lambda w: ["--target-speedup", "0.5x"], r"greater than 1"),
    Case("target-not-a-number", lambda w: ["--target-speedup", "fast"], r"'fast' is not a number"),
    Case("target-nan", lambda w: ["--target-speedup", "nan"], r"not a number"),
    Case("seed-negative", lambda w: ["--seed", "-1"], r"seed must be between 0 and 2\^32 - 1 \(got -1\)"),
    Case("target-unreachable", lambda w: [w.root / "search.toml", "--target-speedup", "1000", "--finetune-epochs", "0"],
         r"target 1000x is out of reach: .*measures \d+\.\d\dx; \d+% of the dense model's time is in layers no "
         r"channel group reaches", starts_run=True),
    Case("target-unreachable-in-a-recurrent-layer",
         lambda w: user(w) + ["--model", f"{w.root}/model.py:recurrent_with_hidden", "--finetune-epochs", "0"],
         r"target 2x is out of reach: .*; \d+% of the dense model's time is in layers no channel group reaches: "
         r"lstm \(LSTM\) \d+%", starts_run=True),
    # the weights
    Case("weights-of-another-model", lambda w: user(w, "--weights", w.root / "other_model.pt"), r"weights do not match the model: .*size mismatch"),
    Case("weights-corrupted", lambda w: user(w, "--weights", w.root / "corrupt.pt"), r"corrupt\.pt: cannot read weights"),
    Case("weights-corrupted-pickle-header", lambda w: user(w, "--weights", w.root / "corrupt_pickle_header.pt"),
         r"corrupt_pickle_header\.pt: cannot read weights"),
    Case("weights-truncated", lambda w: user(w, "--weights", w.root / "truncated.pt"), r"truncated\.pt: cannot read weights"),
    Case("weights-safetensors-corrupted", lambda w: user(w, "--weights", w.root / "corrupt.safetensors"), r"cannot read weights"),
    Case("weights-not-a-state-dict", lambda w: user(w, "--weights", w.root / "not_a_state_dict.pt"), r"expected a state_dict"),
    Case("weights-torchscript", lambda w: user(w, "--weights", w.root / "scripted.pt"),
         r"scripted\.pt: a TorchScript archive, not a state_dict"),
    Case("weights-a-python-file", lambda w: user(w, "--weights", w.root / "evil.py"), r"evil\.py: cannot read weights"),
    # the data
    Case("npz-missing-arrays", lambda w: user(w, "--data", w.root / "only_x.npz"), r"needs arrays x_train, x_test \(with y_train, y_test for labels\), or x \(and y\); found \['x_train'\]"),
    Case("npz-lengths-differ", lambda w: user(w, "--data", w.root / "lengths.npz"), r"x has 20 rows but y has 19"),
    Case("npz-nan", lambda w: user(w, "--data", w.root / "nan.npz"), r"NaN or Inf"),
    Case("npz-inf", lambda w: user(w, "--data", w.root / "inf.npz"), r"NaN or Inf"),
    Case("npz-labels-out-of-range", lambda w: user(w, "--data", w.root / "labels_too_big.npz"), r"labels go up to 12 but the model has 10 outputs"),
    Case("npz-negative-labels", lambda w: user(w, "--data", w.root / "negative_labels.npz"), r"negative labels"),
    Case("npz-corrupted", lambda w: user(w, "--data", w.root / "corrupt.npz"), r"not a readable npz"),
    Case("npz-truncated", lambda w: user(w, "--data", w.root / "truncated.npz"), r"truncated\.npz: not a readable npz"),
    Case("npz-pickled-object", lambda w: user(w, "--data", w.root / "pickled.npz"), r"not a readable npz .*allow_pickle=False"),
    Case("data-python-file-not-named-as-factory", lambda w: user(w, "--data", w.root / "evil.py"), r"expected a built-in dataset"),
    # the output directory
    Case("out-is-a-file", lambda w: ["--out", w.root / "a_file"], r"exists and is not a directory"),
    Case("out-not-writable", lambda w: ["--out", w.unwritable()], r"is not writable"),
    # the recipe
    Case("recipe-unknown-key", lambda w: [w.root / "unknown_key.toml"], r"unknown recipe key 'prune\.polcy'; valid keys: .*policy"),
    Case("recipe-unknown-top-level-key", lambda w: [w.root / "unknown_top_key.toml"], r"unknown recipe key 'targt_speedup'"),
    Case("recipe-wrong-type", lambda w: [w.root / "wrong_type.toml"], r"recipe key 'seed': expected int, got 'zero'"),
    Case("recipe-section-not-a-table", lambda w: [w.root / "section_not_table.toml"], r"recipe section 'prune' must be a table"),
    Case("recipe-value-out-of-range", lambda w: [w.root / "bad_value.toml"], r"profile\.rounds must be at least 3"),
    Case("recipe-target-not-a-number", lambda w: [w.root / "bad_target.toml"], r"'quick' is not a number"),
    Case("recipe-not-toml", lambda w: [w.root / "not_toml.toml"], r"is not valid TOML"),
    Case("recipe-missing", lambda w: [w.root / "missing.toml"], r"recipe not found"),
    # a disk that fills while writing: a full tmpfs, and ENOSPC injected where mounting is not allowed
    Case("disk-full", lambda w: user(w) + ["--out", w.full_disk], r"could not write .*manifest\.json: No space left on device",
         needs_mount=True),
    Case("disk-full-injected", lambda w: user(w), r"could not write .*manifest\.json: No space left on device",
         inject_enospc=True),
    # options
    Case("threads-not-a-number", lambda w: ["--threads", "abc"], r"--threads"),
    Case("device-unknown", lambda w: ["--device", "tpu"], r"device must be cpu or cuda"),
]
CASES_BY_ID = {case.id: case for case in CASES}
assert len(CASES_BY_ID) == len(CASES)

OUT_FILES = {"keep.txt": "the user's own file\n", "manifest.json": '{"from": "an earlier run"}\n'}


def _env(cache: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DEPLOYCOMPRESS_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}


def _run_case(case: Case, w: Workspace, cache: Path) -> dict:
    args = [str(a) for a in case.args(w)]
    out = None
    if "--out" not in args:
        out = w.root / "outs" / case.id  # an existing run directory with files of the user's in it
        out.mkdir(parents=True)
        for name, text in OUT_FILES.items():
            (out / name).write_text(text)
        args += ["--out", str(out)]
    command = ([sys.executable, "-c", INJECT_ENOSPC, "run"] if case.inject_enospc else [cli_executable(), "run"])
    result = subprocess.run(command + args, capture_output=True, timeout=300, env=_env(cache), cwd=w.root)
    # Decoded by hand: text=True would turn a progress bar's carriage returns into newlines.
    result.stdout, result.stderr = result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
    return {"result": result, "out": out}


def _skip_reason(case: Case, w: Workspace) -> str | None:
    if case.needs_mount and w.full_disk is None:
        return "mounting a tmpfs needs root: disk-full-injected covers the same path"
    if case.inject_enospc and w.full_disk is not None:
        return "a real full tmpfs was mounted: disk-full covers the same path"
    return None


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    w = Workspace(tmp_path_factory.mktemp("bad_input") / "user")
    yield w
    w.close()


@pytest.fixture(scope="module")
def results(request, workspace, tmp_path_factory) -> dict:
    """Run the selected cases concurrently, once; each test then checks its own."""
    cache = tmp_path_factory.mktemp("bad_input_cache")
    zoo = cache_dir() / "zoo"
    if zoo.is_dir():  # the default model's trained weights: no retraining for the unreachable target
        shutil.copytree(zoo, cache / "zoo")
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec") and "case" in item.callspec.params]
    runnable = [CASES_BY_ID[c] for c in dict.fromkeys(selected) if _skip_reason(CASES_BY_ID[c], workspace) is None]
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {case.id: pool.submit(_run_case, case, workspace, cache) for case in runnable}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", [c.id for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case, results, workspace):
    spec = CASES_BY_ID[case]
    reason = _skip_reason(spec, workspace)
    if reason:
        pytest.skip(reason)
    run = results[case]
    result = run["result"]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = visible_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert result.returncode == 2, result.stderr
    assert lines[0].startswith("deploycompress: error: "), lines[0]
    assert re.search(spec.expected, lines[0]), lines[0]
    # Nothing the user had is lost: their inputs, and their run directory's files.
    assert {p: _digest(p) for p in workspace.inputs} == workspace.inputs
    assert not (workspace.root / MARKER).exists()  # no file or pickle was executed that was not named
    if run["out"] is not None:
        kept = {name: (run["out"] / name).read_text() for name in OUT_FILES}
        if spec.starts_run:
            kept.pop("manifest.json")  # a run that began writes its own manifest
        assert kept == {name: OUT_FILES[name] for name in kept}
        assert not [p.name for p in run["out"].iterdir() if p.name.endswith(".tmp")]
    if case == "out-is-a-file":
        assert (workspace.root / "a_file").read_text() == "keep me\n"
    if case == "disk-full":
        assert (workspace.full_disk / "keep.txt").read_text() == "the user's own file\n"
        assert json.loads((workspace.full_disk / "manifest.json").read_text()) == {"from": "an earlier run"}
        assert (workspace.full_disk / "filler.bin").stat().st_size > 0
        assert sorted(p.name for p in workspace.full_disk.iterdir()) == ["filler.bin", "keep.txt", "manifest.json"]


def test_debug_shows_the_traceback(tmp_path):
    result = subprocess.run([cli_executable(), "run", "--target-speedup", "fast", "--out", str(tmp_path / "o"),
                             "--debug"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "is not a number" in result.stderr
