"""The deployment's settings, read from the environment in this one place.

medml reads no environment variable anywhere else: an entry point (a CLI command, a step
called by a DAG task or a DVC stage) builds :class:`Settings` with :meth:`Settings.from_env`
and the steps hand its values (caches, keys, the git revision, the run root) to the library
functions that need them. Every variable medml reads is a field here, with its meaning.

The process-wide defaults medml gives third-party libraries (quiet TensorFlow logs, no Great
Expectations analytics, MLflow's HTTP retries, OpenCV's image size limit) are set by
:func:`set_library_defaults`, also only here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from medml.policy import DEFAULT_POLICY_FILE, Policy, load_policy

_SELF_GRANTED = ("MEDML_GATE_OVERRIDERS", "MEDML_FOUR_EYES")


def _env(name: str) -> str:
    """The variable's value exactly as set (a key's bytes matter), ``""`` when unset."""
    return os.environ.get(name, "")


@dataclass(frozen=True)
class Settings:
    """What the environment says about this deployment (empty string: not set).

    Attributes:
        home: ``MEDML_HOME``: the working home (MLflow store, runs, caches), absolute; default
            ``.medml`` in the directory the process started in, resolved once here.
        run_root: ``MEDML_RUN_ROOT``: where new run directories go (a folder or ``s3://…``);
            default ``<home>/runs``.
        run_store: ``MEDML_RUN_STORE``: the ``s3://`` store that shares a run with training
            pods (when the recipe names none).
        dvc_cache: ``MEDML_DVC_CACHE``: the DVC cache of preprocessed shards; default
            ``<home>/dvc-cache``.
        tracking_uri: ``MLFLOW_TRACKING_URI``: the MLflow store; default
            ``sqlite:///<home>/mlflow.db``.
        artifact_root: ``MEDML_ARTIFACT_ROOT``: where a new MLflow experiment keeps artifacts.
        git_revision: ``MEDML_GIT_REVISION``: the source revision recorded on model versions
            (set in images, which have no ``.git``); else ``git rev-parse HEAD``.
        pseudonym_key: ``MEDML_PSEUDONYM_KEY``: the key of the patient pseudonyms (HMAC), byte
            for byte as set (a trailing newline is part of the key).
        audit_key: ``MEDML_AUDIT_KEY``: the deployment's secret that keys the audit trail's
            hash chain (HMAC-SHA256, byte for byte as set). Without it the chain is plain
            SHA-256 and ``medml audit verify`` warns that anyone with MLflow write access can
            append an event that verifies; with it, such an event fails verification. Give it
            to whoever promotes and verifies (the Airflow workers, the admin's CLI), never to
            the users who only have MLflow write access.
        audit_anchor: ``MEDML_AUDIT_ANCHOR``: a local directory where every audit event's
            ``seq:hash`` is also appended (one append-only file per model), out of reach of the
            MLflow client; ``medml audit verify`` compares the trail with it, so removed newest
            events (with the head tag reset) and an erased trail are detected. Mount it only
            where promotions run (the Airflow workers, the admin's CLI), append-only if the
            file system allows (``chattr +a``). Empty: no anchor.
        policy_file: ``MEDML_POLICY``: the deployment's governance policy (who may override
            the gate, four-eyes, local-admin mode; :mod:`medml.policy`), believed only when the
            caller cannot edit it; default ``/etc/medml/policy.toml``. A file named here, or a
            missing default file in an existing ``/etc/medml``, is an error, never the
            built-in defaults.
        mlflow_username: ``MLFLOW_TRACKING_USERNAME``: the user the MLflow tracking server
            authenticates (with ``MLFLOW_TRACKING_PASSWORD``); on a server with authentication
            enabled, the CLI's identity (:mod:`medml.identity`).
        ignored: the variables that are set but that medml no longer honours, because they
            would let the promoter grant themselves a right (``MEDML_GATE_OVERRIDERS``,
            ``MEDML_FOUR_EYES``: the policy file says these now).
        s3_endpoint_url: ``MEDML_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL``: an S3-compatible
            endpoint (MinIO, a moto server).
        aws_region: ``AWS_REGION`` or ``AWS_DEFAULT_REGION``; default ``us-east-1``.
        failpoint: ``MEDML_FAILPOINT``: the named point where a fault-injection test kills
            the process (:mod:`medml.faults`).
    """

    home: Path
    run_root: str = ""
    run_store: str = ""
    dvc_cache: Path = field(default=Path())
    tracking_uri: str = ""
    artifact_root: str = ""
    git_revision: str = ""
    pseudonym_key: str = field(default="", repr=False)
    audit_key: str = field(default="", repr=False)
    audit_anchor: str = ""
    policy_file: str = ""
    mlflow_username: str = ""
    ignored: tuple[str, ...] = ()
    s3_endpoint_url: str = ""
    aws_region: str = "us-east-1"
    failpoint: str = ""

    @classmethod
    def from_env(cls) -> Settings:
        """Read every medml variable from the environment now."""
        home = Path(_env("MEDML_HOME") or ".medml").resolve()
        cache = _env("MEDML_DVC_CACHE")
        return cls(
            home=home,
            run_root=_env("MEDML_RUN_ROOT"),
            run_store=_env("MEDML_RUN_STORE"),
            dvc_cache=Path(cache).expanduser().resolve() if cache else home / "dvc-cache",
            tracking_uri=_env("MLFLOW_TRACKING_URI"),
            artifact_root=_env("MEDML_ARTIFACT_ROOT"),
            git_revision=_env("MEDML_GIT_REVISION"),
            pseudonym_key=_env("MEDML_PSEUDONYM_KEY"),
            audit_key=_env("MEDML_AUDIT_KEY"),
            audit_anchor=_env("MEDML_AUDIT_ANCHOR"),
            policy_file=_env("MEDML_POLICY"),
            mlflow_username=_env("MLFLOW_TRACKING_USERNAME"),
            ignored=tuple(name for name in _SELF_GRANTED if _env(name)),
            s3_endpoint_url=_env("MEDML_S3_ENDPOINT_URL") or _env("AWS_ENDPOINT_URL"),
            aws_region=_env("AWS_REGION") or _env("AWS_DEFAULT_REGION") or "us-east-1",
            failpoint=_env("MEDML_FAILPOINT"),
        )

    def policy(self) -> Policy:
        """The deployment's governance policy (:func:`medml.policy.load_policy`).

        Raises:
            PolicyError: the policy file cannot be believed or read.
        """
        default = Path(DEFAULT_POLICY_FILE)
        # A policy named explicitly, or expected where the deployment keeps it, must be there:
        # pointing MEDML_POLICY at a missing file must not fall back to the permissive defaults.
        required = bool(self.policy_file) or default.parent.exists()
        return load_policy(self.policy_file or default, required=required)

    def ignored_warnings(self) -> list[str]:
        """One line per variable in :attr:`ignored`, saying where the setting lives now."""
        return [f"{name} is ignored: the deployment's policy file ({self.policy_file}) says "
                "who may override the gate and whether four-eyes holds"
                for name in self.ignored]  # fmt: skip

    @property
    def default_tracking_uri(self) -> str:
        """The MLflow store: ``tracking_uri``, else the SQLite store in ``home``."""
        return self.tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"


LIBRARY_DEFAULTS = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ info lines
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",  # a remote tracking server's hiccups
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "GX_ANALYTICS_ENABLED": "false",  # Great Expectations must not phone home (offline)
    "OPENCV_IO_MAX_IMAGE_PIXELS": "100000000",  # whole-slide-sized images are refused, not read
}
"""Defaults medml gives third-party libraries; a value already in the environment wins."""


def set_library_defaults(names: tuple[str, ...] | None = None) -> None:
    """Set :data:`LIBRARY_DEFAULTS` (or only ``names`` of them) where the environment has
    no value of its own."""
    for name in names or tuple(LIBRARY_DEFAULTS):
        os.environ.setdefault(name, LIBRARY_DEFAULTS[name])


def process_environment() -> dict[str, str]:
    """A copy of this process's environment, for a child process that medml starts."""
    return dict(os.environ)
