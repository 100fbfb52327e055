"""MLflow tracking/registry settings and run helpers (resolved at call time, never at import)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medml.errors import MedmlError, Terminated, redact
from medml.settings import Settings, set_library_defaults

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

RUN_KEY_TAG = "medml.run_key"
KIND_TAG = "medml.kind"
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
"""MLflow 3's UI opens such an experiment on its training runs (not the GenAI overview)."""


class TrackingUnavailable(MedmlError):
    """The MLflow tracking store cannot be reached; the message names the (redacted) URI."""


_READY: set[str] = set()
REACH_ATTEMPTS = 4


def _prepare_store(uri: str) -> None:
    if uri in _READY:
        return
    if uri.startswith(("http://", "https://")):
        _wait_for_server(uri)
        # MLflow's own retries (7 with factor 2: ~250 s) become a few seconds.
        set_library_defaults(
            (
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                "MLFLOW_HTTP_REQUEST_TIMEOUT",
            )
        )
    elif uri.startswith("sqlite:///"):
        _create_sqlite_store(Path(uri.removeprefix("sqlite:///")), uri)
    _READY.add(uri)


def _wait_for_server(uri: str) -> None:
    import http.client
    import urllib.error
    import urllib.request

    import tenacity

    request = _health_request(uri)

    def reach() -> None:
        try:
            with urllib.request.urlopen(request, timeout=5):
                return
        except urllib.error.HTTPError:
            return  # it answers (a server without /health, or behind auth): reachable
        except http.client.HTTPException as err:  # something answers, but not HTTP
            raise ConnectionError(f"not an HTTP server ({type(err).__name__})") from None

    def warn(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception()
        logger.warning(
            "MLflow tracking server %s unreachable (%s), attempt %d/%d; retrying in %d s",
            redact(uri), getattr(error, "reason", error), state.attempt_number, REACH_ATTEMPTS,
            state.upcoming_sleep,
        )  # fmt: skip

    try:
        tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(OSError),  # URLError is an OSError
            stop=tenacity.stop_after_attempt(REACH_ATTEMPTS),
            wait=tenacity.wait_exponential(multiplier=1, min=1),  # 1, 2, 4 … s
            before_sleep=warn, reraise=True,
        )(reach)  # fmt: skip
    except OSError as err:
        raise TrackingUnavailable(
            f"cannot reach the MLflow tracking server at {redact(uri)} after {REACH_ATTEMPTS} "
            f"attempts ({getattr(err, 'reason', err)}); check MLFLOW_TRACKING_URI and that the "
            "server is running"
        ) from None


def _health_request(uri: str) -> Any:
    """A request for the server's ``/health``; credentials in the URI (``user:pw@``), which
    urllib cannot take in a URL, go into a Basic ``Authorization`` header."""
    import base64
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(uri)
    netloc = parts.hostname or ""
    netloc = f"[{netloc}]" if ":" in netloc else netloc
    netloc += f":{parts.port}" if parts.port else ""
    path = parts.path.rstrip("/") + "/health"
    url = urllib.parse.urlunsplit((parts.scheme, netloc, path, "", ""))
    request = urllib.request.Request(url)
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    return request


def _create_sqlite_store(path: Path, uri: str) -> None:
    import fcntl

    import mlflow

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process creates/migrates the tables at a time
        mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)


@contextmanager
def tracking_errors(tracking: Tracking) -> Iterator[None]:
    """Turn a lost tracking server (after MLflow's bounded retries) into
    :class:`TrackingUnavailable` naming the URI, instead of a library traceback."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as err:
        raise TrackingUnavailable(_lost(tracking, err)) from None
    except MlflowException as err:
        if "API request to" in str(err) and "failed with exception" in str(err):
            raise TrackingUnavailable(_lost(tracking, err)) from None
        raise


def _lost(tracking: Tracking, err: Exception) -> str:
    return (f"lost the MLflow tracking server at {tracking.uri} ({type(err).__name__}); the step "
            "left nothing half-registered that a re-run does not finish: re-run it when the "
            "server is back")  # fmt: skip


def _earliest(runs: list[Any]) -> str:
    return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id


def _log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(key, str(value)[:6000]) for key, value in sorted(params.items())]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[start : start + 100])


def version_uri(name: str, version: str | int) -> str:
    """``models:/NAME/VERSION``."""
    return f"models:/{name}/{version}"


def alias_uri(name: str, alias: str) -> str:
    """``models:/NAME@ALIAS``."""
    return f"models:/{name}@{alias}"


def models_uri(reference: str) -> str:
    """A model reference as a ``models:/`` URI: ``NAME@alias``, ``NAME/version`` or a URI."""
    return reference if reference.startswith("models:/") else f"models:/{reference}"


@dataclass(frozen=True)
class Tracking:
    """Where MLflow runs, artifacts and registered models live."""

    uri: str
    artifact_root: str | None
    """Where new experiments keep their artifacts; None: where the tracking server says."""

    @classmethod
    def from_env(cls, home: Path | None = None, *, uri: str | None = None) -> Tracking:
        """``uri`` or ``MLFLOW_TRACKING_URI`` if set, else SQLite under ``home`` (default
        :func:`~medml.io.medml_home`); artifacts under ``MEDML_ARTIFACT_ROOT`` if set, else
        where a tracking server keeps them (its ``--artifacts-destination``, reachable from
        every worker), else beside the SQLite store."""
        settings = Settings.from_env()
        home = Path(home).resolve() if home is not None else settings.home
        uri = uri or settings.tracking_uri or f"sqlite:///{home / 'mlflow.db'}"
        served = uri.startswith(("http://", "https://", "databricks"))
        artifacts = settings.artifact_root or (None if served else (home / "mlartifacts").as_uri())
        return cls(uri=uri, artifact_root=artifacts)

    def activate(self) -> MlflowClient:
        """Point the mlflow module at this store and return a client for it.

        The first call per store checks that it can be reached (a tracking server: a few
        logged attempts with backoff, then :class:`TrackingUnavailable` naming the URI; a
        SQLite file: created under a file lock, so two processes starting on a fresh store do
        not both create its tables).
        """
        import mlflow

        _prepare_store(self.uri)
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        return mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def require_existing(self) -> None:
        """Refuse to read from a store that does not exist (instead of creating an empty one).

        Raises:
            TrackingUnavailable: a SQLite store's file is missing.
        """
        if self.uri.startswith("sqlite:///"):
            path = Path(self.uri.removeprefix("sqlite:///"))
            if not path.is_file():
                raise TrackingUnavailable(
                    f"no MLflow store at {path}; give --tracking-uri (e.g. "
                    "sqlite:///.medml/demo/mlflow.db after `make demo`), or set "
                    "MLFLOW_TRACKING_URI or MEDML_HOME"
                )

    def model_names(self) -> list[str]:
        """The registered model names in this store."""
        return sorted(m.name for m in self.activate().search_registered_models())

    def close_orphans(self, experiment: str, tags: dict[str, str]) -> list[str]:
        """Mark ``FAILED`` the runs still ``RUNNING`` with these tags (left by a killed process
        that was retried); returns their ids."""
        client = self.activate()
        matches = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        running = f"{matches} and attributes.status = 'RUNNING'"
        found = client.search_runs([self.experiment_id(experiment)], filter_string=running)
        for run in found:
            client.set_tag(run.info.run_id, "medml.orphaned", "killed before it ended; retried")
            client.set_terminated(run.info.run_id, "FAILED")
        return [run.info.run_id for run in found]

    def experiment_id(self, name: str) -> str:
        """Id of experiment ``name``, created (with artifacts under ``artifact_root``) if new."""
        client = self.activate()
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        from mlflow.exceptions import MlflowException

        location = f"{self.artifact_root.rstrip('/')}/{name}" if self.artifact_root else None
        try:
            return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
        except MlflowException:  # created concurrently by another task: use theirs
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    @contextmanager
    def run(
        self,
        experiment: str = "",
        *,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        parent_run_id: str | None = None,
        run_id: str | None = None,
    ) -> Iterator[str]:
        """The one way medml opens an MLflow run: as the active run, yielding its id.

        Starts a new run in ``experiment`` (a child of ``parent_run_id`` if given), or resumes
        ``run_id``. The run ends ``FINISHED``, or ``FAILED`` when the block raises, so a
        failed step never leaves a run ``RUNNING``.
        """
        import mlflow

        self.activate()
        if run_id is not None:
            active = mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None)
        else:
            active = mlflow.start_run(
                experiment_id=self.experiment_id(experiment), run_name=run_name,
                parent_run_id=parent_run_id, tags=tags, nested=parent_run_id is not None,
            )  # fmt: skip
        try:
            yield active.info.run_id
        except (Terminated, KeyboardInterrupt):
            mlflow.end_run("KILLED")
            raise
        except BaseException:
            mlflow.end_run("FAILED")
            raise
        mlflow.end_run()

    def pipeline_run(
        self, experiment: str, run_key: str, run_name: str, tags: dict[str, str],
        params: dict[str, str] | None = None,
    ) -> str:  # fmt: skip
        """Id of the parent run for one pipeline run, created on first use (with ``params``).

        Every step of one run (folds, evaluation, registration) logs under this parent, looked up
        by the ``medml.run_key`` tag, so retried tasks and separate processes find the same run.
        Two tasks creating it at once converge on the earliest one; the other is deleted.
        """
        client = self.activate()
        experiment_id = self.experiment_id(experiment)
        query = f"tags.`{RUN_KEY_TAG}` = '{run_key}' and tags.`{KIND_TAG}` = 'pipeline'"
        found = client.search_runs([experiment_id], filter_string=query)
        if found:
            return _earliest(found)
        from mlflow.tracking.context.registry import resolve_tags

        run = client.create_run(  # resolve_tags: who and where from, as mlflow.start_run records
            experiment_id,
            run_name=run_name,
            tags=resolve_tags({**tags, RUN_KEY_TAG: run_key, KIND_TAG: "pipeline"}),
        )
        winner = _earliest(client.search_runs([experiment_id], filter_string=query))
        if winner != run.info.run_id:
            client.delete_run(run.info.run_id)  # another task created it first
            return winner
        _log_params(client, winner, params or {})
        return winner
