"""Shared fixtures: tiny phantom datasets and recipes made in tmp paths, an isolated workspace."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from medml.config import Recipe, load_recipe
from medml.data.synthetic import synth_kidney_ct

REPO_ROOT = Path(__file__).resolve().parent.parent

# Tiny settings that still exercise every code path.
TINY = [
    "image.size=32",
    "split.folds=2",
    "train.epochs=2",
    "train.batch_size=16",
    "data.min_images_per_class=2",
]


@pytest.fixture(autouse=True)
def _isolated_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own MEDML_HOME (MLflow store, runs) and quiet TF/GX."""
    monkeypatch.setenv("MEDML_HOME", str(tmp_path / "medml-home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MEDML_ARTIFACT_ROOT", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small kidney-CT phantom set (120 images, several slices per patient); do not modify."""
    root = tmp_path_factory.mktemp("phantom") / "kidney-ct"
    synth_kidney_ct(root, n=120, seed=3, image_size=64)
    return root


@pytest.fixture
def tiny_recipe() -> Recipe:
    """The kidney-CT recipe shrunk for fast tests."""
    return load_recipe("kidney-ct", overrides=TINY)


def tree_snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry under root (links not followed): kind, size and sha256 of each regular file,
    the target of each link, the mode of anything else: proves inputs were not touched."""
    snapshot: dict[str, tuple[str, int, str]] = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            info = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                snapshot[rel] = ("link", 0, os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                readable = info.st_mode & 0o444
                digest = hashlib.sha256(path.read_bytes()).hexdigest() if readable else ""
                snapshot[rel] = ("file", info.st_size, digest or str(info.st_mtime_ns))
            else:
                snapshot[rel] = ("other", 0, oct(info.st_mode))
    return snapshot


def task_log_noise(airflow_logs: Path) -> list[str]:
    """The lines of every Airflow task log under ``airflow_logs`` that a successful run should
    not have: ERROR lines (Airflow labels whatever a task writes to stderr ERROR: MLflow's
    announcements and progress bars, warnings, TensorFlow's notices) and warnings from MLflow
    or TensorFlow (pickled models, an unpinned pip, a model without signature, retracing)."""
    import json

    noise = []
    for path in sorted(airflow_logs.glob("dag_id=*/**/*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            logger, level = str(record.get("logger", "")), record.get("level")
            library = logger.startswith(("mlflow", "tensorflow"))
            if level == "error" or (level == "warning" and library):
                event = str(record.get("event"))[:160]
                noise.append(f"{path.parent.name}: {level} {logger}: {event}")
    return noise


def venv_env() -> dict[str, str]:
    """Environment for subprocesses: the venv's bin first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(os.sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server():
    """A real S3-compatible HTTP server (moto's server mode) on localhost."""
    import subprocess
    import time
    import urllib.request

    port = _free_port()
    binary = Path(os.sys.executable).with_name("moto_server")
    process = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.2)
    yield endpoint
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def s3_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point medml's S3 client at the moto server with throwaway credentials."""
    monkeypatch.setenv("MEDML_S3_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-do-not-log")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return moto_server


def upload_tree(local: Path, bucket: str, prefix: str) -> int:
    """Upload every file under ``local`` to ``s3://bucket/prefix/`` (creating the bucket)."""
    from medml.data.sources import s3_client, upload_dir

    client = s3_client()
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return upload_dir(local, f"s3://{bucket}/{prefix.strip('/')}/", client=client)


def dags_test(
    env: dict[str, str], dag_id: str, logical_date: str, conf: dict, *extra: str
) -> subprocess.CompletedProcess:
    """Run `airflow dags test` and assert the DAG run finished in state success."""
    import json

    result = subprocess.run(
        ["airflow", "dags", "test", dag_id, logical_date, "-c", json.dumps(conf), *extra],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    finished = [line for line in result.stdout.splitlines() if "DagRun Finished" in line]
    assert finished and "state=success" in finished[-1], result.stdout[-4000:]
    return result


def run_user_recipe(recipe_yaml: str, name: str, source: Path, run_dir: Path) -> object:
    """``medml run`` (in process) with a recipe of the user's own, installed where medml finds
    one: ``$MEDML_HOME/recipes/<name>.yaml``. Returns typer's result."""
    from typer.testing import CliRunner

    from medml.cli import app

    recipes = Path(os.environ["MEDML_HOME"]) / "recipes"
    recipes.mkdir(parents=True, exist_ok=True)
    (recipes / f"{name}.yaml").write_text(recipe_yaml)
    args = ["run", "--source", str(source), "--recipe", name, "--run-dir", str(run_dir)]
    return CliRunner().invoke(app, args)


def write_digit(image: object, path: Path, size: int = 32) -> None:
    """One of scikit-learn's 8x8 digits (values 0-16) as a ``size`` x ``size`` grey PNG."""
    import cv2
    import numpy as np

    pixels = (np.asarray(image) * 15.9).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.resize(pixels, (size, size), interpolation=cv2.INTER_LINEAR))
