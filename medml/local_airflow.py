"""An embedded Airflow for the demo and the tests: SQLite metadata DB, medml's DAGs only.

This module starts Airflow's own CLI in subprocesses (``airflow db migrate``, ``airflow dags
test``, and for ``medml airflow-ui`` the API server, scheduler, DAG processor and triggerer);
it does not import Airflow, so the library stays importable without it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from medml.errors import MedmlError
from medml.settings import process_environment

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
"""The only address an embedded Airflow listens on."""
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


def local_api_env(env: dict[str, str], port: int, *, parallelism: int) -> dict[str, str]:
    """``env`` for Airflow components on one machine: the LocalExecutor with ``parallelism``
    workers, one API server worker on ``127.0.0.1:port`` that tasks reach too, no scheduler
    health-check server, and this environment's ``bin`` first on ``PATH``."""
    return {
        **env,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__API__HOST": LOOPBACK,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__BASE_URL": f"http://{LOOPBACK}:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{LOOPBACK}:{port}/execution/",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": LOOPBACK,
        "PATH": with_venv_on_path(env.get("PATH", "")),
    }


def api_server_command(port: int) -> list[str]:
    """``airflow api-server`` with one worker, listening on ``127.0.0.1:port`` only."""
    return [airflow_executable(), "api-server", "--host", LOOPBACK, "--port", str(port),
            "--workers", "1"]  # fmt: skip


API_START_LIMIT_S = 900.0
"""How long the embedded API server may take to answer: ~2 minutes on a loaded 2-core machine
was seen, so the limit is generous, and the wait says every 30 s what it is waiting for."""


def health_url(port: int) -> str:
    """The API server's health endpoint (answers without a login)."""
    return f"http://{LOOPBACK}:{port}/api/v2/monitor/health"


def answers(url: str) -> bool:
    """Whether ``url`` answers a GET with a success status within two seconds."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


@contextmanager
def api_server(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """An Airflow API server on a free loopback port for the duration of the block; yields the
    environment in which `airflow dags test --use-executor` runs each task through the
    LocalExecutor, so every task writes its log where the UI shows it."""
    import socket

    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
    env = local_api_env(env, port, parallelism=2)
    log = Path(env["AIRFLOW_HOME"]) / "api-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        server = subprocess.Popen(api_server_command(port), env=env, stdout=out,
                                  stderr=subprocess.STDOUT)  # fmt: skip
    try:
        started = time.monotonic()
        said = started
        while not answers(health_url(port)):
            waited = time.monotonic() - started
            if server.poll() is not None:
                raise AirflowRunFailed(f"the Airflow API server exited while starting; see {log}")
            if waited > API_START_LIMIT_S:
                raise AirflowRunFailed(
                    f"the Airflow API server did not answer {health_url(port)} within "
                    f"{API_START_LIMIT_S:.0f} s (a busy machine starts it slowly); see {log}"
                )
            if time.monotonic() - said >= 30:  # a busy machine: say what it waits for
                said = time.monotonic()
                print(f"waiting for the Airflow API server to answer {health_url(port)} "
                      f"({waited:.0f} s; it gives up after {API_START_LIMIT_S:.0f} s)",
                      file=sys.stderr, flush=True)  # fmt: skip
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


# `medml airflow-ui`: what `airflow standalone` runs, bound to 127.0.0.1 and stopped as a whole.

SIMPLE_AUTH_MANAGER = (
    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def ui_parallelism() -> int:
    """LocalExecutor workers of the UI: one per core, at least two (Airflow's default is 32)."""
    return max(2, os.cpu_count() or 1)


def ui_env(workdir: Path, port: int) -> dict[str, str]:
    """Environment of the UI's components: :func:`airflow_env` and :func:`local_api_env` on
    ``127.0.0.1:port``, with Airflow's simple auth manager (``airflow standalone`` forces it too:
    the API server creates the admin's password file on its first start)."""
    env = local_api_env(airflow_env(workdir), port, parallelism=ui_parallelism())
    env["AIRFLOW__CORE__AUTH_MANAGER"] = SIMPLE_AUTH_MANAGER
    env.setdefault("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", UI_USERS)
    return env


UI_USERS = "admin:admin,reviewer:admin"
"""The UI's users: two, so that a promotion ``admin`` requests can be approved by someone
else (the four-eyes rule refuses the requester's own approval); their passwords are generated
into ``<airflow home>/simple_auth_manager_passwords.json.generated`` on the first start."""


def ui_commands(port: int) -> dict[str, list[str]]:
    """The components of ``airflow standalone`` with no listener beyond the API server on
    127.0.0.1: the scheduler and the triggerer serve no logs (Airflow binds those servers to
    every interface, on 8793 and 8794); with the LocalExecutor on this machine the API server
    reads the task logs from their files."""
    airflow = airflow_executable()
    return {
        "api-server": api_server_command(port),
        "scheduler": [airflow, "scheduler", "--skip-serve-logs"],
        "dag-processor": [airflow, "dag-processor"],
        "triggerer": [airflow, "triggerer", "--skip-serve-logs"],
    }


def serve_ui(
    workdir: Path,
    port: int,
    *,
    on_ready: Callable[[], object],
    echo: Callable[[str], object] = print,
    grace: float = 20.0,
) -> int:
    """Run the demo's Airflow UI on ``127.0.0.1:port`` until SIGTERM, SIGINT or SIGHUP, or until
    one of its components exits; then stop them all (see :func:`run_components`).

    Migrates the metadata DB first, as ``airflow standalone`` does.

    Args:
        workdir: the demo's workdir (its Airflow home is ``workdir/airflow``).
        port: the API server's port on 127.0.0.1.
        on_ready: called once, when the API server first answers its health check.
        echo: where progress lines go.
        grace: seconds the components get to stop before they are killed.

    Returns:
        The exit code: 0 after a requested stop, 1 when a component exited on its own.

    Raises:
        AirflowRunFailed: the metadata DB could not be migrated.
    """
    env = ui_env(workdir, port)
    commands = ui_commands(port)
    log_dir = Path(env["AIRFLOW_HOME"]) / "ui-logs"
    echo(f"Starting Airflow ({', '.join(commands)}; their logs in {log_dir}) ...")
    run_logged([airflow_executable(), "db", "migrate"], env, log_dir / "db-migrate.log", mode="w")
    return run_components(commands, env, log_dir, ready=lambda: answers(health_url(port)),
                          on_ready=on_ready, echo=echo, grace=grace)  # fmt: skip


def run_components(
    commands: dict[str, list[str]],
    env: dict[str, str],
    log_dir: Path,
    *,
    ready: Callable[[], bool],
    on_ready: Callable[[], object],
    echo: Callable[[str], object] = print,
    grace: float = 20.0,
) -> int:
    """Run ``commands`` as a :class:`ComponentGroup` until SIGTERM, SIGINT or SIGHUP arrives or
    one of them exits, then stop them all (and everything they started).

    Args:
        commands: each component's name and command line.
        env: their environment.
        log_dir: each component writes its output to ``<log_dir>/<name>.log``.
        ready: whether the components are ready (polled until it first holds).
        on_ready: called once, when ``ready`` first holds.
        echo: where progress lines go.
        grace: seconds the components get to stop before they are killed.

    Returns:
        0 after a requested stop; 1 when a component exited on its own (the end of its log is
        echoed).
    """
    group = ComponentGroup(log_dir, env, grace=grace)
    with stop_requests() as requested:
        try:
            for name, argv in commands.items():
                group.start(name, argv)
            ended = supervise(group, requested, ready=ready, on_ready=on_ready)
            if ended is not None:
                echo(f"{ended[0]} exited (code {ended[1]}).")
        finally:
            try:
                echo(f"Stopping {', '.join(group.children)} ...")
            finally:  # even when the terminal is gone (SIGHUP) and the line cannot be written
                group.stop()
    if ended is None:
        echo("Stopped.")
        return 0
    echo(f"The end of {group.log(ended[0])}:\n{_tail(group.log(ended[0]))}")
    return 1


def supervise(
    group: ComponentGroup,
    requested: list[int],
    *,
    ready: Callable[[], bool],
    on_ready: Callable[[], object],
    poll: float = 0.5,
) -> tuple[str, int] | None:
    """Wait until ``requested`` is non-empty (returns None) or a child of ``group`` exits
    (returns its name and exit code); calls ``on_ready`` once, when ``ready`` first holds."""
    announced = False
    while not requested:
        if (ended := group.exited()) is not None:
            return ended
        if not announced and ready():
            on_ready()
            announced = True
        time.sleep(poll)
    return None


@contextmanager
def stop_requests(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[list[int]]:
    """While in the block, each of ``signals`` is appended to the yielded list instead of ending
    the process (so stopping the children is never cut short); the handlers are restored after."""
    requested: list[int] = []

    def request(signum: int, _frame: object) -> None:
        requested.append(signum)

    previous = {sig: signal.signal(sig, request) for sig in signals}
    try:
        yield requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class ComponentGroup:
    """Child processes, each leading a process group (a session) of its own that everything it
    starts joins, so that stopping a child's group stops its workers too.

    On Linux each child also gets SIGTERM from the kernel when its parent dies, so the children
    stop even when the process that started them is killed outright.

    Args:
        log_dir: each child writes its output to ``<log_dir>/<name>.log``.
        env: the children's environment.
        grace: seconds the children get to stop on SIGTERM before their groups are killed.
    """

    def __init__(self, log_dir: Path, env: dict[str, str], *, grace: float = 20.0) -> None:
        self.log_dir = log_dir
        self.env = env
        self.grace = grace
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self._before_exec = _parent_death_signal()

    def log(self, name: str) -> Path:
        """Where the child ``name`` writes its output."""
        return self.log_dir / f"{name}.log"

    def start(self, name: str, argv: list[str]) -> None:
        """Start ``argv`` as the child ``name``, in a new session (its own process group)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log(name), "wb") as out:
            self.children[name] = subprocess.Popen(
                argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=self._before_exec,
            )  # fmt: skip

    def exited(self) -> tuple[str, int] | None:
        """The first child found to have exited and its exit code; None while all run."""
        for name, child in self.children.items():
            if (code := child.poll()) is not None:
                return name, code
        return None

    def stop(self) -> None:
        """SIGTERM to each child, which stops what it started; once they have exited, or after
        ``grace`` seconds, SIGTERM to whatever is left in their groups, then SIGKILL to what is
        still there ``min(grace, 5)`` seconds later. Returns when every child has been reaped."""
        children = list(self.children.values())
        for child in children:
            if child.poll() is None:
                child.terminate()
        _wait_until(lambda: all(child.poll() is not None for child in children), self.grace)
        groups = [child.pid for child in children]

        def emptied() -> bool:
            for child in children:
                child.poll()  # reaps a leader that has exited: a zombie still counts as a member
            return not _live_groups(groups)

        _signal_groups(groups, signal.SIGTERM)
        if not _wait_until(emptied, min(self.grace, 5.0)):
            _signal_groups(groups, signal.SIGKILL)
        for child in children:
            child.wait()


def _parent_death_signal() -> Callable[[], None] | None:
    """On Linux, a function for a child to call before exec so that the kernel sends it SIGTERM
    when its parent dies (``prctl(PR_SET_PDEATHSIG)``); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def set_parent_death_signal() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return set_parent_death_signal


def _signal_groups(groups: list[int], signum: int) -> None:
    for group in groups:
        try:
            os.killpg(group, signum)
        except (ProcessLookupError, PermissionError):
            pass  # the group is empty (or its id was reused by someone else's session)


def _live_groups(groups: list[int]) -> list[int]:
    """The process groups among ``groups`` that still have a member."""
    live = []
    for group in groups:
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            continue
        live.append(group)
    return live


def _wait_until(done: Callable[[], bool], timeout: float) -> bool:
    """Poll ``done`` every 0.1 s for up to ``timeout`` seconds; whether it came true."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _tail(log: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of ``log`` (empty if it cannot be read)."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
