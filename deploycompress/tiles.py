"""Tile pruning with TETRIS reordering (`deploycompress tiles`), ALGORITHMS.md §6.

For every conv and linear layer, |W| is cut into tiles of `block` (output x input channels; a conv's
kernel window stays whole), and the `prune_rate` share of tiles with the smallest |W| sums is
pruned twice: once in the layer's own channel order, once after TETRIS has permuted the output and
input channels so that small weights gather into the same tiles. Same number of tiles, same number
of zeros; what differs is how much weight mass (sum of |W|) goes, and so the accuracy.

What the report means, plainly: tiles are a *storage* format. ONNX Runtime's CPU execution provider
has no block-sparse convolution or matmul kernel, so a tile-pruned model runs exactly as fast as the
dense one there; what shrinks is the size of the weights (block-sparse storage: kept tiles plus an
index per tile). Speed would need a runtime with block-sparse kernels (the paper's GPU kernels).

Each layer is reordered on its own. Deploying the reordered layers block-sparse needs each layer's
input permutation applied to its input (a gather) and the inverse of its output permutation to its
output, unless neighbouring permutations are chosen to agree. The accuracy below uses each mask
mapped back to the original channel order, which computes exactly what that reordered model does.
"""
from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .fileio import write_json, write_text
from .graph import module_names
from .model_outputs import output_modules
from .multi_output import layout_of
from .research.tetris import block_prune_without_reordering, tetris
from .training import predict

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_INDEX_BYTES = 4  # int32 tile indices and permutation entries
_NO_CPU_SPEEDUP = ("ONNX Runtime's CPU execution provider has no block-sparse kernel: pruned tiles save "
                   "storage, not CPU time. The tile-pruned model runs as fast as the dense one there.")


@dataclass
class LayerTiles:
    name: str
    shape: list[int]
    block: list[int]  # per weight axis; 0 = the whole axis
    tiles: int
    tiles_pruned: int
    mass: float  # sum of |W|
    pruned_mass_reordered: float
    pruned_mass_plain: float
    dense_bytes: int
    tile_bytes_reordered: int
    tile_bytes_plain: int


def parse_block(text: str) -> tuple[int, int]:
    try:
        parts = tuple(int(p) for p in str(text).replace("x", ",").split(","))
    except ValueError:
        raise UserError(f"--block {text!r}: expected two integers like 8,8 (output, input channels)") from None
    if len(parts) != 2 or any(p < 0 for p in parts) or parts == (0, 0):
        raise UserError(f"--block {text!r}: expected two non-negative integers like 8,8 (0 = the whole axis)")
    return parts  # type: ignore[return-value]


def layer_block(shape: tuple[int, ...], block: tuple[int, int]) -> list[int]:
    """Tile size for a weight: [out, in] from `block`, the rest of the axes (a conv's window) whole."""
    return [block[0], block[1]] + [0] * (len(shape) - 2)


def _tile_grid(shape: tuple[int, ...], sizes: list[int]) -> tuple[list[int], list[int]]:
    real = [n if (b <= 0 or b >= n) else b for n, b in zip(shape, sizes)]
    return real, [-(-n // b) for n, b in zip(shape, real)]


def _storage_bytes(shape: tuple[int, ...], sizes: list[int], kept_tiles: int, reordered_axes: int) -> int:
    """Block-sparse bytes: kept tiles stored whole (edge tiles padded), one int32 index per kept tile,
    a row pointer per tile row, and the permutations when the channels were reordered."""
    tile, grid = _tile_grid(shape, sizes)
    values = kept_tiles * int(np.prod(tile)) * 4
    return values + _INDEX_BYTES * (kept_tiles + grid[0] + 1) + _INDEX_BYTES * reordered_axes


def tile_layer(weight: torch.Tensor, block: tuple[int, int], prune_rate: float, name: str):
    """(LayerTiles, keep mask with reordering, keep mask without) for one weight; masks in original order."""
    x = weight.detach().abs().double().numpy()
    sizes = layer_block(x.shape, block)
    reordered = tetris(x, sizes, prune_rate)
    plain = block_prune_without_reordering(x, sizes, prune_rate)
    _, grid = _tile_grid(x.shape, sizes)
    tiles = int(np.prod(grid))
    pruned = int(np.floor(prune_rate * tiles + 1e-9))
    perm_entries = sum(len(p) for p in reordered.perms if p is not None)
    info = LayerTiles(name, list(x.shape), sizes, tiles, pruned, float(x.sum()), reordered.pruned_mass,
                      plain.pruned_mass, int(x.size) * 4,
                      _storage_bytes(x.shape, sizes, tiles - pruned, perm_entries),
                      _storage_bytes(x.shape, sizes, tiles - pruned, 0))
    return info, reordered.mask, plain.mask


def tile_model(model: nn.Module, block: tuple[int, int], prune_rate: float, ignore: str | None = None,
               keep: set[str] = frozenset()):
    """Tile-prune every conv/linear weight not in `keep` nor matched by `ignore`:
    (layers, reordered masks, plain masks)."""
    if not 0 < prune_rate < 1:
        raise UserError(f"--prune-rate must be between 0 and 1 (got {prune_rate})")
    pattern = re.compile(ignore) if ignore else None
    layers, reordered, plain = [], {}, {}
    for name, module in model.named_modules():
        if not isinstance(module, _LAYERS) or name in keep or (pattern and pattern.search(name)):
            continue
        info, mask_r, mask_p = tile_layer(module.weight, block, prune_rate, name)
        layers.append(info)
        reordered[name], plain[name] = mask_r, mask_p
    if not layers:
        raise UserError("no conv or linear layer to tile (check --ignore)")
    return layers, reordered, plain


def masked_copy(model: nn.Module, masks: dict[str, np.ndarray], calibration: torch.Tensor | None = None) -> nn.Module:
    """A copy with the masks applied; BatchNorm statistics re-estimated on `calibration` (inputs only,
    no labels, no gradient), since zeroing half a layer's weights shifts what its BatchNorm sees."""
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            weight = modules[name].weight
            weight.mul_(torch.from_numpy(mask).to(weight.dtype))
        batchnorms = [m for m in pruned.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if calibration is not None and batchnorms:
            for bn in batchnorms:
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average over the batches
            pruned.train()
            for start in range(0, len(calibration), 64):
                pruned(calibration[start:start + 64])
            for bn in batchnorms:
                bn.momentum = 0.1
    return pruned.eval()


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, dense_top1: torch.Tensor) -> dict:
    top1 = predict(model, x).argmax(1)
    accuracy = None if y is None else float((top1 == y).float().mean() * 100)
    return {"accuracy": accuracy, "agreement_with_dense": float((top1 == dense_top1).float().mean() * 100)}


def tiles_report(dense: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor | None, block: tuple[int, int],
                 prune_rate: float, ignore: str | None = None, calibration: torch.Tensor | None = None) -> dict:
    """Tile both ways and evaluate on the test split; `calibration` inputs re-estimate BatchNorm.
    The model's output layers stay dense, as in `run`: their rows are the classes."""
    layout = layout_of(dense)
    if layout is not None:  # its figure is top-1 agreement, across all outputs' values at once it means nothing
        raise UserError(f"deploycompress tiles scores top-1 agreement with the dense model, a classifier's figure; "
                        f"this model returns {len(layout.names)} outputs ({layout.describe()})")
    heads = {module_names(dense)[m] for m in output_modules(dense, x_test[:1])}
    layers, reordered, plain = tile_model(dense, block, prune_rate, ignore, heads)
    dense_top1 = predict(dense, x_test).argmax(1)
    mass = sum(l.mass for l in layers)
    totals = {
        "mass": mass,
        "pruned_mass_reordered": sum(l.pruned_mass_reordered for l in layers),
        "pruned_mass_plain": sum(l.pruned_mass_plain for l in layers),
        "weights": sum(int(np.prod(l.shape)) for l in layers),
        "weights_pruned": int(sum((1 - m).sum() for m in reordered.values())),
        "dense_bytes": sum(l.dense_bytes for l in layers),
        "tile_bytes_reordered": sum(l.tile_bytes_reordered for l in layers),
        "tile_bytes_plain": sum(l.tile_bytes_plain for l in layers),
    }
    totals["pruned_mass_fraction_reordered"] = totals["pruned_mass_reordered"] / mass
    totals["pruned_mass_fraction_plain"] = totals["pruned_mass_plain"] / mass
    return {
        "block": list(block), "prune_rate": prune_rate, "ignore": ignore, "left_dense": sorted(heads),
        "totals": totals,
        "evaluation": {"dense": _evaluate(dense, x_test, y_test, dense_top1),
                       "reordered": _evaluate(masked_copy(dense, reordered, calibration), x_test, y_test, dense_top1),
                       "plain": _evaluate(masked_copy(dense, plain, calibration), x_test, y_test, dense_top1)},
        "batchnorm_recalibrated": calibration is not None,
        "layers": [asdict(l) for l in layers],
        "cpu_speedup": None,
        "note": _NO_CPU_SPEEDUP,
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def markdown(report: dict, model: str) -> str:
    t, ev = report["totals"], report["evaluation"]
    block = "x".join(str(b) for b in report["block"])
    lines = [f"# Tile pruning (TETRIS) of {model}: {block} tiles, {report['prune_rate']:.0%} of tiles pruned", "",
             f"**{report['note']}**", "",
             f"- weights pruned: {t['weights_pruned']:,} of {t['weights']:,} "
             f"({t['weights_pruned'] / t['weights']:.1%}), the same count with and without reordering",
             f"- |W| mass pruned: {t['pruned_mass_fraction_reordered']:.2%} with TETRIS reordering vs "
             f"{t['pruned_mass_fraction_plain']:.2%} without (lower is better: less of the weights' magnitude lost)",
             f"- accuracy: dense {_pct(ev['dense']['accuracy'])}, TETRIS {_pct(ev['reordered']['accuracy'])}, "
             f"no reordering {_pct(ev['plain']['accuracy'])} (no finetuning"
             + ("; BatchNorm statistics re-estimated on training inputs)" if report.get("batchnorm_recalibrated") else ")"),
             f"- top-1 agreement with the dense model: TETRIS {_pct(ev['reordered']['agreement_with_dense'])}, "
             f"no reordering {_pct(ev['plain']['agreement_with_dense'])}",
             f"- weight storage: dense {t['dense_bytes']:,} B; block-sparse {t['tile_bytes_reordered']:,} B with "
             f"TETRIS (permutations included), {t['tile_bytes_plain']:,} B without",
             f"- left dense: output layer(s) {', '.join(report['left_dense']) or 'none'}"
             + (f", and layers matching `{report['ignore']}`" if report.get("ignore") else ""),
             "", "## Layers", "",
             "| layer | shape | tile | tiles pruned | mass pruned, TETRIS | mass pruned, no reordering |",
             "|---|---|---|---:|---:|---:|"]
    for l in report["layers"]:
        shape = "x".join(map(str, l["shape"]))
        tile = "x".join(str(n if b <= 0 or b >= n else b) for n, b in zip(l["shape"], l["block"]))
        lines.append(f"| {l['name']} | {shape} | {tile} | {l['tiles_pruned']}/{l['tiles']} | "
                     f"{l['pruned_mass_reordered'] / l['mass']:.2%} | {l['pruned_mass_plain'] / l['mass']:.2%} |")
    lines += ["", "Each layer is reordered on its own; masks are applied in the original channel order, which "
              "computes what the reordered block-sparse layers compute. A runtime executing them block-sparse "
              "gathers each layer's input by its permutation (or aligns neighbouring permutations).", ""]
    return "\n".join(lines)


def write_tiles_report(out: Path, report: dict, model: str) -> None:
    write_json(out / "tiles.json", {"model": model, **report})
    write_text(out / "tiles.md", markdown(report, model))
