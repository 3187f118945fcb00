"""Resolve what the user asked for into a model, its weights and its data.

--model accepts a zoo name, `path/to/file.py:factory` or `package.module:factory` (and --data a
`file.py:factory` too). A factory file is executed because the user named it: that is the only user
code we run. Weights are loaded without running pickled code (`torch.load(weights_only=True)`) or
from a .safetensors file.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .zoo import model_registry

# Checkpoint layouts people save besides a bare state_dict: {"state_dict": ...} (Lightning and
# many scripts), {"model_state_dict": ...} (the PyTorch tutorial), {"model": ...}.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


def cache_dir() -> Path:
    return Path(os.environ.get("DEPLOYCOMPRESS_CACHE", Path.home() / ".cache" / "deploycompress"))


def _first_line(exc: BaseException, limit: int = 200) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    first = lines[0] if len(lines[0]) <= limit else lines[0].split(". ")[0][:limit]
    return f"{type(exc).__name__}: {first}"


@contextlib.contextmanager
def _importable_from(directory: Path):
    """Put `directory` first on sys.path while user code runs, as `python file.py` would, so a
    factory file can import its neighbours."""
    entry = str(directory)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def _split_spec(spec: str, option: str) -> tuple[str, str]:
    target, _, attr = spec.rpartition(":")
    if not target or not attr or not attr.isidentifier():
        raise UserError(f"{option} {spec!r}: expected file.py:factory or package.module:factory")
    return target, attr


def _user_code_dir(target: str) -> Path:
    # A file's own folder; for a dotted module the working directory, as `python -m` (and uvicorn) do.
    return Path(target).resolve().parent if target.endswith(".py") else Path.cwd()


def check_spec(spec: str, option: str = "--model") -> tuple[str, str]:
    """(target, name) of a `file.py:name` or `package.module:name` spec once its form and, for a file,
    the file's existence are checked, without running the user's code: a run reports a mistyped path
    before asking for anything else."""
    target, attr = _split_spec(spec, option)
    if target.endswith(".py") and not Path(target).is_file():
        raise UserError(f"{option}: file not found: {Path(target)}")
    return target, attr


def import_factory(spec: str, option: str = "--model"):
    """The callable named by `file.py:name` or `package.module:name`; UserError with one line if not."""
    target, attr = check_spec(spec, option)
    with _importable_from(_user_code_dir(target)):
        if target.endswith(".py"):
            path = Path(target)
            module_name = "deploycompress_user_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
            try:
                module_spec.loader.exec_module(module)
            except BaseException as exc:  # noqa: BLE001 - user code may raise anything, even SystemExit
                sys.modules.pop(module_name, None)
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise UserError(f"{path} raised {_first_line(exc)} while loading") from None
        else:
            try:
                module = importlib.import_module(target)
            except BaseException as exc:  # noqa: BLE001
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise UserError(f"{option}: cannot import {target!r}: {_first_line(exc)}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise UserError(f"{option}: {target} has no callable named {attr!r}")
    return factory


def call_factory(spec: str, factory, option: str = "--model", **kwargs):
    """Call a user factory, passing only the keyword arguments its signature accepts."""
    try:
        parameters = inspect.signature(factory).parameters
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        kwargs = {k: v for k, v in kwargs.items() if v is not None and (accepts_any or k in parameters)}
    except (TypeError, ValueError):
        kwargs = {}
    target, _ = _split_spec(spec, option)
    with _importable_from(_user_code_dir(target)):
        try:
            return factory(**kwargs)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"{option}: factory {spec} raised {_first_line(exc)}") from None


def build_user_model(spec: str, num_classes: int | None) -> nn.Module:
    model = call_factory(spec, import_factory(spec), num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise UserError(f"--model: factory {spec} returned {type(model).__name__}, not a torch.nn.Module")
    if isinstance(model, torch.jit.ScriptModule):
        # forward hooks, DepGraph's autograd trace and the pruners all need the Python module
        raise UserError(f"--model: factory {spec} returned a TorchScript module (torch.jit.script/trace); "
                        "return the nn.Module before scripting it: deploycompress prunes Python modules")
    # torch.compile wraps the module (its parameters under `_orig_mod.`): every group would be named
    # after the wrapper and the compiled graph is what forward runs. The module it wraps is the model.
    original = getattr(model, "_orig_mod", None)
    return original if isinstance(original, nn.Module) else model


def load_weights(model: nn.Module, path: str | Path) -> str | None:
    """Load a state_dict (or a checkpoint holding one) into `model`. Returns a note when only part of
    the file was the model's (a training wrapper's checkpoint), else None."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    # Why the warnings are held back: a corrupt file can make torch warn before it fails (random bytes
    # that start with 0x80 read as "pickle protocol N"), and the user should get the one error line.
    # A file that loads gets its warnings shown after all.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - unpickling refusals, truncation, corruption
            text = str(exc)
            refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            if refused:
                raise UserError(f"{path}: refused to load: the file contains pickled code or objects "
                                f"({refused.group(1)}), which are never executed; save a plain state_dict "
                                "(torch.save(model.state_dict())) or .safetensors") from None
            if "TorchScript archive" in text:
                raise UserError(f"{path}: a TorchScript archive, not a state_dict: save the weights of the "
                                "nn.Module with torch.save(model.state_dict(), ...)") from None
            detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)  # torch's own first line is generic
            raise UserError(f"{path}: cannot read weights "
                            f"({detail.group(1)[:200] if detail else _first_line(exc)})") from None
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if isinstance(state, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a state_dict (parameter names -> tensors)")
    state, note = _wrapped_model_entries(state, model, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = " ".join(lines[1:3] or lines[:1])  # lines[0] is "Error(s) in loading state_dict for X:"
        raise UserError(f"{path}: weights do not match the model: {detail[:300]}") from None
    return note


def _strip_wrapper_prefix(state: dict, own: set[str]) -> dict:
    """Weights saved from nn.DataParallel/DistributedDataParallel carry a "module." prefix, and from a
    torch.compile'd module "_orig_mod." (`own`: the model's state_dict keys)."""
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own):
            return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _wrapped_model_entries(state: dict, model: nn.Module, path: Path) -> tuple[dict, str | None]:
    """The model's entries of a state_dict, and a note when they were found under a training wrapper's
    attribute: a PyTorch Lightning checkpoint holds the LightningModule's state_dict, the network under
    the attribute it was assigned to ("model.f.0.0.weight"), often beside a loss's or a teacher's
    entries, and was refused with 'Missing key(s) in state_dict: "f.0.0.weight", ...'. Only a prefix
    under which the entries are exactly the model's is taken (one or two attribute levels deep)."""
    own = set(model.state_dict().keys())
    state = _strip_wrapper_prefix(state, own)
    if set(state) == own:
        return state, None
    prefixes = {".".join(k.split(".")[:depth]) for k in state for depth in (1, 2) if k.count(".") >= depth}
    found = {}
    for prefix in sorted(prefixes):
        inner = _strip_wrapper_prefix({k[len(prefix) + 1:]: v for k, v in state.items()
                                       if k.startswith(prefix + ".")}, own)
        if set(inner) != own:
            continue
        if not any(all(inner[k] is other[k] for k in own) for other in found.values()):  # "model.", "model.module."
            found[prefix] = inner
    if len(found) > 1:  # a distillation checkpoint holding a student and a teacher of one architecture
        raise UserError(f"{path}: the model's weights are there under more than one prefix "
                        f"({', '.join(repr(p + '.') for p in found)}): save the one you mean as a plain state_dict")
    for prefix, inner in found.items():
        others = len(state) - len(inner)
        rest = f"; {others} other entr{'y' if others == 1 else 'ies'} not the model's" if others else ""
        return inner, f"weights: the model's entries in {path.name} are those under '{prefix}.'{rest}"
    return state, None


def zoo_entry(spec: str):
    return model_registry.get(spec) if spec in model_registry else None


def is_zoo_name(spec: str) -> bool:
    return ":" not in spec


_SAVED_MODEL_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".pkl", ".jit", ".ptl")


def check_not_a_file(spec: str) -> None:
    """One line saying what --model wants, where a user passed a file instead of a zoo name or a
    factory: an ONNX file, a saved model or weights, or a .py file without the factory's name (each was
    'unknown model ...; choose from' the zoo names)."""
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        raise UserError(f"--model {spec} is an ONNX file: deploycompress prunes the PyTorch model it was exported "
                        "from (--model path/to/file.py:factory, --weights its state_dict); `deploycompress profile "
                        f"{spec}` times an ONNX file")
    if suffix in _SAVED_MODEL_SUFFIXES:
        raise UserError(f"--model {spec} is a saved file, not code that builds a model: pass the function that "
                        "builds it as --model path/to/file.py:factory and the weights with --weights (a "
                        "state_dict; a whole pickled model is never unpickled, and TorchScript cannot be pruned)")
    if suffix == ".py":
        raise UserError(f"--model {spec}: name the function in it that returns the model, e.g. {spec}:make_model")


def bake_reparametrizations(model: nn.Module) -> list[str]:
    """Replace every weight reparametrization (weight_norm, spectral_norm, orthogonal, ...) with the plain
    weight it computes, in place; one "module (kind)" line per module baked.

    Torch-Pruning cannot remove channels from a parametrized weight (it fails with "attribute 'weight'
    already exists"), so every group through one was left dense. The ONNX export bakes the weight anyway,
    and in eval mode the baked model computes exactly what the parametrized one did; what is lost is only
    the reparametrization during the finetune, which trains the plain weight instead."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    baked = []
    with warnings.catch_warnings():  # the hook-based weight_norm's removal warns that it is deprecated
        warnings.simplefilter("ignore")
        for name, module in model.named_modules():
            kinds = []
            if parametrize.is_parametrized(module):
                for tensor in list(module.parametrizations.keys()):
                    kinds += [type(p).__name__.lstrip("_") for p in module.parametrizations[tensor]]
                    parametrize.remove_parametrizations(module, tensor, leave_parametrized=True)
            for hook in list(module._forward_pre_hooks.values()):  # torch.nn.utils.weight_norm / spectral_norm
                if isinstance(hook, WeightNorm):
                    torch.nn.utils.remove_weight_norm(module, hook.name)
                    kinds.append("weight_norm")
                elif isinstance(hook, SpectralNorm):
                    torch.nn.utils.remove_spectral_norm(module, hook.name)
                    _drop_spectral_norm_load_hook(module)
                    kinds.append("spectral_norm")
            if kinds:
                baked.append(f"{name or 'the model'} ({', '.join(kinds)})")
    return baked


def _drop_spectral_norm_load_hook(module: nn.Module) -> None:
    """remove_spectral_norm leaves its load_state_dict pre-hook behind on this torch (it looks for the
    hook by type, and the hook is stored wrapped), and that hook then demands `weight_orig` of every
    state_dict the baked module loads."""
    from torch.nn.utils.spectral_norm import SpectralNormLoadStateDictPreHook

    for key, hook in list(module._load_state_dict_pre_hooks.items()):
        if isinstance(getattr(hook, "hook", hook), SpectralNormLoadStateDictPreHook):
            del module._load_state_dict_pre_hooks[key]
