from __future__ import annotations

from pathlib import Path

import pytest

from medml.config import ConfigError, available_recipes, load_recipe, parse_overrides


def test_shipped_recipes_load() -> None:
    names = available_recipes()
    assert {"kidney-ct", "chest-xray"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        assert recipe.name == name
        assert len(recipe.data.classes) >= 2


def test_kidney_ct_recipe_matches_seed() -> None:
    recipe = load_recipe("kidney-ct")
    assert recipe.data.classes == ["Normal", "Cyst", "Stone", "Tumor"]
    assert recipe.registry.alias == "challenger"


def test_overrides_are_typed_and_layered(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("image:\n  size: 48\nsplit:\n  folds: 4\npipeline:\n  anything: 1\n")
    recipe = load_recipe("kidney-ct", params_file=params, overrides=["split.folds=5"])
    assert recipe.image.size == 48  # from the params file
    assert recipe.split.folds == 5  # --set wins over the params file


def test_parse_overrides_yaml_values() -> None:
    assert parse_overrides(["a.b=2", "a.c=0.5", "d=true", "e=[x, y]"]) == {
        "a": {"b": 2, "c": 0.5},
        "d": True,
        "e": ["x", "y"],
    }


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1"])
def test_parse_overrides_rejects_malformed(bad: str) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides([bad])


def test_unknown_override_key_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown key 'train.epochz'"):
        load_recipe("kidney-ct", overrides=["train.epochz=3"])


def test_invalid_value_is_named() -> None:
    with pytest.raises(ConfigError, match="split.folds"):
        load_recipe("kidney-ct", overrides=["split.folds=1"])


def test_unknown_recipe_lists_available() -> None:
    with pytest.raises(ConfigError, match="unknown recipe 'nope'; available: .*kidney-ct"):
        load_recipe("nope")


def test_params_hash_changes_with_settings() -> None:
    a = load_recipe("kidney-ct")
    b = load_recipe("kidney-ct", overrides=["train.epochs=3"])
    assert a.params_hash() == load_recipe("kidney-ct").params_hash()
    assert a.params_hash() != b.params_hash()
