"""pipelines/*.toml: one recipe per zoo model, each a whole, valid run configuration."""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from deploycompress.allocation import policies
from deploycompress.errors import UserError
from deploycompress.importance import criteria
from deploycompress.models.zoo import list_models
from deploycompress.recipe import RunConfig, build_config

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
RECIPES = sorted(PIPELINES.glob("*.toml"))


def _settable_keys(cls, prefix: str = "") -> set[str]:
    """Dotted keys of every field a TOML recipe can spell: TOML has no null, so fields whose default
    is None ("not set") may be left out; every other field must be written down."""
    keys = set()
    for field in dataclasses.fields(cls):
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if dataclasses.is_dataclass(default):
            keys |= _settable_keys(type(default), f"{prefix}{field.name}.")
        elif default is not None:
            keys.add(prefix + field.name)
    return keys


def _flatten(table: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in table.items():
        keys |= _flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return keys


def test_every_zoo_model_has_a_recipe():
    assert sorted(p.stem for p in RECIPES) == sorted(list_models())


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_names_its_model(path):
    config = build_config(path, {})
    assert config.model == path.stem
    assert config.target_speedup > 1 and config.device == "cpu"
    assert config.profile.threads == 1  # one intra-op thread: stable figures (MEASURING.md)
    policies.get(config.prune.policy)
    criteria.get(config.prune.importance)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_spells_out_the_whole_run_config(path):
    written = _flatten(tomllib.loads(path.read_text()))
    missing = _settable_keys(RunConfig) - written
    assert not missing, f"{path.name} lacks {sorted(missing)}: add them so the recipe describes the whole run"


def test_recipe_overrides_and_unknown_keys(tmp_path):
    config = build_config(PIPELINES / "resnet_digits.toml", {"target_speedup": "3x", "profile": {"rounds": 5}})
    assert config.target_speedup == 3.0 and config.profile.rounds == 5
    assert config.prune.channel_multiple is None  # not set: the prune stage reads the runtime's block
    broken = tmp_path / "typo.toml"
    broken.write_text((PIPELINES / "resnet_digits.toml").read_text().replace("[prune]", "[prune]\npolcy = \"x\""))
    with pytest.raises(UserError, match="prune.polcy"):
        build_config(broken, {})
