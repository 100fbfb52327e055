"""`medml compare`: named setting sets (a YAML, or a grid) on the same folds, out-of-fold."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medml.cli import app
from medml.config import RECIPES_DIR, load_recipe
from medml.errors import ConfigError
from tests.conftest import TINY

pytestmark = pytest.mark.integration


def test_compare_experiments_and_a_grid(phantom_dir: Path, tmp_path: Path) -> None:
    experiments = tmp_path / "experiments.yaml"
    experiments.write_text(
        "experiments:\n"
        "  weighted: {train.balance: class_weight}\n"
        "  one-of augmentation: {train.balance: augment_oversample, train.augment.policy: one_of}\n"
    )
    run_dir = tmp_path / "cmp"
    args = ["compare", "--source", str(phantom_dir), "--recipe", "kidney-ct",
            "--run-dir", str(run_dir), "--experiments", str(experiments),
            "--grid", "train.learning_rate=0.001,0.003",
            "--override-all", "train.batch_size=8"]  # fmt: skip
    for override in TINY:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(run_dir / "compare" / "compare.csv")
    grid = ["train.learning_rate=0.001", "train.learning_rate=0.003"]  # names: own settings
    assert list(table["experiment"]) == ["weighted", "one-of augmentation", *grid]
    assert table["macro_f1"].between(0, 1).all() and table["note"].isna().all()
    settings = "train.balance=augment_oversample; train.augment.policy=one_of; train.batch_size=8"
    assert table.loc[1, "settings"] == settings
    assert (run_dir / "compare" / "compare.png").stat().st_size > 5000
    # seed 002 reported accuracy and learning curves per experiment: both are here
    assert table["accuracy"].between(0, 1).all() and "accuracy" in result.stdout
    assert (run_dir / "compare" / "compare_curves.png").stat().st_size > 5000

    from medml.tracking import Tracking

    client = Tracking.from_env().activate()
    experiment = client.get_experiment_by_name("medml-kidney-ct").experiment_id
    parent = client.search_runs([experiment], "tags.`medml.kind` = 'compare'")
    children = client.search_runs([experiment], "tags.`medml.kind` = 'experiment'")
    assert len(parent) == 1 and len(children) == 4
    grid_child = next(c for c in children if c.data.tags["experiment"].endswith("0.003"))
    assert grid_child.data.params == {"train.learning_rate": "0.003", "train.batch_size": "8"}
    assert "oof_accuracy" in grid_child.data.metrics
    logged = {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    assert {"compare.csv", "compare.png", "compare_curves.png"} <= logged


def test_experiments_may_not_change_the_data_and_are_checked_before_training() -> None:
    from medml.compare import experiment_recipe, grid_experiments, read_experiments

    assert grid_experiments([]) == {}  # no grid adds no experiment
    assert list(grid_experiments(["a.b=1,2", "c=x"])) == ["a.b=1, c=x", "a.b=2, c=x"]

    recipe = load_recipe("kidney-ct")
    with pytest.raises(ConfigError, match=r"changes \['image.size'\]"):
        experiment_recipe(recipe, "bigger", {"image.size": 128})
    with pytest.raises(ConfigError, match="experiment 'typo'.*unknown key 'train.epoch'"):
        experiment_recipe(recipe, "typo", {"train.epoch": 3})
    seed002 = load_recipe("chest-xray-seed002")
    shipped = read_experiments(RECIPES_DIR / "experiments" / "chest-xray-seed002.yaml")
    assert len(shipped) == 5  # seed 002's experiments I-V, each valid against its recipe
    for name, settings in shipped.items():
        experiment_recipe(seed002, name, settings)
