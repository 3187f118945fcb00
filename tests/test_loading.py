"""--model and --weights: factories from files and packages, weights that load and weights that must not."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from deploycompress.errors import UserError
from deploycompress.models.loading import build_user_model, import_factory, load_weights

MODEL_FILE = """
from torch import nn

def make(num_classes=10):
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, num_classes))

def make_fixed():
    return nn.Linear(4, 3)

def not_a_model():
    return "hello"

def scripted():
    import torch
    return torch.jit.script(nn.Linear(4, 3))

def compiled():
    import torch
    return torch.compile(nn.Linear(4, 3))

def broken():
    raise ValueError("bad config\\nsecond line")

VALUE = 3
"""


@pytest.fixture
def model_file(tmp_path) -> Path:
    path = tmp_path / "user_model.py"
    path.write_text(MODEL_FILE)
    return path


def test_file_factory_gets_num_classes_only_when_it_takes_it(model_file):
    assert build_user_model(f"{model_file}:make", 5)[-1].out_features == 5
    assert build_user_model(f"{model_file}:make", None)[-1].out_features == 10
    assert build_user_model(f"{model_file}:make_fixed", 5).out_features == 3


def test_a_compiled_module_is_unwrapped_and_a_scripted_one_refused(model_file):
    """torch.compile's wrapper would name every group "_orig_mod..." and run the compiled graph; a
    TorchScript module takes no forward hooks (a traceback, before)."""
    model = build_user_model(f"{model_file}:compiled", None)
    assert type(model) is nn.Linear
    with pytest.raises(UserError, match="returned a TorchScript module .*return the nn.Module before scripting"):
        build_user_model(f"{model_file}:scripted", None)


def test_factory_file_can_import_its_neighbours(tmp_path):
    (tmp_path / "blocks.py").write_text("from torch import nn\nWIDTH = 6\n")
    (tmp_path / "net.py").write_text("import blocks\nfrom torch import nn\n"
                                     "def make():\n    return nn.Linear(2, blocks.WIDTH)\n")
    assert build_user_model(f"{tmp_path / 'net.py'}:make", None).out_features == 6


def test_package_module_factory_from_the_working_directory(tmp_path, monkeypatch):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text("from torch import nn\ndef build(num_classes=2):\n"
                                      "    return nn.Linear(3, num_classes)\n")
    monkeypatch.chdir(tmp_path)
    assert build_user_model("mypkg.nets:build", 7).out_features == 7


@pytest.mark.parametrize("suffix,message", [
    (":missing", "has no callable named 'missing'"),
    (":VALUE", "has no callable named 'VALUE'"),
    (":not_a_model", "returned str, not a torch.nn.Module"),
    (":broken", "raised ValueError: bad config"),
])
def test_factory_errors_are_one_line(model_file, suffix, message):
    with pytest.raises(UserError, match=message) as info:
        build_user_model(f"{model_file}{suffix}", None)
    assert "\n" not in str(info.value)


def test_import_errors_are_one_line(tmp_path):
    (tmp_path / "crashes.py").write_text("raise RuntimeError('no GPU here\\nmore')\n")
    with pytest.raises(UserError, match="raised RuntimeError: no GPU here while loading") as info:
        import_factory(f"{tmp_path / 'crashes.py'}:make")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="file not found"):
        import_factory(f"{tmp_path / 'absent.py'}:make")
    with pytest.raises(UserError, match="cannot import 'no_such_package_xyz.models'"):
        import_factory("no_such_package_xyz.models:make")
    with pytest.raises(UserError, match="expected file.py:factory"):
        import_factory(f"{tmp_path / 'crashes.py'}:")


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}},
    lambda sd: {f"module.{k}": v for k, v in sd.items()},  # saved from DataParallel
    lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},  # saved from a torch.compile'd module
], ids=["state_dict", "lightning", "tutorial", "dataparallel", "compiled"])
def test_state_dict_layouts_load(tmp_path, wrap):
    source, target = small_model(), small_model()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    torch.save(wrap(source.state_dict()), tmp_path / "w.pt")
    load_weights(target, tmp_path / "w.pt")
    assert same_weights(source, target)


@pytest.mark.parametrize("wrap, prefix, others", [
    # a LightningModule that holds the network as self.model, and a loss with class weights
    (lambda sd: {"state_dict": {**{f"model.{k}": v for k, v in sd.items()}, "criterion.weight": torch.ones(2)},
                 "epoch": 3}, "model.", "; 1 other entry not the model's"),
    (lambda sd: {"state_dict": {f"net.backbone.{k}": v for k, v in sd.items()}}, "net.backbone.", ""),
    (lambda sd: {f"model.module.{k}": v for k, v in sd.items()}, "model.", ""),  # DataParallel inside it
], ids=["lightning-model-attribute", "two-levels", "dataparallel-inside"])
def test_the_model_under_a_training_wrappers_attribute_loads_and_says_so(tmp_path, wrap, prefix, others):
    """A Lightning checkpoint was refused with 'Missing key(s) in state_dict: "0.weight", ...'."""
    source, target = small_model(), small_model()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    torch.save(wrap(source.state_dict()), tmp_path / "w.ckpt")
    note = load_weights(target, tmp_path / "w.ckpt")
    assert same_weights(source, target)
    assert note == f"weights: the model's entries in w.ckpt are those under '{prefix}'{others}"
    assert load_weights(small_model(), _saved(tmp_path, source.state_dict())) is None  # a plain one says nothing


def _saved(tmp_path, state) -> Path:
    torch.save(state, tmp_path / "plain.pt")
    return tmp_path / "plain.pt"


def test_a_checkpoint_with_the_model_under_two_prefixes_is_refused(tmp_path):
    """A distillation checkpoint with a student and a teacher of the same architecture: which one is
    meant is the user's to say."""
    sd = small_model().state_dict()
    teacher = {f"teacher.{k}": v.clone() for k, v in sd.items()}
    torch.save({"state_dict": {**{f"student.{k}": v for k, v in sd.items()}, **teacher}}, tmp_path / "kd.ckpt")
    with pytest.raises(UserError, match=r"under more than one prefix \('student\.', 'teacher\.'\)") as info:
        load_weights(small_model(), tmp_path / "kd.ckpt")
    assert "\n" not in str(info.value)


def test_safetensors_loads(tmp_path):
    source, target = small_model(), small_model()
    with torch.no_grad():
        source[0].weight.mul_(2)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    load_weights(target, tmp_path / "w.safetensors")
    assert same_weights(source, target)


def test_mismatched_weights_say_which(tmp_path):
    state = small_model().state_dict()
    state["0.weight"] = torch.zeros(5, 3, 3, 3)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(UserError, match=r"do not match the model: size mismatch for 0\.weight") as info:
        load_weights(small_model(), tmp_path / "w.pt")
    assert "\n" not in str(info.value)


class RunsOnLoad:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_objects_are_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"0.weight": RunsOnLoad(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refused to load: the file contains pickled code or objects"):
        load_weights(small_model(), tmp_path / "evil.pt")
    assert not marker.exists()


def test_whole_pickled_model_is_refused(tmp_path):
    torch.save(small_model(), tmp_path / "model.pt")  # the model object, not its state_dict
    with pytest.raises(UserError, match="save a plain state_dict"):
        load_weights(small_model(), tmp_path / "model.pt")


@pytest.mark.parametrize("content,message", [
    (b"not a checkpoint at all", r"cannot read weights \(Unsupported operand"),
    (b"PK\x03\x04truncated", "cannot read weights"),
    (None, "weights file not found"),
])
def test_unreadable_weights(tmp_path, content, message):
    path = tmp_path / "w.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_weights(small_model(), path)


def test_non_state_dict_is_refused(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "w.pt")
    with pytest.raises(UserError, match="expected a state_dict"):
        load_weights(small_model(), tmp_path / "w.pt")


def test_factory_file_with_dataclasses(tmp_path):
    """A factory file may define its classes at top level and use dataclasses (module registered)."""
    (tmp_path / "dc.py").write_text(textwrap.dedent("""
        from dataclasses import dataclass
        from torch import nn

        @dataclass
        class Settings:
            width: int = 5

        def make():
            return nn.Linear(2, Settings().width)
    """))
    assert build_user_model(f"{tmp_path / 'dc.py'}:make", None).out_features == 5
