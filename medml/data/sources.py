"""Dataset sources: a local directory, or an S3 prefix fetched into the run directory.

An S3 source is ``s3://bucket/prefix/<ds>/``: one immutable snapshot per logical date. The
download is parallel, shows a progress bar, and is resumable: each file is written to a temporary
name and renamed when complete, and a file already present with the same size (and, for
single-part uploads, the same MD5 as the ETag) is skipped. Endpoint, region and credentials come
from the environment only (``MEDML_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL``,
``AWS_REGION``/``AWS_DEFAULT_REGION``, and boto3's usual credential chain); they are never
logged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from medml.errors import MedmlError
from medml.io import parallel_map

S3_SCHEME = "s3://"


class SourceError(MedmlError, ValueError):
    """A source URI is malformed or cannot be read; the message says what to check."""


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch_s3_prefix` did."""

    local_dir: Path
    files: int
    downloaded: int
    skipped: int
    bytes_downloaded: int


def is_s3(source: str | Path) -> bool:
    """True for ``s3://`` URIs."""
    return str(source).startswith(S3_SCHEME)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix`` into bucket and prefix (ending in ``/`` unless empty).

    Raises:
        SourceError: not an ``s3://bucket/...`` URI.
    """
    if not is_s3(uri):
        raise SourceError(f"not an S3 URI: {uri!r}")
    bucket, _, prefix = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise SourceError(f"S3 URI {uri!r} has no bucket; expected s3://bucket/prefix/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def s3_client() -> Any:
    """A boto3 S3 client configured from the environment only."""
    import boto3
    from botocore.config import Config

    from medml.settings import Settings

    settings = Settings.from_env()
    return boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url or None, region_name=settings.aws_region,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32),
    )  # fmt: skip


def fetch_s3_prefix(uri: str, dest: Path, *, workers: int = 8, client: Any = None) -> FetchResult:
    """Mirror every object under an S3 prefix into ``dest``, keeping relative paths.

    ``dest`` becomes exactly the snapshot: objects are downloaded under temporary names in a
    folder beside ``dest`` (never inside the tree that is hashed) and renamed into place, files
    up to date are kept, and files that are no longer in the snapshot are removed. A download
    killed half-way leaves nothing that changes the snapshot's hash.

    Raises:
        SourceError: the bucket or prefix does not exist, is empty, or cannot be read.
    """
    bucket, prefix = parse_s3_uri(uri)
    client = client or s3_client()
    dest = Path(dest)
    objects = _list_objects(client, bucket, prefix, uri)
    if not objects:
        raise SourceError(f"no objects under {uri}; is the snapshot for this date uploaded?")
    incoming = dest.with_name(f".{dest.name}.downloading")
    shutil.rmtree(incoming, ignore_errors=True)  # what a killed download left
    incoming.mkdir(parents=True)
    wanted = set()

    def fetch(obj: dict[str, Any]) -> tuple[bool, int]:
        rel = PurePosixPath(obj["Key"][len(prefix) :])
        if rel.is_absolute() or ".." in rel.parts:
            raise SourceError(f"refusing S3 key {obj['Key']!r}: it would escape {dest}")
        target = dest / rel
        wanted.add(target)
        if _up_to_date(target, obj):
            return False, 0
        partial = incoming / hashlib.sha256(obj["Key"].encode()).hexdigest()
        client.download_file(bucket, obj["Key"], str(partial))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, target)
        return True, int(obj["Size"])

    try:
        done = parallel_map(fetch, objects, total=len(objects), desc="download", unit="file",
                            workers=workers)  # fmt: skip
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    _remove_extra_files(dest, wanted)
    downloaded = sum(1 for fetched, _ in done if fetched)
    return FetchResult(
        dest, len(objects), downloaded, len(objects) - downloaded, sum(size for _, size in done)
    )


def _list_objects(client: Any, bucket: str, prefix: str, uri: str) -> list[dict[str, Any]]:
    from botocore.exceptions import BotoCoreError, ClientError

    objects = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            objects.extend(obj for obj in page.get("Contents", []) if not obj["Key"].endswith("/"))
    except (ClientError, BotoCoreError) as err:
        raise SourceError(
            f"cannot list {uri}: {err}; check the bucket, the endpoint "
            "(MEDML_S3_ENDPOINT_URL) and the credentials"
        ) from None
    return objects


def _remove_extra_files(dest: Path, wanted: set[Path]) -> None:
    """Delete what is under ``dest`` but not in the snapshot (the mirror is not the source:
    removing from it loses nothing), then the folders left empty."""
    for path in sorted(dest.rglob("*"), reverse=True):
        if path.is_file() or path.is_symlink():
            if path not in wanted:
                path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def upload_dir(local: Path, uri: str, *, workers: int = 8, client: Any = None) -> int:
    """Upload every file under ``local`` to the S3 prefix ``uri``, keeping relative paths.

    Files whose object already has the same size and MD5 (single-part ETag) are skipped, so a
    retried upload only sends what is missing. Returns the number of files uploaded.

    Raises:
        SourceError: the bucket does not exist or cannot be written.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_s3_uri(uri)
    client = client or s3_client()
    local = Path(local)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    try:
        existing = {
            obj["Key"]: obj
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix
            )
            for obj in page.get("Contents", [])
        }
    except (ClientError, BotoCoreError) as err:
        raise SourceError(
            f"cannot list {uri}: {err}; check the bucket, the endpoint "
            "(MEDML_S3_ENDPOINT_URL) and the credentials"
        ) from None

    def send(path: Path) -> bool:
        key = prefix + path.relative_to(local).as_posix()
        if key in existing and _up_to_date(path, existing[key]):
            return False
        client.upload_file(str(path), bucket, key)
        return True

    sent = parallel_map(send, files, total=len(files), desc="upload", unit="file",
                        workers=workers)  # fmt: skip
    return sum(sent)


def _up_to_date(target: Path, obj: dict[str, Any]) -> bool:
    if not target.is_file() or target.stat().st_size != obj["Size"]:
        return False
    etag = str(obj.get("ETag", "")).strip('"')
    if not etag or "-" in etag:  # multipart ETags are not an MD5 of the content: size decides
        return True
    return hashlib.md5(target.read_bytes(), usedforsecurity=False).hexdigest() == etag
