"""MLflow tracking/registry settings and run helpers (resolved at call time, never at import)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medml.io import medml_home

if TYPE_CHECKING:
    from mlflow import MlflowClient

RUN_KEY_TAG = "medml.run_key"
KIND_TAG = "medml.kind"
# What the logged models need at serving time; given explicitly so MLflow does not spend
# time inferring requirements (which also needs the network for some packages).
MODEL_REQUIREMENTS = ["tensorflow-cpu", "keras>=3"]


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
    artifact_root: str

    @classmethod
    def from_env(cls, home: Path | None = None) -> Tracking:
        """``MLFLOW_TRACKING_URI`` / ``MEDML_ARTIFACT_ROOT`` if set, else SQLite under ``home``
        (default :func:`~medml.io.medml_home`)."""
        home = Path(home).resolve() if home is not None else medml_home()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
        artifacts = os.environ.get("MEDML_ARTIFACT_ROOT") or (home / "mlartifacts").as_uri()
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return cls(uri=uri, artifact_root=artifacts)

    def activate(self) -> MlflowClient:
        """Point the mlflow module at this store and return a client for it."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        return mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def experiment_id(self, name: str) -> str:
        """Id of experiment ``name``, created (with artifacts under ``artifact_root``) if new."""
        client = self.activate()
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = f"{self.artifact_root.rstrip('/')}/{name}"
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception:  # created concurrently by another task: use theirs
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
        except BaseException:
            mlflow.end_run("FAILED")
            raise
        mlflow.end_run()

    def pipeline_run(
        self, experiment: str, run_key: str, run_name: str, tags: dict[str, str]
    ) -> str:
        """Id of the parent run for one pipeline run, created on first use.

        Every step of one run (folds, evaluation, registration) logs under this parent, looked up
        by the ``medml.run_key`` tag, so retried tasks and separate processes find the same run.
        """
        client = self.activate()
        experiment_id = self.experiment_id(experiment)
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}' and tags.`{KIND_TAG}` = 'pipeline'",
            max_results=1,
        )
        if found:
            return found[0].info.run_id
        run = client.create_run(
            experiment_id,
            run_name=run_name,
            tags={**tags, RUN_KEY_TAG: run_key, KIND_TAG: "pipeline"},
        )
        return run.info.run_id
