"""The fold pod's exact command line, run here against a real S3 server (moto, over HTTP).

The worker shares the run with the pods through S3; each pod runs `medml train --run-dir
s3://… --fold K` (the trainer image's entry point); the worker collects the fold models and
evaluates. Same code path as the local backend, only the run directory is remote.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from medml import pipeline, runs, steps
from medml.data.sources import s3_client
from medml.errors import RunError
from medml.k8s import fold_pod_manifest
from medml.layout import StepFiles
from medml.run_store import open_run_dir
from tests.conftest import TINY, venv_env

pytestmark = pytest.mark.integration


def _keys(bucket: str) -> set[str]:
    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


def test_pod_command_trains_a_fold_from_an_s3_run_dir(
    s3_env: str, phantom_dir: Path, tmp_path: Path
) -> None:
    s3_client().create_bucket(Bucket="medml-runs")
    run_dir = tmp_path / "worker-run"
    overrides = [*TINY, "train.backend=kubernetes", "train.kubernetes.run_store=s3://medml-runs/"]
    ctx = runs.init_run(
        run_dir, phantom_dir, "kidney-ct", overrides=overrides,
        logical_date="2026-01-05", run_key="medml_retrain/backfill__1",
    )  # fmt: skip
    pipeline.run_data_steps(ctx, echo=lambda _: None)

    uri = pipeline.share_with_pods(run_dir)
    assert uri == "s3://medml-runs/runs/2026-01-05/medml_retrain_backfill__1/"
    shared = _keys("medml-runs")
    assert "runs/2026-01-05/medml_retrain_backfill__1/shards/meta.json" in shared
    assert not any("/source/" in key or key.endswith("manifest.parquet") for key in shared)

    for fold in ctx.folds:
        container = fold_pod_manifest(ctx.recipe.train.kubernetes, "kidney-ct", uri, fold)["spec"][
            "containers"
        ][0]
        pod_env = {e["name"]: e["value"] for e in container["env"]}
        pod_env["MEDML_HOME"] = str(tmp_path / f"pod-{fold}")  # the pod's /data volume
        result = subprocess.run(
            [*container["command"], *container["args"]],  # exactly what the pod runs
            env={**venv_env(), **pod_env}, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert "testing-secret-do-not-log" not in result.stdout + result.stderr

    prefix = "runs/2026-01-05/medml_retrain_backfill__1/folds"
    assert {f"{prefix}/fold_{k}/{name}" for k in ctx.folds
            for name in ("model.keras", "history.json")} <= _keys("medml-runs")  # fmt: skip
    assert not (run_dir / "folds").exists()  # nothing trained in the worker

    collected = pipeline.collect_folds(run_dir)
    assert all(Path(p).is_file() for p in collected["folds"])
    evaluation = steps.evaluate(run_dir)
    assert 0.0 <= evaluation["balanced_accuracy"] <= 1.0


def test_missing_remote_input_names_the_path(s3_env: str) -> None:
    s3_client().create_bucket(Bucket="empty-runs")
    with pytest.raises(RunError, match=r"s3://empty-runs/r1/run.json is missing"):
        with open_run_dir("s3://empty-runs/r1/", StepFiles(needs=("run.json",), produces=())):
            pass


def test_unreachable_store_is_a_one_line_error(tmp_path: Path) -> None:
    from tests.conftest import _free_port

    env = {**venv_env(), "MEDML_HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s", "AWS_MAX_ATTEMPTS": "1",
           "MEDML_S3_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}"}  # fmt: skip
    result = subprocess.run(
        ["medml", "train", "--run-dir", "s3://medml-runs/runs/x/", "--fold", "0"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 3  # a medml error (docs/operations.md#exit-codes)
    assert "cannot reach s3://medml-runs/runs/x/run.json" in result.stderr
    assert "MEDML_S3_ENDPOINT_URL" in result.stderr and "Traceback" not in result.stderr
