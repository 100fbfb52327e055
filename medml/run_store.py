"""Run directories on S3, shared by the Airflow worker and the training pods.

With the Kubernetes backend each fold trains in its own pod, on another machine, so the run
directory lives on S3 (``s3://bucket/prefix/runs/<ds>/<run id>/``). A step given such a URI
works on a local mirror: :func:`open_run_dir` downloads the files the step needs, yields the
mirror (an ordinary run directory), and uploads what the step produced when it succeeds. The
step code itself only ever sees local paths, so the pod's ``medml train --run-dir s3://…`` and
the worker's local training are one code path.

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


def mirror_dir(uri: str) -> Path:
    """The local mirror of an S3 run directory."""
    bucket, prefix = parse_s3_uri(uri)
    return medml_home() / "run-mirrors" / bucket / prefix.rstrip("/")


def run_uri(store: str, logical_date: str, run_name: str) -> str:
    """``<store>/runs/<logical date>/<run name>/`` for an ``s3://`` run store."""
    bucket, prefix = parse_s3_uri(store)
    return f"s3://{bucket}/{prefix}runs/{logical_date}/{run_name}/"


def pull(uri: str, local: Path, paths: Sequence[str]) -> None:
    """Download ``paths`` (files or directories, relative to the run) from ``uri`` to ``local``.

    Raises:
        FileNotFoundError: a path is not in the remote run directory (names it and the step
            that writes it is expected to have run).
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
            raise RunError(
                f"{uri.rstrip('/')}/{rel} is missing from the remote run directory; "
                "run the step that writes it first"
            ) from None


def push(local: Path, uri: str, paths: Sequence[str]) -> int:
    """Upload ``paths`` (relative to the run) from ``local`` to ``uri``; return files sent."""
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
        else:
            raise FileNotFoundError(f"{path} was not produced; nothing to upload")
    return sent


@contextmanager
def open_run_dir(
    run_dir: str | Path, *, needs: Sequence[str], produces: Sequence[str]
) -> Iterator[Path]:
    """A local run directory for ``run_dir``: itself, or the mirror of an S3 run directory.

    For an S3 URI, ``needs`` are downloaded before the step and ``produces`` uploaded after it
    (only when it succeeds, so a failed step never overwrites good remote outputs).
    """
    if not is_s3(run_dir):
        yield Path(run_dir)
        return
    uri = str(run_dir).rstrip("/") + "/"
    local = mirror_dir(uri)
    local.mkdir(parents=True, exist_ok=True)
    pull(uri, local, needs)
    yield local
    push(local, uri, produces)


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
