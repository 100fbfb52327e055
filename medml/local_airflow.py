"""An embedded Airflow for the demo and the tests: SQLite metadata DB, medml's DAGs only.

This module starts Airflow's own CLI in subprocesses (``airflow db migrate``, ``airflow dags
test``); it does not import Airflow, so the library stays importable without it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from medml.errors import MedmlError
from medml.settings import process_environment

REPO_ROOT = Path(__file__).resolve().parent.parent
_TASK_END = re.compile(r"\[DAG TEST\] end task task_id=(\S+) map_index=(-?\d+)")
_TI_FINISHED = re.compile(
    r"TaskInstance Finished: dag_id=\S+, task_id=([^,]+), run_id=[^,]+, map_index=(-?\d+),"
    r".*?, state=(\w+),"
)


class AirflowRunFailed(MedmlError):
    """An embedded Airflow command failed; the message names the log to read."""


def airflow_env(workdir: Path) -> dict[str, str]:
    """Environment for an embedded Airflow (SQLite metadata DB) and MLflow store under workdir."""
    env = process_environment()
    env.update(
        {
            "AIRFLOW_HOME": str(workdir / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            "MEDML_HOME": str(workdir),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "GX_ANALYTICS_ENABLED": "false",
            # Its own store under workdir, never one inherited from the calling process
            # (mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI to os.environ).
            "MLFLOW_TRACKING_URI": f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}",
        }
    )
    env.pop("MEDML_ARTIFACT_ROOT", None)
    return env


@contextmanager
def api_server(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """An Airflow API server on a free loopback port for the duration of the block; yields the
    environment in which `airflow dags test --use-executor` runs each task through the
    LocalExecutor, so every task writes its log where the UI shows it."""
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**env, "AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "AIRFLOW__CORE__PARALLELISM": "2",
           "AIRFLOW__API__PORT": str(port), "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
           "PATH": with_venv_on_path(env.get("PATH", ""))}  # fmt: skip
    log = Path(env["AIRFLOW_HOME"]) / "api-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        server = subprocess.Popen([airflow_executable(), "api-server", "--port", str(port)],
                                  env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AirflowRunFailed(
                        f"the Airflow API server did not start; see {log}"
                    ) from None
                time.sleep(1)
        yield env
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def with_venv_on_path(path: str) -> str:
    """``PATH`` with this environment's ``bin`` first (Airflow starts uvicorn and friends)."""
    return f"{Path(airflow_executable()).parent}{os.pathsep}{path}"


def airflow_executable() -> str:
    """The ``airflow`` script of this interpreter's environment."""
    return str(Path(sys.executable).with_name("airflow"))


_RUN_ID = re.compile(r"run_id=(\S+?)[,\s]")


class DagTestProgress:
    """One short line per finished or failed task of `airflow dags test` output.

    Airflow logs a task's end from executor events, and under load it can skip a task's
    "TaskInstance Finished" line; :meth:`unreported` fills the gaps from Airflow's own records
    once the run is over, so every task is reported exactly once.
    """

    def __init__(self) -> None:
        self.reported: set[tuple[str, str]] = set()
        self.run_id: str | None = None

    def __call__(self, line: str) -> str | None:
        """The progress line for one line of `airflow dags test` output, if it has one."""
        if self.run_id is None and (found := _RUN_ID.search(line)):
            self.run_id = found.group(1)
        match = _TASK_END.search(line)
        finished = _TI_FINISHED.search(line)
        if match or finished:
            task, index = (match or finished).groups()[:2]
            state = finished.group(3) if finished else "success"
            return self._line(task, "" if index == "-1" else index, state)
        if ("[error" in line and "[task.stderr]" not in line) or "Traceback" in line:
            return "  " + line.rstrip()[:240]
        return None

    def unreported(self, env: dict[str, str], dag_id: str) -> list[str]:
        """Progress lines for the run's tasks that the live output did not report.

        Reads ``airflow tasks states-for-dag-run``; an unreadable answer yields no lines (the
        live lines and the log remain).
        """
        if self.run_id is None:
            return []
        import json

        result = subprocess.run(
            [airflow_executable(), "tasks", "states-for-dag-run", dag_id, self.run_id,
             "--output", "json"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        start = result.stdout.find("[")
        try:
            states = json.loads(result.stdout[start:]) if start >= 0 else []
        except json.JSONDecodeError:
            return []
        lines = []
        for row in sorted(states, key=lambda row: (row.get("end_date") or "", row["task_id"])):
            index = str(row.get("map_index") or "")
            if (row["task_id"], index) not in self.reported and row.get("state"):
                lines.append(self._line(row["task_id"], index, row["state"]))
        return lines

    def _line(self, task: str, index: str, state: str) -> str:
        self.reported.add((task, index))
        label = "done" if state == "success" else state
        return f"  {label}: {task}" + (f" [fold {index}]" if index not in ("", "-1") else "")


def run_logged(
    cmd: list[str],
    env: dict[str, str],
    log: Path,
    *,
    mode: str,
    progress: Callable[[str], str | None] | None = None,
    echo: Callable[[str], object] = print,
) -> None:
    """Run ``cmd``, appending (``mode="a"``) or writing its output to ``log``.

    Raises:
        AirflowRunFailed: the command exited non-zero or reported a failed DAG run.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, mode) as handle:
        process = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        assert process.stdout is not None
        failed_run = False
        for line in process.stdout:
            handle.write(line)
            if "DagRun failed" in line or "state:failed" in line:
                failed_run = True
            message = progress(line) if progress is not None else None
            if message:
                echo(message)
        code = process.wait()
    if code != 0 or failed_run:
        raise AirflowRunFailed(f"`{' '.join(cmd[:3])} ...` failed (exit {code}); see {log}")
