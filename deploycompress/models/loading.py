"""Resolve what the user asked for into a model, its weights and its data.

--model accepts a zoo name, `path/to/file.py:factory` or `package.module:factory`. A factory file is
executed because the user named it: that is the only user code we run. Weights are loaded without
running pickled code (`torch.load(weights_only=True)`) or from a .safetensors file.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .zoo import model_registry


def cache_dir() -> Path:
    return Path(os.environ.get("DEPLOYCOMPRESS_CACHE", Path.home() / ".cache" / "deploycompress"))


def _import_factory(spec: str):
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise UserError(f"--model {spec!r}: expected a zoo name, file.py:factory or package.module:factory")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise UserError(f"model file not found: {path}")
        module_name = "deploycompress_user_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - user code may raise anything
            raise UserError(f"{path} raised {type(exc).__name__} while loading: {exc}") from None
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"cannot import {target!r}: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise UserError(f"{target} has no callable named {attr!r}")
    return factory


def build_user_model(spec: str, num_classes: int | None) -> nn.Module:
    factory = _import_factory(spec)
    kwargs = {}
    try:
        if num_classes is not None and "num_classes" in inspect.signature(factory).parameters:
            kwargs["num_classes"] = num_classes
    except (TypeError, ValueError):
        pass
    try:
        model = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"model factory {spec} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model factory {spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: nn.Module, path: str | Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling refusals, truncation, corruption
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise UserError(f"{path}: refused to load: the file contains pickled code or objects, which are never "
                            "executed; save a plain state_dict (torch.save(model.state_dict())) or .safetensors") from None
        raise UserError(f"{path}: cannot read weights ({text[:200]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a state_dict (names -> tensors)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = [line.strip() for line in str(exc).splitlines() if line.strip()][:2]
        raise UserError(f"{path}: weights do not match the model: {' '.join(first)[:300]}") from None


def zoo_entry(spec: str):
    return model_registry.get(spec) if spec in model_registry else None


def is_zoo_name(spec: str) -> bool:
    return ":" not in spec
