"""`deploycompress tiles`: TETRIS tile pruning, reordered vs not (storage, not CPU speed)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import app


@app.command("tiles")
def tiles(
    model: str = typer.Option("resnet_digits", help="Zoo name, path/to/file.py:factory or package.module:factory."),
    weights: Optional[str] = typer.Option(None, help="state_dict (.pt/.pth, loaded with weights_only) or .safetensors."),
    data: Optional[str] = typer.Option(None, help="Built-in dataset name, an .npz file, or 'none' (data-free)."),
    input_shape: Optional[str] = typer.Option(None, help="Input shape with batch, e.g. 1,3,224,224."),
    block: str = typer.Option("8,8", help="Tile size: output channels, input channels (a conv's window stays whole)."),
    prune_rate: float = typer.Option(0.5, help="Share of each layer's tiles to prune, between 0 and 1."),
    ignore: Optional[str] = typer.Option(None, help="Regex of layer names left dense."),
    out: Optional[str] = typer.Option(None, help="Output directory for tiles.json and tiles.md (default runs/MODEL-tiles)."),
    seed: int = typer.Option(0, help="Random seed."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Prune whole weight tiles after TETRIS reordering; compare with tiles in the original order."""
    from ..context import build_context
    from ..fileio import ensure_writable_dir
    from ..recipe import RunConfig
    from ..tiles import parse_block, tiles_report, write_tiles_report

    size = parse_block(block)
    config = RunConfig(model=model, weights=weights, data=data, input_shape=input_shape, seed=seed, out=out)
    run_dir = ensure_writable_dir(out or Path("runs") / f"{model.replace('/', '_').replace(':', '_')}-tiles")
    ctx = build_context(config, run_dir)
    report = tiles_report(ctx.dense, ctx.data.x_test, ctx.data.y_test, size, prune_rate, ignore,
                          calibration=ctx.calibration)
    write_tiles_report(run_dir, report, model)
    t, ev = report["totals"], report["evaluation"]
    print(f"tiles {block}, {prune_rate:.0%} pruned: |W| mass pruned {t['pruned_mass_fraction_reordered']:.2%} "
          f"with TETRIS vs {t['pruned_mass_fraction_plain']:.2%} without")
    if ev["dense"]["accuracy"] is not None:
        print(f"accuracy: dense {ev['dense']['accuracy']:.2f}%, TETRIS {ev['reordered']['accuracy']:.2f}%, "
              f"no reordering {ev['plain']['accuracy']:.2f}%")
    print(report["note"])
    print(f"written: {run_dir / 'tiles.json'}, {run_dir / 'tiles.md'}")
