"""Faults and concurrency, with real processes: SIGKILL at random points and at named
failpoints, a tracking server that is not there, S3 snapshots that change, two runs at once.

After every fault, re-running the same step gives the result of a clean run: no partial output
taken for a finished one, no ``RUNNING`` MLflow orphans, no duplicate or untagged versions.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from medml import pipeline, runs, steps
from medml.io import COMPLETE_MARKER, require_complete
from medml.tracking import Tracking
from tests.conftest import TINY, upload_tree, venv_env

pytestmark = [pytest.mark.slow, pytest.mark.integration]
GATE_OFF = (
    "registry.gate.require_better_than_chance=false",
    "registry.gate.thresholds.balanced_accuracy.min=0",
)


def _medml(*args: str, env: dict[str, str] | None = None, timeout: int = 600):
    return subprocess.run(["medml", *args], env=env or _env(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    return {**venv_env(), **extra}


def _kill_after(args: list[str], delay: float, env: dict[str, str] | None = None) -> int | None:
    """Start ``medml ARGS``, SIGKILL it after ``delay`` s; its exit code if it ended first."""
    process = subprocess.Popen(["medml", *args], env=env or _env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        return process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return None


def _data_steps(run_dir: Path, source: Path, *overrides: str) -> runs.RunContext:
    ctx = runs.init_run(run_dir, source, "kidney-ct", overrides=[*TINY, *GATE_OFF, *overrides])
    pipeline.run_data_steps(ctx, echo=lambda _: None)
    return ctx


def _shard_bytes(shards: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(shards.iterdir())}


@pytest.fixture(scope="module")
def larger_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough images that preprocess takes a few seconds: room to be killed inside."""
    from medml.data.synthetic import synth_kidney_ct

    return synth_kidney_ct(tmp_path_factory.mktemp("larger") / "kidney-ct", n=1500, seed=5,
                           image_size=192).root  # fmt: skip


def test_preprocess_killed_during_first_write_and_replacement(
    larger_phantom: Path, tmp_path: Path
) -> None:
    """Wherever preprocess dies, the shards folder is the old complete one, the new complete
    one, or absent — never partial; a re-run gives the clean run's bytes."""
    settings = [*TINY, *GATE_OFF, "image.size=96", "image.workers=1"]
    run_dir = tmp_path / "run"
    ctx = runs.init_run(run_dir, larger_phantom, "kidney-ct", overrides=settings)
    for step in (steps.ingest, steps.validate, steps.split):
        step(run_dir)
    env = _env(MEDML_DVC_CACHE=str(tmp_path / "no-cache"))
    started = time.monotonic()  # a clean run, to know how long there is to be killed in
    assert _medml("preprocess", "--run-dir", str(run_dir), env=env).returncode == 0
    duration = time.monotonic() - started
    expected = _shard_bytes(ctx.layout.shards)
    rng = random.Random(7)
    outcomes = []
    for attempt in range(8):
        if attempt == 4:  # first writes: no shards folder before the kill
            shutil.rmtree(ctx.layout.shards)
        ended = _kill_after(["preprocess", "--run-dir", str(run_dir)],
                            rng.uniform(0.3, 0.95) * duration, env)  # fmt: skip
        shards = ctx.layout.shards
        if shards.exists():  # the old or the new folder, whole
            require_complete(shards, "preprocess", deep=True)
            assert _shard_bytes(shards) == expected
        outcomes.append("finished" if ended == 0 else "killed")
        env["MEDML_DVC_CACHE"] = str(tmp_path / f"no-cache-{attempt}")  # never a cache hit
    assert outcomes.count("killed") >= 4, outcomes
    result = _medml("preprocess", "--run-dir", str(run_dir), env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _shard_bytes(ctx.layout.shards) == expected


def _training_mid_epoch(
    phantom_dir: Path, tmp_path: Path
) -> tuple[runs.RunContext, Tracking, str, dict[str, str], subprocess.Popen]:
    """``medml train --fold 0`` in a child process, returned once it has logged an epoch."""
    ctx = _data_steps(tmp_path / "run", phantom_dir, "train.epochs=40", "train.patience=40")
    tracking = Tracking.from_env()
    client = tracking.activate()
    env = _env(MLFLOW_TRACKING_URI=tracking.uri)
    train = ["medml", "train", "--run-dir", str(ctx.layout.root), "--fold", "0"]
    process = subprocess.Popen(train, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    experiment = tracking.experiment_id(ctx.recipe.registry.experiment)
    while time.monotonic() < deadline:
        runs_ = client.search_runs([experiment], "tags.`medml.kind` = 'fold'")
        if runs_ and client.get_metric_history(runs_[0].info.run_id, "loss"):
            break
        time.sleep(0.5)
    return ctx, tracking, experiment, env, process


def test_killed_training_leaves_no_running_orphan(phantom_dir: Path, tmp_path: Path) -> None:
    ctx, tracking, experiment, env, process = _training_mid_epoch(phantom_dir, tmp_path)
    client = tracking.activate()
    time.sleep(random.Random(3).uniform(0.2, 2.0))
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert [r.info.status for r in client.search_runs([experiment], "tags.`medml.kind` = 'fold'")
            ] == ["RUNNING"]  # fmt: skip
    assert not (ctx.layout.fold(0).root / COMPLETE_MARKER).exists()

    result = _medml("train", "--run-dir", str(ctx.layout.root), "--fold", "0", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    folds = client.search_runs([experiment], "tags.`medml.kind` = 'fold'")
    statuses = sorted(r.info.status for r in folds)
    assert statuses == ["FAILED", "FINISHED"]
    require_complete(ctx.layout.fold(0).root, "train")


def test_sigterm_during_training_ends_its_mlflow_runs_killed(
    phantom_dir: Path, tmp_path: Path
) -> None:
    """A deleted pod or a stopped task gets SIGTERM: the fold's MLflow run ends KILLED at once
    (not RUNNING until a retry), and the command exits 143 with no fold published."""
    ctx, tracking, experiment, _, process = _training_mid_epoch(phantom_dir, tmp_path)
    client = tracking.activate()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    [fold] = client.search_runs([experiment], "tags.`medml.kind` = 'fold'")
    assert fold.info.status == "KILLED"
    assert not (ctx.layout.fold(0).root / COMPLETE_MARKER).exists()
    assert not ctx.layout.step_record("train", 0).exists()


def test_register_killed_between_version_and_tags_completes_on_retry(
    phantom_dir: Path, tmp_path: Path
) -> None:
    ctx = _data_steps(tmp_path / "run", phantom_dir)
    tracking = Tracking.from_env()
    for fold in ctx.folds:
        steps.train(ctx.layout.root, fold, tracking)
    steps.evaluate(ctx.layout.root, tracking)
    env = _env(MLFLOW_TRACKING_URI=tracking.uri, MEDML_FAILPOINT="register:version-created")
    killed = _medml("register", "--run-dir", str(ctx.layout.root), env=env)
    assert killed.returncode == -signal.SIGKILL
    client = tracking.activate()
    name = ctx.recipe.registry.model_name
    [half] = client.search_model_versions(f"name='{name}'")
    assert "medml.complete" not in half.tags
    refused = _medml("promote", name, "--version", "1", "--reason", "b",
                     env=_env(MLFLOW_TRACKING_URI=tracking.uri))  # fmt: skip
    assert refused.returncode == 5 and "incomplete" in refused.stderr

    retried = _medml("register", "--run-dir", str(ctx.layout.root),
                     env=_env(MLFLOW_TRACKING_URI=tracking.uri))  # fmt: skip
    assert retried.returncode == 0, retried.stderr[-2000:]
    [version] = client.search_model_versions(f"name='{name}'")  # still one version
    assert version.tags["medml.complete"] == "true" and version.tags["gate"] == "passed"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "1"
    again = json.loads(retried.stdout)
    assert again["version"] == "1"
    assert not client.search_runs([tracking.experiment_id(ctx.recipe.registry.experiment)],
                                  "attributes.status = 'RUNNING'")  # fmt: skip


def _aliases(client: object, name: str) -> dict[str, str]:
    return {
        alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()
    }


def test_a_run_killed_in_register_resumes_into_one_version_and_reruns_as_a_no_op(
    phantom_dir: Path, tmp_path: Path
) -> None:
    """``medml run --run-dir R`` killed after the version was created, then resumed: the
    finished steps are kept, the version is adopted and completed (one version, ever); run
    again, nothing changes; retrained folds cannot register a second version of the run."""
    tracking = Tracking.from_env()
    run_dir = tmp_path / "run"
    args = ["run", "--source", str(phantom_dir), "--recipe", "kidney-ct", "--run-dir",
            str(run_dir), *[f"--set={o}" for o in (*TINY, *GATE_OFF)]]  # fmt: skip
    env = _env(MLFLOW_TRACKING_URI=tracking.uri)
    killed = _medml(*args, env={**env, "MEDML_FAILPOINT": "register:version-created"})
    assert killed.returncode == -signal.SIGKILL
    client = tracking.activate()
    name = "kidney-ct-classifier"
    resumed = _medml(*args, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for step in ("ingest", "validate", "split", "preprocess", "train fold 0", "train fold 1",
                 "evaluate"):  # fmt: skip
        assert f"[{step}] finished earlier in this run; kept" in resumed.stdout, step
    [version] = client.search_model_versions(f"name='{name}'")
    assert version.tags["medml.complete"] == "true" and str(version.version) == "1"
    assert _aliases(client, name) == {"challenger": "1"}  # set by the resume

    again = _medml(*args, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "v1 alias=challenger (registered by this run before; nothing changed)" in again.stdout
    assert len(client.search_model_versions(f"name='{name}'")) == 1
    assert _aliases(client, name) == {"challenger": "1"}  # left alone

    steps.train(run_dir, 0, tracking)  # the fold trained again: other fold models
    steps.evaluate(run_dir, tracking)
    kept = _medml("register", "--run-dir", str(run_dir), env=env)  # still the run's one version
    assert kept.returncode == 0 and json.loads(kept.stdout)["already_registered"], kept.stderr
    assert len(client.search_model_versions(f"name='{name}'")) == 1


def test_unreachable_tracking_server_is_one_clear_error(phantom_dir: Path, tmp_path: Path) -> None:
    from tests.conftest import _free_port

    ctx = _data_steps(tmp_path / "run", phantom_dir)
    uri = f"http://medml:s3cr3t@127.0.0.1:{_free_port()}"
    started = time.monotonic()
    result = _medml("train", "--run-dir", str(ctx.layout.root), "--fold", "0",
                    env=_env(MLFLOW_TRACKING_URI=uri))  # fmt: skip
    seconds = time.monotonic() - started
    assert result.returncode == 3, result.stderr[-2000:]
    assert "cannot reach the MLflow tracking server at http://***@127.0.0.1" in result.stderr
    assert "s3cr3t" not in result.stderr and "Traceback" not in result.stderr
    assert seconds < 60  # bounded: a few logged attempts, not MLflow's ~250 s of retries


def test_s3_mirror_equals_the_snapshot_after_kills_and_deletions(
    s3_env: str, phantom_dir: Path, tmp_path: Path
) -> None:
    from medml.data.sources import s3_client
    from medml.dvc_cache import dvc_md5

    upload_tree(phantom_dir, "medml-data", "kidney-ct/2026-01-05")
    run_dir = tmp_path / "run"
    runs.init_run(run_dir, "s3://medml-data/kidney-ct/2026-01-05/", "kidney-ct",
                      overrides=TINY, logical_date="2026-01-05")  # fmt: skip
    env = _env(MEDML_S3_ENDPOINT_URL=s3_env, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
    rng = random.Random(11)
    for _ in range(3):  # killed mid-download: nothing half-written inside the mirror
        _kill_after(["ingest", "--run-dir", str(run_dir)], rng.uniform(2.5, 5.0), env)
        mirror = run_dir / "source"
        if mirror.exists():
            assert not [p for p in mirror.rglob("*") if p.name.endswith(".partial")]
    assert steps.ingest(run_dir)["images"] == 120
    snapshot_hash = json.loads((run_dir / "snapshot.json").read_text())["dvc_md5"]
    assert snapshot_hash == dvc_md5(phantom_dir)  # the mirror is exactly the snapshot

    victim = sorted((phantom_dir / "Normal").iterdir())[0].name
    s3_client().delete_object(Bucket="medml-data", Key=f"kidney-ct/2026-01-05/Normal/{victim}")
    after = steps.ingest(run_dir)
    assert after["images"] == 119 and not (run_dir / "source" / "Normal" / victim).exists()


def test_two_runs_started_together_keep_their_own_settings(
    phantom_dir: Path, tmp_path: Path
) -> None:
    """Two `medml run` in the same second on one MLflow SQLite store and one DVC cache."""
    home = tmp_path / "home"
    env = _env(MEDML_HOME=str(home))
    sizes = (32, 40)
    processes = [
        subprocess.Popen(["medml", "run", "--source", str(phantom_dir), "--recipe", "kidney-ct",
                          *[a for s in [*TINY, *GATE_OFF] for a in ("--set", s)],
                          "--set", f"image.size={size}"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for size in sizes
    ]  # fmt: skip
    outputs = [process.communicate(timeout=900) for process in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    run_dirs = sorted((home / "runs").glob("*/*"))
    assert len(run_dirs) == 2
    pinned = sorted(runs.load_context(d).recipe.image.size for d in run_dirs)
    assert pinned == list(sizes)
    client = Tracking.from_env(home).activate()
    versions = client.search_model_versions("name='kidney-ct-classifier'")
    assert sorted(v.version for v in versions) in ([1, 2], ["1", "2"])
    assert len({v.run_id for v in versions}) == 2
    for version in versions:  # each version carries its own run's settings
        params = json.loads(version.tags["params"])
        run_dir = Path(version.tags["run_dir"])
        assert params["image"]["size"] == runs.load_context(run_dir).recipe.image.size
        assert version.tags["medml.complete"] == "true"


@pytest.fixture(autouse=True)
def _no_failpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDML_FAILPOINT", raising=False)
    os.environ.pop("MEDML_FAILPOINT", None)
