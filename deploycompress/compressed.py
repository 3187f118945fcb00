"""The compressed PyTorch model of a finished run, for a user's own code: the ONNX model is what ships,
and this is the same network as an nn.Module (to finetune further, or to export for another runtime).

A run leaves plan.json (the channels each group kept) and compressed.pt (the shrunk model's weights).
Pickling the pruned module itself would tie the file to deploycompress's classes and to pickle; instead
the plan is replayed on a fresh instance of the user's own architecture, and the weights loaded into it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .errors import UserError, first_line
from .graph import apply_plan
from .models.loading import bake_reparametrizations


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: not the directory of a finished run") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({first_line(exc)})") from None


def load_compressed(run_dir: str | Path, model: nn.Module) -> nn.Module:
    """`model`, a fresh instance of the dense model's architecture (its weights do not matter), with the
    run's channels removed and the compressed weights loaded; in place, returned in eval mode.

        model = load_compressed("runs/mine", MyNet())
    """
    run_dir = Path(run_dir)
    report = _read_json(run_dir / "report.json")
    plan = _read_json(run_dir / "plan.json").get("plan")
    weights = run_dir / "compressed.pt"
    if not isinstance(plan, dict) or not weights.is_file():
        raise UserError(f"{run_dir} holds no plan.json plan and compressed.pt: the run did not reach its shrink stage")
    spec = report.get("input") or {}
    example = torch.zeros(spec.get("shape", [1]), dtype=getattr(torch, spec.get("dtype", "float32")))
    bake_reparametrizations(model)  # as the run did before pruning
    try:
        apply_plan(model, example, plan, (report.get("config") or {}).get("ignore"))
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (KeyError, RuntimeError) as exc:
        raise UserError(f"the run in {run_dir} does not fit this model ({type(exc).__name__}: "
                        f"{first_line(exc)}): pass a fresh instance of the architecture it "
                        "compressed") from None
    return model.eval()
