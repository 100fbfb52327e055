"""Run directories on S3, shared by workers and training pods that share no disk.

A run's tasks may run on different machines: Celery workers with their own ``MEDML_HOME``
(``$MEDML_RUN_ROOT=s3://…``: every run directory lives on S3), or one training pod per fold
(the Kubernetes backend shares the run through ``$MEDML_RUN_STORE``). A step given an
``s3://bucket/prefix/runs/<ds>/<run id>/`` run directory works on a local mirror:
:func:`open_run_dir` downloads the files the step needs (declared in :mod:`medml.steps`),
yields the mirror (an ordinary run directory), and uploads what the step produced when it
succeeds. The step code itself only ever sees local paths, so a pod's ``medml train --run-dir
s3://…``, a Celery worker's task and a local run are one code path.

Mirrors live under ``$MEDML_HOME/run-mirrors/<bucket>/<prefix>``; downloads and uploads skip
files that are already up to date, so a retried pod does not transfer the shards twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from medml.data.sources import (
    SourceError,
    fetch_s3_prefix,
    is_s3,
    parse_s3_uri,
    s3_client,
    upload_dir,
)
from medml.errors import RunError
from medml.io import atomic_path, medml_home
from medml.layout import StepFiles


def mirror_dir(uri: str) -> Path:
    """The local mirror of an S3 run directory."""
    bucket, prefix = parse_s3_uri(uri)
    return medml_home() / "run-mirrors" / bucket / prefix.rstrip("/")


def remote_of(local: Path) -> str | None:
    """The S3 run directory that ``local`` mirrors (None: ``local`` is not a mirror)."""
    try:
        parts = Path(local).resolve().relative_to((medml_home() / "run-mirrors").resolve()).parts
    except ValueError:
        return None
    return f"s3://{parts[0]}/{'/'.join(parts[1:])}/" if len(parts) > 1 else None


def run_uri(store: str, logical_date: str, run_name: str) -> str:
    """``<store>/runs/<logical date>/<run name>/`` for an ``s3://`` run store."""
    bucket, prefix = parse_s3_uri(store)
    return f"s3://{bucket}/{prefix}runs/{logical_date}/{run_name}/"


def pull(uri: str, local: Path, paths: Sequence[str], *, optional: Sequence[str] = ()) -> None:
    """Download ``paths`` (files or directories, relative to the run) from ``uri`` to ``local``.

    Raises:
        RunError: a path not in ``optional`` is not in the remote run directory (names it; the
            step that writes it is expected to have run).
    """
    client = s3_client()
    bucket, prefix = parse_s3_uri(uri)
    for rel in paths:
        rel = rel.strip("/")
        head = _head(client, bucket, prefix + rel)
        if head is not None:  # a single file
            with atomic_path(Path(local) / rel) as target:
                client.download_file(bucket, prefix + rel, str(target))
            continue
        try:
            fetch_s3_prefix(f"s3://{bucket}/{prefix}{rel}/", Path(local) / rel, client=client)
        except SourceError:
            if rel in optional:
                continue
            raise RunError(
                f"{uri.rstrip('/')}/{rel} is missing from the remote run directory; "
                "run the step that writes it first"
            ) from None


def push(local: Path, uri: str, paths: Sequence[str], *, optional: Sequence[str] = ()) -> int:
    """Upload ``paths`` (relative to the run) from ``local`` to ``uri``; return files sent.

    Raises:
        FileNotFoundError: a path not in ``optional`` was not produced.
    """
    client = s3_client()
    bucket, prefix = parse_s3_uri(uri)
    sent = 0
    for rel in paths:
        rel = rel.strip("/")
        path = Path(local) / rel
        if path.is_file():
            client.upload_file(str(path), bucket, prefix + rel)
            sent += 1
        elif path.is_dir():
            sent += upload_dir(path, f"s3://{bucket}/{prefix}{rel}/", client=client)
        elif rel not in optional:
            raise FileNotFoundError(f"{path} was not produced; nothing to upload")
    return sent


@contextmanager
def open_run_dir(run_dir: str | Path, files: StepFiles) -> Iterator[Path]:
    """A local run directory for ``run_dir``: itself, or the mirror of an S3 run directory.

    For an S3 URI, ``files.needs`` are downloaded before the step and ``files.produces``
    uploaded after it (only when it succeeds, so a failed step never overwrites good remote
    outputs).
    """
    if not is_s3(run_dir):
        yield Path(run_dir)
        return
    uri = str(run_dir).rstrip("/") + "/"
    local = mirror_dir(uri)
    local.mkdir(parents=True, exist_ok=True)
    pull(uri, local, files.needs, optional=files.optional)
    yield local
    push(local, uri, files.produces, optional=files.optional)


def _head(client: object, bucket: str, key: str) -> dict | None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return client.head_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
    except ClientError:
        return None
    except BotoCoreError as err:  # no endpoint, no credentials: say what to check
        raise SourceError(
            f"cannot reach s3://{bucket}/{key}: {err}; check MEDML_S3_ENDPOINT_URL and the "
            "credentials (for a training pod: the Secret in train.kubernetes.secret_name)"
        ) from None
