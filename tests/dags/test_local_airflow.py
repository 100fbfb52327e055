"""The embedded Airflow: the demo's progress lines, read from `airflow dags test` output in
Airflow 3's own format, and `medml airflow-ui`: its components bound to 127.0.0.1, as one group
that a stop signal (or one component's exit) stops as a whole."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from medml.local_airflow import (
    ComponentGroup,
    DagTestProgress,
    airflow_env,
    run_components,
    ui_commands,
    ui_env,
    ui_parallelism,
)
from medml.settings import process_environment
from tests.conftest import REPO_ROOT, _free_port, venv_env

RUN = "manual__2026-11-24T05:21:55.936473+00:00"
LINES = [
    "2026-11-24 05:22:34.189665+00:00 [info     ] DAG bundles loaded: dags-folder "
    f"[airflow.dag_processing.bundles.manager.DagBundlesManager] dag_id=medml_retrain "
    f"loc=manager.py:304 map_index=-1 run_id={RUN} task_id=register try_number=1\n",
    "2026-11-24T05:22:01.348805Z [info     ] TaskInstance Finished: dag_id=medml_retrain, "
    f"task_id=prepare, run_id={RUN}, map_index=-1, ti_id=01a20c00, run_start_date=2026-11-24 "
    "05:21:56, run_end_date=2026-11-24 05:22:00, run_duration=4.1, state=success, "
    "executor=LocalExecutor(parallelism=2)\n",
    "2026-11-24T05:22:26.993380Z [info     ] TaskInstance Finished: dag_id=medml_retrain, "
    f"task_id=train, run_id={RUN}, map_index=1, ti_id=01a20c01, run_start_date=2026-11-24 "
    "05:22:13, run_end_date=2026-11-24 05:22:26, run_duration=13.2, state=failed, "
    "executor=LocalExecutor(parallelism=2)\n",
    "2026-11-24T05:22:39.927333Z [error    ] Successfully registered model 'x'. [task.stderr]\n",
]


def test_finished_tasks_become_one_line_each_and_the_run_id_is_kept() -> None:
    progress = DagTestProgress()
    lines = [message for line in LINES if (message := progress(line))]
    assert lines == ["  done: prepare", "  failed: train [fold 1]"]
    assert progress.run_id == RUN
    assert progress.reported == {("prepare", ""), ("train", "1")}


# `medml airflow-ui`: its components as one group, stopped as a whole.

LAUNCHER = """
import sys
from pathlib import Path

from medml.local_airflow import run_components
from medml.settings import process_environment

commands = {
    "sleeper": ["sleep", "300"],
    "parent": ["sh", "-c", "sleep 300 & sleep 300 & wait"],
}
sys.exit(run_components(commands, process_environment(), Path(sys.argv[1]), ready=lambda: True,
                        on_ready=lambda: print("ready", flush=True), grace=5))
"""


def _tree(pid: int) -> list[psutil.Process]:
    """``pid``'s descendants, once the test's "parent" child has started both of its sleeps."""
    deadline = time.monotonic() + 10
    while True:
        tree = psutil.Process(pid).children(recursive=True)
        if sum(p.name() == "sleep" for p in tree) == 3 or time.monotonic() > deadline:
            return tree
        time.sleep(0.1)


def _alive(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of ``processes`` still running (zombies excepted) after up to ``timeout`` s."""
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@contextlib.contextmanager
def _launched(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[psutil.Process]]]:
    """A launcher of a sleep and a shell with two sleeps, ready; all of them killed after."""
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tmp_path / "logs")], cwd=REPO_ROOT,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    tree: list[psutil.Process] = []
    try:
        assert launcher.stdout is not None and launcher.stdout.readline() == "ready\n"
        tree = _tree(launcher.pid)
        assert len(tree) == 4, [p.cmdline() for p in tree]  # sleep, sh and its two sleeps
        assert {os.getpgid(p.pid) for p in tree}.isdisjoint({os.getpgid(launcher.pid)})
        yield launcher, tree
    finally:
        for process in [*tree, launcher]:
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                process.kill()
        launcher.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_to_the_launcher_stops_every_child_and_grandchild(
    tmp_path: Path, signum: signal.Signals
) -> None:
    with _launched(tmp_path) as (launcher, tree):
        launcher.send_signal(signum)
        assert launcher.wait(timeout=15) == 0
        assert _alive(tree, timeout=5) == []


def test_the_children_stop_when_the_terminal_is_gone(tmp_path: Path) -> None:
    with _launched(tmp_path) as (launcher, tree):
        launcher.stdout.close()  # writing "Stopping ..." fails: the children are stopped anyway
        launcher.send_signal(signal.SIGHUP)
        launcher.wait(timeout=15)
        assert _alive(tree, timeout=5) == []


def test_the_children_stop_when_the_launcher_is_killed_outright(tmp_path: Path) -> None:
    with _launched(tmp_path) as (launcher, _):
        children = psutil.Process(launcher.pid).children()
        launcher.kill()
        launcher.wait(timeout=5)
        assert _alive(children, timeout=10) == []  # the kernel's SIGTERM on its death


def test_a_child_that_exits_stops_the_others_and_fails(tmp_path: Path) -> None:
    lines: list[str] = []
    started = time.monotonic()
    code = run_components(
        {"sleeper": ["sleep", "300"], "quitter": ["sh", "-c", "sleep 1; echo boom; exit 3"]},
        process_environment(), tmp_path, ready=lambda: False, on_ready=lambda: None,
        echo=lines.append, grace=5,
    )  # fmt: skip
    assert code == 1 and time.monotonic() - started < 10
    assert lines[0] == "quitter exited (code 3).", lines
    assert "boom" in lines[-1]


def test_what_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    group = ComponentGroup(tmp_path, process_environment(), grace=1)
    group.start("stubborn", ["sh", "-c", "trap '' TERM; sleep 300 & wait"])
    leader = psutil.Process(group.children["stubborn"].pid)
    deadline = time.monotonic() + 10
    while not leader.children() and time.monotonic() < deadline:
        time.sleep(0.1)
    tree = [leader, *leader.children(recursive=True)]
    assert len(tree) == 2
    started = time.monotonic()
    group.stop()
    assert 1 <= time.monotonic() - started < 5  # the grace, then SIGTERM/SIGKILL to the group
    assert _alive(tree, timeout=1) == []


def test_the_ui_runs_airflow_standalone_without_its_extra_listeners() -> None:
    commands = ui_commands(8080)
    assert set(commands) == {"api-server", "scheduler", "dag-processor", "triggerer"}
    assert commands["api-server"][2:] == ["--host", "127.0.0.1", "--port", "8080", "--workers", "1"]
    assert "--skip-serve-logs" in commands["scheduler"]
    assert "--skip-serve-logs" in commands["triggerer"]
    env = ui_env(Path("/tmp/w"), 8080)
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__CORE__PARALLELISM"] == str(ui_parallelism()) == str(max(2, os.cpu_count()))
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8080/execution/"
    # two users: one requests a promotion, the other approves it (four-eyes)
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin,reviewer:admin"


def _healthy(port: int) -> bool:
    """Whether the API server answers and reports every other component healthy."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health") as answer:
            health = json.load(answer)
    except OSError:
        return False
    return all(health.get(part, {}).get("status") == "healthy"
               for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"))  # fmt: skip


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


def _listeners(processes: list[psutil.Process]) -> set[tuple[str, int, str]]:
    """Every listening TCP socket of ``processes``: address, port, process name."""
    found = set()
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port, process.name()))
    return found


@pytest.mark.slow
def test_airflow_ui_listens_on_loopback_only_and_sigterm_stops_every_child(
    tmp_path: Path,
) -> None:
    workdir, port = tmp_path / "demo", _free_port()
    env = {**airflow_env(workdir), "PATH": venv_env()["PATH"]}
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True,
                   timeout=300)  # fmt: skip
    out = tmp_path / "launcher.out"
    with open(out, "w") as handle:
        launcher = subprocess.Popen(
            [str(Path(sys.executable).with_name("medml")), "airflow-ui", "--workdir", str(workdir),
             "--port", str(port)], env=venv_env(), stdout=handle, stderr=subprocess.STDOUT,
        )  # fmt: skip
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        while not _healthy(port):
            assert launcher.poll() is None, out.read_text()[-3000:]
            assert time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(2)
        time.sleep(3)  # past the components' start-up, when Airflow would start its log servers
        tree = psutil.Process(launcher.pid).children(recursive=True)
        listeners = _listeners(tree)
        assert ("127.0.0.1", port, "airflow") in {(ip, p, n.split()[0]) for ip, p, n in listeners}
        assert {ip for ip, _, _ in listeners} <= {"127.0.0.1", "::1"}, listeners
        assert not {p for _, p, _ in listeners} & {8793, 8794}, listeners
        names = [" ".join(p.cmdline()) for p in tree if p.is_running()]
        assert not [n for n in names if n.startswith("airflow serve-logs")], names
        assert sum("LocalExecutor" in n for n in names) <= ui_parallelism(), names
        # The admin's password file is there, and the launcher says where to log in.
        assert (workdir / "airflow" / "simple_auth_manager_passwords.json.generated").is_file()
        printed = out.read_text()
        assert f"Airflow UI on http://127.0.0.1:{port}" in printed, printed
        assert "simple_auth_manager_passwords.json.generated" in printed
        # The Models plugin, mounted by the real API server: nothing without a session.
        for page in ("/medml/", "/medml/openapi.json", "/medml/docs", "/medml/redoc"):
            assert _status(f"http://127.0.0.1:{port}{page}") in (401, 403, 404), page
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=40) == 0, out.read_text()[-3000:]
        assert _alive(tree, timeout=5) == [], out.read_text()[-3000:]
    finally:
        for process in [*tree, launcher]:
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                process.kill()
