"""`deploycompress run`: the whole pipeline to a measured speedup target."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import app

def _overrides(**values) -> dict:
    """Nested recipe overrides from the options the user actually gave (None means not given)."""
    result: dict = {}
    for dotted, value in values.items():
        if value is None:
            continue
        parts = dotted.split("__")
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return result


@app.command()
def run(
    recipe: Optional[Path] = typer.Argument(None, help="A recipe (pipelines/*.toml); options below override it."),
    target_speedup: Optional[str] = typer.Option(None, "--target-speedup", "-t", help="Measured speedup to reach: 2x, 2 or 2.0."),
    model: Optional[str] = typer.Option(None, help="Zoo name, path/to/file.py:factory or package.module:factory."),
    weights: Optional[str] = typer.Option(None, help="state_dict (.pt/.pth, loaded with weights_only) or .safetensors."),
    data: Optional[str] = typer.Option(None, help="Built-in dataset name, an .npz file, file.py:factory returning (train, test) datasets, or 'none' (data-free)."),
    input_shape: Optional[str] = typer.Option(None, help="Input shape with batch, e.g. 1,3,224,224."),
    out: Optional[str] = typer.Option(None, help="Run directory (default runs/MODEL-TARGETx)."),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime intra-op threads for every measurement (default 1)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size for latency measurement (default 1)."),
    finetune_epochs: Optional[int] = typer.Option(None, help="Finetune epochs (default 6 with labels, 0 data-free)."),
    policy: Optional[str] = typer.Option(None, help="Allocation policy: spdy, uniform, global, ..."),
    importance: Optional[str] = typer.Option(None, help="Channel importance: l2, l1, taylor, bn_scale, fpgm, ispasp, dcp, "
                                             "synaptic_strength, dsm, ..."),
    regularizer: Optional[str] = typer.Option(None, help="Penalty while finetuning, also run briefly before scoring: "
                                              "synaptic_strength or dsm."),
    ignore: Optional[str] = typer.Option(None, help="Regex of module names never pruned (heads are always kept)."),
    device: Optional[str] = typer.Option(None, help="Latency device: cpu or cuda."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default 0)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in the same --out."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Prune -> finetune -> shrink -> export -> profile, to a measured speedup target."""
    from ..recipe import build_config  # no torch: a bad recipe or option fails in well under a second

    overrides = _overrides(target_speedup=target_speedup, model=model, weights=weights, data=data,
                           input_shape=input_shape, out=out, seed=seed, ignore=ignore, device=device,
                           profile__threads=threads, profile__batch_size=batch_size,
                           finetune__epochs=finetune_epochs, prune__policy=policy, prune__importance=importance,
                           finetune__regularizer=regularizer)
    config = build_config(recipe, overrides)
    from ..pipeline import default_run_dir, run_pipeline
    from ..report import summary_lines

    if config.out is None:
        config.out = str(default_run_dir(config))
    _check_choices(config)
    report = run_pipeline(config, resume=resume)
    print()
    for line in summary_lines(report):
        print(line)
    print(f"artifacts in {config.out}: dense.onnx, model.onnx, report.json, report.md")


def _check_choices(config) -> None:
    """Reject unknown policy/criterion names before any work starts."""
    from ..allocation import policies
    from ..importance import criteria

    policies.get(config.prune.policy)
    criteria.get(config.prune.importance)
    if config.finetune.regularizer:
        from ..regularizers import regularizers

        regularizers.get(config.finetune.regularizer)
