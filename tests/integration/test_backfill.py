"""A local Airflow for real (scheduler + dag-processor + api-server + triggerer, SQLite,
LocalExecutor): back-fills over three dates of phantom snapshots, the Models plugin view, and a
reviewer rejecting a promotion through the human-in-the-loop API."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from medml.data.synthetic import synth_kidney_ct
from medml.local_airflow import airflow_env
from medml.tracking import Tracking
from tests.conftest import _free_port, task_log_noise, venv_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DATES = ["2026-01-05", "2026-01-12", "2026-01-19"]  # Mondays: the DAG's weekly schedule
FAST = ["image.size=32", "split.folds=2", "train.epochs=1", "data.min_images_per_class=2",
        "registry.gate.require_better_than_chance=false",
        "registry.gate.thresholds.balanced_accuracy.min=0"]  # fmt: skip


# Transient refusals: SQLite allows one writer (a busy scheduler can lock it briefly), and the
# scheduler marks a finished back-fill complete on a 30 s timer between its loops, which on a
# loaded 2-core machine can come minutes after the back-fill's last run ended.
_TRANSIENT = ("database is locked", "Another backfill is running")


def _airflow(env: dict[str, str], *args: str, timeout: int = 120, patience: float = 600) -> str:
    deadline = time.monotonic() + patience
    while True:
        result = subprocess.run(["airflow", *args], env=env, capture_output=True, text=True,
                                timeout=timeout)  # fmt: skip
        output = result.stderr + result.stdout
        transient = any(text in output for text in _TRANSIENT)
        if result.returncode == 0 or not transient or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert result.returncode == 0, f"airflow {args}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result.stdout


def _runs(env: dict[str, str]) -> list[dict]:
    out = _airflow(env, "dags", "list-runs", "medml_retrain", "-o", "json")
    for line in reversed(out.splitlines()):  # the JSON is the last line; logs may precede it
        if line.startswith("["):
            try:
                runs = json.loads(line)
            except json.JSONDecodeError:
                continue
            # unpausing also starts the latest scheduled run (no snapshot there): not ours
            return [r for r in runs if r["run_id"].startswith("backfill__")]
    return []


def _wait_for(env: dict[str, str], count: int, deadline: float) -> list[dict]:
    while time.monotonic() < deadline:
        runs = _runs(env)
        done = [r for r in runs if r["state"] in ("success", "failed")]
        if len(done) >= count:
            return runs
        time.sleep(5)
    raise AssertionError(f"runs did not finish in time: {_runs(env)}")


@pytest.fixture(scope="module")
def airflow_stack(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("airflow-stack")
    port = _free_port()
    env = {
        **airflow_env(workdir),
        "PATH": venv_env()["PATH"],
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
        "MEDML_HOME": str(workdir),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # local test stack only
    }
    _airflow(env, "db", "migrate", timeout=300)
    logs = workdir / "logs"
    logs.mkdir()
    procs = [
        subprocess.Popen(["airflow", component, *args], env=env,
                         stdout=open(logs / f"{component}.log", "w"), stderr=subprocess.STDOUT)
        for component, args in [("api-server", ["--port", str(port)]), ("scheduler", []),
                                ("dag-processor", []), ("triggerer", [])]
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while "medml_retrain" not in _airflow(env, "dags", "list", "-o", "plain"):
            assert time.monotonic() < deadline, "the dag-processor did not parse the DAGs"
            time.sleep(3)
        _airflow(env, "dags", "unpause", "medml_retrain")
        yield env, workdir, port
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_backfill_three_dates_then_reprocess(airflow_stack, tmp_path: Path) -> None:
    env, workdir, port = airflow_stack
    snapshots = tmp_path / "snapshots"
    for i, date in enumerate(DATES):
        synth_kidney_ct(snapshots / date, n=100, seed=i, image_size=64, slices_per_patient=(1, 2))
    conf = json.dumps({"source": f"{snapshots}/{{ds}}", "recipe": "kidney-ct", "overrides": FAST})
    window = ["--dag-id", "medml_retrain", "--from-date", DATES[0], "--to-date", "2026-01-20",
              "--dag-run-conf", conf]  # fmt: skip
    _airflow(env, "backfill", "create", *window)
    runs = _wait_for(env, 3, time.monotonic() + 900)
    assert [r["state"] for r in runs] == ["success"] * 3, runs

    client = Tracking.from_env(workdir).activate()
    versions = client.search_model_versions("name='kidney-ct-classifier'")
    assert sorted(v.tags["logical_date"] for v in versions) == DATES  # each its own snapshot
    first_dirs = sorted(workdir.glob("runs/*/*/run.json"))
    assert len(first_dirs) == 3

    first = {p.parent: p.read_text() for p in first_dirs}
    assert all(json.loads((d / "preprocess.json").read_text())["cache"] == "miss" for d in first)
    noise = task_log_noise(workdir / "airflow" / "logs")  # LocalExecutor task processes: no
    assert not noise, noise[:10]  # ERROR line, no MLflow/TensorFlow warning

    # A data engineer re-processes the first date (one date shows it; each run is ~1 min here)
    started = time.time()
    again = ["--dag-id", "medml_retrain", "--from-date", DATES[0], "--to-date", "2026-01-06",
             "--dag-run-conf", conf, "--reprocess-behavior", "completed"]  # fmt: skip
    _airflow(env, "backfill", "create", *again)
    deadline = time.monotonic() + 900
    while True:  # the first date's run is cleared and runs again
        runs = _runs(env)
        rerun = [r for r in runs if r["state"] == "success" and r.get("end_date")
                 and _timestamp(r["end_date"]) > started]  # fmt: skip
        if len(rerun) == 1:
            break
        assert time.monotonic() < deadline and not any(r["state"] == "failed" for r in runs), runs
        time.sleep(5)
    assert rerun[0]["run_id"].startswith(f"backfill__{DATES[0]}"), rerun
    for run_dir in first:  # the re-run checked the shards out of DVC's cache: no decoding again
        expected = "hit" if run_dir.parent.name == DATES[0] else "miss"  # runs/<date>/<run id>
        assert json.loads((run_dir / "preprocess.json").read_text())["cache"] == expected, run_dir
    assert len(list((workdir / "dvc-cache" / "medml-runs").rglob("*.json"))) == 3  # per snapshot
    hashes = {v.tags["logical_date"]: v.tags["data_hash"] for v in versions}
    assert len(set(hashes.values())) == 3 and all(h.endswith(".dir") for h in hashes.values())
    versions = client.search_model_versions("name='kidney-ct-classifier'")
    assert sorted(v.tags["logical_date"] for v in versions) == DATES  # a re-run: no new version

    # Reviewers see the result in Airflow itself: the Models plugin served by the API server.
    from medml.promotion import promote

    promote(Tracking.from_env(workdir), "kidney-ct-classifier", 2, reviewer="alice",
            reason="best Stone sensitivity of the back-fill")  # fmt: skip
    page = _get(f"http://127.0.0.1:{port}/medml/")
    assert "kidney-ct-classifier" in page and "champion" in page and "alice" in page
    _screenshot(f"http://127.0.0.1:{port}/medml/", tmp_path / "models-view.png")


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


def _screenshot(url: str, path: Path) -> None:
    """Headless Chromium screenshot of the view (skipped where Chromium is not installed);
    copied to $MEDML_SCREENSHOT_DIR when set."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={path.parent / 'chromium-profile'}",
         "--window-size=1400,900", f"--screenshot={path}", url],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert path.read_bytes()[:4] == b"\x89PNG"
    if os.environ.get("MEDML_SCREENSHOT_DIR"):
        shutil.copy(path, Path(os.environ["MEDML_SCREENSHOT_DIR"]) / path.name)


def _timestamp(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_reviewer_rejects_a_promotion_in_the_ui(airflow_stack) -> None:
    """Runs after the back-fill test (same stack, its registered versions)."""
    import urllib.request

    env, workdir, port = airflow_stack
    tracking = Tracking.from_env(workdir)
    client = tracking.activate()
    champion = str(client.get_model_version_by_alias("kidney-ct-classifier", "champion").version)
    conf = json.dumps({"model": "kidney-ct-classifier", "version": "3", "reviewer": "bob",
                       "reason": "newer data"})  # fmt: skip
    _airflow(env, "dags", "unpause", "medml_promote")
    _airflow(env, "dags", "trigger", "medml_promote", "--run-id", "review-1", "--conf", conf)

    base = f"http://127.0.0.1:{port}/api/v2/dags/medml_promote/dagRuns/review-1"
    hitl = f"{base}/taskInstances/approve/-1/hitlDetails"
    deadline = time.monotonic() + 600
    while True:  # wait until the approval request is waiting for a human
        try:
            details = json.loads(_get(hitl))
            if details.get("response_received") is False:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the approval request never appeared"
        time.sleep(3)
    # What the reviewer reads (rendered as Markdown): a table, and a link to the full report
    body = details["body"]
    assert "| kidney-ct-classifier | candidate v3 | champion v" in body and "|---|" in body
    assert "| balanced accuracy |" in body, body
    link = f"(http://127.0.0.1:{port}/medml/review/kidney-ct-classifier/3)"
    assert link in body, body
    assert "<title>Review kidney-ct-classifier" in _get(link.strip("()"))
    # Answer once the scheduler has taken in the executor's report that the paused (awaiting
    # input) execution ended. Airflow 3.3's new `awaiting_input` state races otherwise: an answer
    # that queues the resumed task before that report arrives gets the task marked failed
    # ("finished with state success, but the task instance's state attribute is queued").
    # People answer in minutes; the test answers within a second, so it waits for the report.
    report = ("Received executor event with state success for task instance TaskInstanceKey("
              "dag_id='medml_promote', task_id='approve', run_id='review-1'")  # fmt: skip
    while report not in (workdir / "logs" / "scheduler.log").read_text():
        assert time.monotonic() < deadline, "the scheduler never saw the approval task pause"
        time.sleep(1)
    request = urllib.request.Request(
        hitl, method="PATCH", headers={"Content-Type": "application/json"},
        data=json.dumps({"chosen_options": ["Reject"]}).encode(),
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200

    while True:
        run = json.loads(_get(base))
        if run["state"] in ("success", "failed"):
            break
        assert time.monotonic() < deadline, run
        time.sleep(3)
    assert run["state"] == "success"
    assert str(client.get_model_version_by_alias("kidney-ct-classifier", "champion").version) == (
        champion  # rejected: no alias moved
    )
    from medml.promotion import audit_log

    last = audit_log(tracking, "kidney-ct-classifier")[-1]
    assert (last["event"], last["version"]) == ("rejected", "3")
