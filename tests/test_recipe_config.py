import pytest

from deploycompress.errors import UserError
from deploycompress.recipe import PruneConfig, RunConfig, build_config, parse_shape, parse_speedup


@pytest.mark.parametrize("text,value", [("2x", 2.0), ("2", 2.0), ("2.0", 2.0), ("1.5X", 1.5), (" 3x ", 3.0), (2, 2.0)])
def test_speedup_forms(text, value):
    assert parse_speedup(text) == value


@pytest.mark.parametrize("text", ["1", "0.5x", "-2", "abc", "2xx", "", "inf", "nan"])
def test_speedup_rejects(text):
    with pytest.raises(UserError):
        parse_speedup(text)


def test_shape_parsing():
    assert parse_shape("1,3,224,224") == (1, 3, 224, 224)
    assert parse_shape([1, 8]) == (1, 8)
    for bad in ("1", "a,b", "1,0,3", "1,-3"):
        with pytest.raises(UserError):
            parse_shape(bad)


def test_overrides_and_nested_defaults():
    config = build_config(None, {"target_speedup": "3x", "prune": {"policy": "uniform"}, "profile": {"threads": 2}})
    assert isinstance(config, RunConfig)
    assert config.target_speedup == 3.0 and config.prune.policy == "uniform" and config.profile.threads == 2
    assert config.prune.importance == PruneConfig().importance  # untouched keys keep defaults


@pytest.mark.parametrize("bad,fragment", [
    ({"prnue": {}}, "'prnue'"),
    ({"prune": {"polcy": "spdy"}}, "'prune.polcy'"),
    ({"seed": "zero"}, "'seed'"),
    ({"profile": {"threads": True}}, "'profile.threads'"),
    ({"profile": {"threads": 0}}, "threads"),
    ({"prune": "spdy"}, "prune"),
])
def test_bad_recipes_name_the_key(bad, fragment):
    with pytest.raises(UserError, match=fragment.replace(".", r"\.")):
        build_config(None, bad)


def test_recipe_file_roundtrip(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "vgg_digits"\ntarget_speedup = "1.5x"\n[prune]\npolicy = "global"\n')
    config = build_config(recipe, {"prune": {"importance": "l1"}})
    assert (config.model, config.target_speedup, config.prune.policy, config.prune.importance) == \
        ("vgg_digits", 1.5, "global", "l1")
    (tmp_path / "bad.toml").write_text("model = \n")
    with pytest.raises(UserError, match="not valid TOML"):
        build_config(tmp_path / "bad.toml", {})
