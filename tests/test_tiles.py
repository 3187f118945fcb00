"""`deploycompress tiles`: TETRIS tile pruning vs tiles in the original order (ALGORITHMS.md §6)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from deploycompress.cli import main
from deploycompress.errors import UserError
from deploycompress.tiles import masked_copy, parse_block, tile_layer, tile_model


def _worked_example() -> torch.Tensor:
    w = torch.ones(4, 4)
    for i, j in ((0, 0), (0, 2), (2, 0), (2, 2)):
        w[i, j] = 0.1
    return w


def test_worked_example_reordering_gathers_the_small_weights():
    info, reordered, plain = tile_layer(_worked_example(), (2, 2), 0.25, "fc")
    assert info.tiles == 4 and info.tiles_pruned == 1
    assert info.pruned_mass_reordered == pytest.approx(0.4)
    assert info.pruned_mass_plain == pytest.approx(3.1)
    # the reordered mask, in the original order, zeroes exactly the four 0.1 entries
    assert sorted(zip(*np.nonzero(reordered == 0))) == [(0, 0), (0, 2), (2, 0), (2, 2)]
    assert (plain == 0).sum() == 4
    # storage: 3 kept 2x2 tiles (4 bytes a value) + tile indices + row pointers, plus 8 permutation entries
    assert info.tile_bytes_plain == 3 * 4 * 4 + 4 * (3 + 2 + 1)
    assert info.tile_bytes_reordered == info.tile_bytes_plain + 4 * 8


def test_masks_apply_to_a_copy_and_heads_can_be_kept():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 4))
    layers, reordered, _ = tile_model(model, (4, 4), 0.5, keep={"3"})
    assert [layer.name for layer in layers] == ["0"]
    pruned = masked_copy(model, reordered)
    assert float((pruned[0].weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert float((model[0].weight == 0).float().mean()) == 0.0
    with pytest.raises(UserError):
        tile_model(model, (4, 4), 1.5)


@pytest.mark.parametrize("text", ["8", "a,b", "-1,8", "0,0"])
def test_bad_block_is_a_user_error(text):
    with pytest.raises(UserError):
        parse_block(text)


def test_tiles_command_writes_the_report(tmp_path, capsys):
    main(["tiles", "--block", "8,8", "--prune-rate", "0.5", "--out", str(tmp_path)])  # an error exits
    report = json.loads((tmp_path / "tiles.json").read_text())
    totals = report["totals"]
    assert totals["pruned_mass_reordered"] < totals["pruned_mass_plain"]
    assert report["left_dense"] == ["fc"] and report["cpu_speedup"] is None
    assert totals["weights_pruned"] == pytest.approx(totals["weights"] / 2, rel=0.01)
    markdown = (tmp_path / "tiles.md").read_text()
    assert "save storage, not CPU time" in markdown
    assert "save storage, not CPU time" in capsys.readouterr().out

