"""`medml compare-balancing`: same folds for every strategy, a table, MLflow parent + children."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medml.cli import app
from tests.conftest import TINY

pytestmark = pytest.mark.integration


def test_compare_balancing_table_and_runs(phantom_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "cmp"
    args = ["compare-balancing", "--source", str(phantom_dir), "--recipe", "kidney-ct",
            "--run-dir", str(run_dir), "--strategies", "none,oversample,smote"]  # fmt: skip
    for override in TINY:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Out-of-fold scores on the same folds" in result.output
    table = pd.read_csv(run_dir / "compare" / "compare_balancing.csv")
    assert list(table["strategy"]) == ["none", "oversample", "smote"]
    assert table["note"].isna().all()  # SMOTE streams from the shards: nothing is skipped
    assert table["macro_f1"].between(0, 1).all() and (table["train_seconds"] > 0).all()

    from medml.tracking import Tracking

    client = Tracking.from_env().activate()
    experiment = client.get_experiment_by_name("medml-kidney-ct").experiment_id
    parent = client.search_runs([experiment], "tags.`medml.kind` = 'compare-balancing'")
    children = client.search_runs([experiment], "tags.`medml.kind` = 'strategy'")
    assert len(parent) == 1
    assert {c.data.tags["strategy"] for c in children} == {"none", "oversample", "smote"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent[0].info.run_id}
