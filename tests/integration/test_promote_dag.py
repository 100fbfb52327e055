"""medml_promote and medml_predict DAGs for real (`airflow dags test`, SQLite, MLflow registry).

The human approval is the one step a test cannot click: `--mark-success-pattern approve` stands
in for a reviewer's "Approve", and everything after it runs for real.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from medml import pipeline
from medml.local_airflow import airflow_env
from medml.tracking import Tracking
from tests.conftest import TINY, dags_test, venv_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NAME = "kidney-ct-classifier"


def test_approved_promotion_and_batch_prediction(phantom_dir: Path, tmp_path: Path) -> None:
    home = Path(venv_env()["MEDML_HOME"])
    ctx = pipeline.init_run(
        tmp_path / "r1",
        phantom_dir,
        "kidney-ct",
        overrides=[
            *TINY,
            "registry.gate.require_better_than_chance=false",
            "registry.gate.thresholds.balanced_accuracy.min=0",
        ],
    )
    pipeline.run_all(ctx, Tracking.from_env(home), echo=lambda _: None)

    env = {**airflow_env(home), "PATH": venv_env()["PATH"]}
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    conf = {"model": NAME, "version": "1", "reviewer": "alice", "reason": "better Stone recall"}
    dags_test(env, "medml_promote", "2026-01-05", conf, "--mark-success-pattern", "^approve$")
    client = Tracking.from_env(home).activate()
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == "1"
    assert champion.tags["audit.promoted.reviewer"] == "alice"
    assert list((home / "reviews").glob(f"{NAME}-v1-*.html"))  # the report the reviewer saw

    predictions = tmp_path / "predictions.csv"
    dags_test(env, "medml_predict", "2026-01-05", {"model": f"{NAME}@champion",
                                      "source": str(phantom_dir / "Tumor"),
                                      "out": str(predictions)})  # fmt: skip
    table = pd.read_csv(predictions)
    assert len(table) == len(list((phantom_dir / "Tumor").glob("*.jpg")))
