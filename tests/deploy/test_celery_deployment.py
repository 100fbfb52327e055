"""A real multi-worker deployment: CeleryExecutor + Redis, two workers sharing nothing but
an MLflow tracking server (``mlflow server``, artifacts on S3) and the S3 run store.

Every component is the real program on 127.0.0.1: Debian's ``redis-server`` (broker), moto's
S3 server (dataset snapshot, run store, MLflow artifacts), ``mlflow server``, and Airflow's
api-server, scheduler, dag-processor and two ``airflow celery worker`` processes, each with
its own ``MEDML_HOME`` and ``AIRFLOW_HOME``. One ``medml_retrain`` run is triggered; the test
reads Airflow's own records of which worker ran each task, checks that the fold tasks ran on
both workers, and that the run registered a challenger on the tracking server.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from medml.data.sources import s3_client
from medml.local_airflow import airflow_executable, with_venv_on_path
from tests.conftest import REPO_ROOT, TINY, _free_port, upload_tree

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKERS = ("worker-a", "worker-b")
RUN_ID = "distributed__2026-01-05"
MODEL = "kidney-ct-classifier"


class Services:
    """Background programs with their logs; stopped (all of them) at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.processes: dict[str, subprocess.Popen] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        with open(self.logs / f"{name}.log", "w") as out:
            self.processes[name] = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_until(self, name: str, ready: Callable[[], bool], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.processes[name].poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{name} did not start:\n{self.tail(name)}")
            time.sleep(1)

    def tail(self, name: str, chars: int = 3000) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, 15)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    running = Services(tmp_path / "logs")
    yield running
    running.stop()


@pytest.mark.skipif(
    not shutil.which("redis-server") and not os.environ.get("CI"),
    reason="needs Debian's redis-server (.ci/run installs it)",
)
def test_fold_tasks_run_on_two_celery_workers_and_register_a_challenger(
    s3_env: str, phantom_dir: Path, tmp_path: Path, services: Services
) -> None:
    upload_tree(phantom_dir, "medml-data", "kidney-ct/2026-01-05")
    for bucket in ("medml-runs-celery", "medml-mlflow"):
        s3_client().create_bucket(Bucket=bucket)
    s3 = {
        key: os.environ[key]
        for key in (
            "MEDML_S3_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
        )
    }
    base = {**os.environ, **s3, "PATH": with_venv_on_path(os.environ.get("PATH", "")),
            "TF_CPP_MIN_LOG_LEVEL": "2", "GX_ANALYTICS_ENABLED": "false"}  # fmt: skip

    redis_port, mlflow_port, api_port = _free_port(), _free_port(), _free_port()
    services.start("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"], base)  # fmt: skip
    services.wait_until("redis", lambda: "Ready to accept" in services.tail("redis"))

    tracking = f"http://127.0.0.1:{mlflow_port}"
    services.start("mlflow", [
        str(Path(airflow_executable()).with_name("mlflow")), "server", "--host", "127.0.0.1",
        "--port", str(mlflow_port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination", "s3://medml-mlflow/artifacts",
    ], {**base, "MLFLOW_S3_ENDPOINT_URL": s3["MEDML_S3_ENDPOINT_URL"]})  # fmt: skip

    airflow_db = tmp_path / "airflow.db"
    cluster = {  # what every Airflow component is configured with (one config, like Helm's)
        **base,
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_db}",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"redis://127.0.0.1:{redis_port}/1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": "medml-deployment-test-secret",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "MLFLOW_TRACKING_URI": tracking,
        "MEDML_RUN_ROOT": "s3://medml-runs-celery/runs/",
        "PYTHONPATH": str(REPO_ROOT),
    }
    control = {**cluster, "AIRFLOW_HOME": str(tmp_path / "control" / "airflow"),
               "MEDML_HOME": str(tmp_path / "control")}  # fmt: skip
    airflow = airflow_executable()
    migrated = subprocess.run([airflow, "db", "migrate"], env=control, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
    assert migrated.returncode == 0, migrated.stdout[-2000:] + migrated.stderr[-2000:]
    services.start("api-server", [airflow, "api-server", "--port", str(api_port)], control)
    services.start("scheduler", [airflow, "scheduler"], control)
    services.start("dag-processor", [airflow, "dag-processor"], control)
    for name in WORKERS:
        home = tmp_path / name
        worker = {**cluster, "AIRFLOW_HOME": str(home / "airflow"), "MEDML_HOME": str(home),
                  "MEDML_WORKER_NAME": name,
                  "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.deploy.worker_identity.hostname",
                  "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port())}  # fmt: skip
        services.start(name, [airflow, "celery", "worker", "--concurrency", "1",
                              "--celery-hostname", f"{name}@%h"], worker)  # fmt: skip
    services.wait_until("mlflow", lambda: _answers(f"{tracking}/health"))
    services.wait_until(
        "api-server", lambda: _answers(f"http://127.0.0.1:{api_port}/api/v2/monitor/health")
    )
    for name in WORKERS:
        services.wait_until(name, lambda name=name: " ready." in services.tail(name))
    services.wait_until("dag-processor", lambda: _dag_parsed(airflow_db), timeout=300)

    conf = {"source": "s3://medml-data/kidney-ct/{ds}/", "recipe": "kidney-ct",
            "overrides": [*TINY, "registry.gate.thresholds.balanced_accuracy.min=0",
                          "registry.gate.require_better_than_chance=false"]}  # fmt: skip
    for cmd in (
        ["dags", "unpause", "medml_retrain"],
        [
            "dags",
            "trigger",
            "medml_retrain",
            "--run-id",
            RUN_ID,
            "--logical-date",
            "2026-01-05T00:00:00+00:00",
            "--conf",
            json.dumps(conf),
        ],
    ):
        done = subprocess.run([airflow, *cmd], env=control, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    state = _wait_for_run(airflow_db, timeout=900)
    tasks = _task_hosts(airflow_db)
    table = "\n".join(f"{task:<16}{index:>6}  {state:<9} {host}" for task, index, state, host
                      in tasks)  # fmt: skip
    print(f"\ntask            map   state     hostname (Airflow's task_instance)\n{table}")
    logs = "\n".join(f"--- {name}\n{services.tail(name, 2500)}" for name in WORKERS)
    assert state == "success", f"{table}\n{logs}"

    fold_hosts = {host for task, _, _, host in tasks if task == "train"}
    assert fold_hosts == set(WORKERS), table  # the two folds ran on different workers
    ran = {host for _, _, state, host in tasks if state == "success"}
    assert ran <= set(WORKERS)

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    challenger = client.get_model_version_by_alias(MODEL, "challenger")
    assert challenger.tags["run_dir"].startswith("s3://medml-runs-celery/runs/2026-01-05/")
    artifacts = {obj["Key"] for obj in s3_client().list_objects_v2(
        Bucket="medml-mlflow").get("Contents", [])}  # fmt: skip
    assert any(key.endswith("MLmodel") for key in artifacts)  # the model is on S3, via MLflow
    for name in WORKERS:  # each worker kept only its own mirror: nothing else shared
        assert not (tmp_path / name / "runs").exists()
        assert not (tmp_path / name / "mlartifacts").exists()


def _dag_parsed(db: Path) -> bool:
    if not db.is_file():
        return False
    with sqlite3.connect(db) as conn:
        try:
            rows = conn.execute("SELECT 1 FROM dag WHERE dag_id = 'medml_retrain'").fetchall()
        except sqlite3.OperationalError:
            return False
    return bool(rows)


def _wait_for_run(db: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT state FROM dag_run WHERE dag_id = 'medml_retrain' AND "
                               "run_id = ?", (RUN_ID,)).fetchone()  # fmt: skip
        if row and row[0] in ("success", "failed"):
            return row[0]
        time.sleep(5)
    return "timed out"


def _task_hosts(db: Path) -> list[tuple[str, int, str, str]]:
    """Which worker ran each task instance, from Airflow's metadata database."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT task_id, map_index, state, COALESCE(hostname, '') FROM task_instance "
            "WHERE dag_id = 'medml_retrain' AND run_id = ? ORDER BY start_date, map_index",
            (RUN_ID,),
        ).fetchall()
