"""The medml_retrain DAG for real: `airflow dags test` on SQLite, as `make demo` runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import task_log_noise, venv_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_dags_test_runs_every_step_and_registers(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    cmd = [
        "medml", "demo", "--workdir", str(workdir), "--n", "200",
        "--set", "image.size=32", "--set", "split.folds=2", "--set", "train.epochs=2",
        "--set", "data.min_images_per_class=2",
        "--set", "registry.gate.thresholds.balanced_accuracy.min=0",
        "--set", "registry.gate.require_better_than_chance=false",
    ]  # fmt: skip
    result = subprocess.run(cmd, env=venv_env(), capture_output=True, text=True, timeout=900)
    log = (
        (workdir / "airflow-dags-test.log").read_text()
        if (workdir / "airflow-dags-test.log").exists()
        else ""
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + log[-3000:]
    for task in (
        "prepare",
        "ingest",
        "validate",
        "split",
        "preprocess",
        "folds",
        "evaluate",
        "register",
        "report",
    ):
        assert f"done: {task}\n" in result.stdout, task
    assert "done: train [fold 0]" in result.stdout and "done: train [fold 1]" in result.stdout
    assert "challenger -> version 1" in result.stdout
    logs = list((workdir / "airflow" / "logs").rglob("task_id=register/**/*.log"))
    assert logs and logs[0].stat().st_size > 0  # task logs where the UI shows them
    noise = task_log_noise(workdir / "airflow" / "logs")  # no ERROR line, no library warning
    assert not noise, noise[:10]
    finished = [line for line in log.splitlines() if "DagRun Finished" in line]
    assert len(finished) == 1 and "state=success" in finished[0]
    runs = list((workdir / "runs").glob("*/*/registry/registration.json"))
    assert len(runs) == 1
