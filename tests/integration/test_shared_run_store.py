"""A run whose every step runs on another worker: the workers share nothing but S3.

With ``$MEDML_RUN_ROOT=s3://…`` each run directory lives on S3 and each step works on a mirror
in its own worker's ``MEDML_HOME``: it downloads what it reads and uploads what it writes
(each step declares them in :mod:`medml.steps`). Here every step runs in a fresh home (a
worker that has seen nothing of the run), against a real S3 server (moto over HTTP); the
Celery deployment test does the same with real workers.
"""

from __future__ import annotations

from itertools import count
from pathlib import Path

import pytest

from medml import pipeline, report, runs, steps
from medml.data.sources import s3_client
from medml.tracking import Tracking
from tests.conftest import TINY, upload_tree

pytestmark = pytest.mark.integration


def _keys(bucket: str) -> set[str]:
    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


def test_every_step_on_another_worker_sharing_only_s3(
    s3_env: str, phantom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload_tree(phantom_dir, "medml-shared-data", "kidney-ct/2026-01-05")
    s3_client().create_bucket(Bucket="medml-shared-runs")
    monkeypatch.setenv("MEDML_RUN_ROOT", "s3://medml-shared-runs/runs/")
    homes = (tmp_path / f"worker-{k}" for k in count())

    def next_worker() -> None:
        monkeypatch.setenv("MEDML_HOME", str(next(homes)))

    # one tracking server stands for `mlflow server`: every worker logs to the same store
    tracking = Tracking(uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                        artifact_root=(tmp_path / "artifacts").as_uri())  # fmt: skip
    run_dir = runs.new_run_dir("medml_retrain", "2026-01-05", "manual__1")
    assert run_dir == "s3://medml-shared-runs/runs/2026-01-05/manual__1/"
    next_worker()
    ctx = runs.init_run(run_dir, "s3://medml-shared-data/kidney-ct/2026-01-05/", "kidney-ct",
                            overrides=TINY, logical_date="2026-01-05")  # fmt: skip
    assert ctx.location == run_dir
    for step in (steps.ingest, steps.validate, steps.split,
                 steps.preprocess):  # fmt: skip
        next_worker()
        step(run_dir)
    fold_runs = []
    for fold in ctx.folds:
        next_worker()
        fold_runs.append(steps.train(run_dir, fold, tracking)["mlflow_run_id"])
    next_worker()
    assert pipeline.collect_folds(run_dir)["uri"] == run_dir  # already on S3
    evaluation = steps.evaluate(run_dir, tracking)
    next_worker()
    registration = steps.register(run_dir, tracking)
    next_worker()
    summary = report.write_run_summary(run_dir).read_text()

    assert 0.0 <= evaluation["balanced_accuracy"] <= 1.0
    assert registration["version"] == "1"
    assert f"run directory: {run_dir}" in summary
    run = "runs/2026-01-05/manual__1/"
    expected = ["run.json", "manifest.parquet", "validation/validation.json", "splits.parquet",
                "shards/meta.json", "folds/fold_0/model.keras", "folds/fold_1/model.keras",
                "evaluation/metrics.json", "registry/registration.json", "summary.txt"]  # fmt: skip
    keys = _keys("medml-shared-runs")
    assert {run + name for name in expected} <= keys
    assert not any("/source/" in key for key in keys)  # the snapshot is read from its source
    # the manifest's dataset root is relative to the run, so any worker's mirror resolves it
    import pandas as pd

    mirror = tmp_path / "worker-4" / "run-mirrors" / "medml-shared-runs" / run.rstrip("/")
    assert set(pd.read_parquet(mirror / "splits.parquet")["root"]) == {"source"}
    for run_id in fold_runs:  # each fold logged its training rows as an MLflow dataset
        assert tracking.activate().get_run(run_id).inputs.dataset_inputs
    version = tracking.activate().get_model_version(registration["model_name"], "1")
    assert version.tags["run_dir"] == run_dir
