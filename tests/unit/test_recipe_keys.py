"""The recipe-key reference in docs/recipes.md is the schema's, and names resolve from
``$MEDML_HOME/recipes`` too."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medml.cli import app
from medml.config import ConfigError, Recipe, load_recipe
from medml.recipe_keys import BEGIN, END, recipe_keys, reference_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"


def test_the_docs_hold_the_reference_the_schema_generates() -> None:
    text = DOC.read_text(encoding="utf-8")
    block = text[text.index(BEGIN) : text.index(END) + len(END)] + "\n"
    assert block == reference_markdown(), (
        "docs/recipes.md's recipe-key table differs from the schema: run "
        "`medml recipes --keys --write docs/recipes.md`"
    )


def test_every_key_has_a_meaning_and_every_leaf_is_listed() -> None:
    keys = {k.key: k for k in recipe_keys()}
    assert not [k for k, v in keys.items() if not v.meaning], "describe these in medml/config.py"
    # every leaf of a fully spelt-out recipe is in the table (lists and mappings by pattern)
    dumped = Recipe.model_validate({
        "name": "x", "data": {"classes": ["a", "b"]}, "registry": {"model_name": "m"},
    }).model_dump(mode="json")  # fmt: skip

    def leaves(node: object, prefix: str) -> list[str]:
        if prefix in keys:
            return [prefix]
        if isinstance(node, list):
            return leaves(node[0], f"{prefix}[]")
        assert isinstance(node, dict), prefix
        return [leaf for k, v in node.items() for leaf in leaves(v, f"{prefix}.{k}".lstrip("."))]

    assert set(leaves(dumped, "")) == set(keys) - {
        "registry.gate.thresholds.<metric>.min",
        "registry.gate.thresholds.<metric>.max",
        "registry.gate.operating_point.<sensitivity|specificity|ppv>.min",
        "registry.gate.operating_point.<sensitivity|specificity|ppv>.max",
        "train.reduce_lr_on_plateau.factor",
        "train.reduce_lr_on_plateau.patience",
        "train.reduce_lr_on_plateau.min_lr",
    }  # empty mappings and a switched-off section by default
    assert keys["train.balance"].allowed.split(", ")[:2] == ["none", "class_weight"]
    assert keys["data.layout"].allowed.startswith("auto, class_folders")
    assert keys["split.folds"].allowed == "≥ 1, ≤ 20"
    assert keys["data.classes"].default == "required"


def test_medml_recipes_lists_a_deployments_own_recipes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDML_HOME", str(tmp_path))
    (tmp_path / "recipes").mkdir()
    own = {"name": "ward-xray", "data": {"classes": ["clear", "effusion"]},
           "registry": {"model_name": "ward-xray"}}  # fmt: skip
    (tmp_path / "recipes" / "ward-xray.yaml").write_text(yaml.safe_dump(own))
    (tmp_path / "recipes" / "kidney-ct.yaml").write_text(yaml.safe_dump(own))
    result = CliRunner().invoke(app, ["recipes"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "kidney-ct" in lines and f"ward-xray  ({tmp_path}/recipes/ward-xray.yaml)" in lines
    assert "recipes/kidney-ct.yaml is not used" in result.stderr  # a shipped name wins
    assert load_recipe("ward-xray").data.classes == ["clear", "effusion"]
    assert load_recipe("kidney-ct").data.classes[0] == "Normal"
    with pytest.raises(ConfigError, match=r"unknown recipe 'ward'.*ward-xray.*looked up in"):
        load_recipe("ward")
    with pytest.raises(ConfigError, match="recipe file nope.yaml does not exist"):
        load_recipe("nope.yaml")


def test_medml_recipes_keys_writes_between_the_markers(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"# head\n\n{BEGIN}\nstale\n{END}\n\ntail\n")
    result = CliRunner().invoke(app, ["recipes", "--keys", "--write", str(doc)])
    assert result.exit_code == 0 and "updated" in result.stdout
    assert doc.read_text() == f"# head\n\n{reference_markdown()}\ntail\n"
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    refused = CliRunner().invoke(app, ["recipes", "--keys", "--write", str(bare)])
    assert refused.exit_code == 3 and "no recipe-key markers" in refused.stderr


def test_a_folder_named_like_a_recipe_is_not_one_and_yml_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medml.config import available_recipes

    monkeypatch.setenv("MEDML_HOME", str(tmp_path))
    (tmp_path / "recipes" / "folder.yaml").mkdir(parents=True)
    own = {"name": "short", "data": {"classes": ["a", "b"]}, "registry": {"model_name": "s"}}
    (tmp_path / "recipes" / "short.yml").write_text(yaml.safe_dump(own))
    assert "folder" not in available_recipes() and "short" in available_recipes()
    assert load_recipe("short").name == "short"
