"""DVC's content-addressed cache, used by runners that work outside a DVC workspace.

``dvc repro`` saves each stage output as DVC objects (a file under its md5, a directory as a
``.dir`` listing of md5-addressed files) in the repository's cache, and its *run cache*
remembers which outputs a stage produced for given inputs and params, so an unchanged stage is
restored instead of re-run. The Airflow DAG runs the same steps in per-date run directories,
which are not DVC workspaces, so it uses the same machinery through ``dvc-data``, DVC's own
storage library:

- :func:`dvc_md5` is the hash DVC records for a path in ``dvc.lock`` (``<md5>.dir`` for a
  directory); :func:`directory_md5` builds the same hash from a listing of files and md5s,
  which is how ingest hashes a snapshot (the files it accepted, never the folder as found);
- :class:`DvcCache` saves a step's output directory as DVC objects, records a run-cache entry
  from the step's input key to the output's hash, and checks the output out of the cache
  (hard links where possible) when the key is seen again.

The cache lives at ``$MEDML_DVC_CACHE``, else ``$MEDML_HOME/dvc-cache``. Pointing
``MEDML_DVC_CACHE`` at the project's ``.dvc/cache`` makes ``dvc repro`` and the DAG share one
object store (``dvc gc`` keeps only objects referenced by the workspace, so use a separate
cache if you garbage-collect).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medml.io import atomic_path, read_json, write_json

_CACHE_TYPES = ["hardlink", "copy"]  # objects are read-only, so links are safe to share


def default_cache_dir() -> Path:
    """:attr:`Settings.dvc_cache` (``$MEDML_DVC_CACHE``, else ``$MEDML_HOME/dvc-cache``)."""
    from medml.settings import Settings

    return Settings.from_env().dvc_cache


def dvc_md5(path: Path) -> str:
    """DVC's hash of a file or directory, as ``dvc.lock`` records it.

    A directory hashes to ``<md5 of its sorted file listing>.dir``, so two snapshots with the
    same files (names and bytes) have the same hash wherever they are stored.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import get_odb
    from dvc_objects.fs.local import LocalFileSystem

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; nothing to hash")
    fs = LocalFileSystem()
    scratch = get_odb(fs, str(default_cache_dir() / "files" / "md5"))
    _, _, obj = build(scratch, str(path), fs, "md5", dry_run=True)
    return str(obj.hash_info.value)


def directory_md5(files: Mapping[str, str]) -> str:
    """The DVC directory hash (``<md5>.dir``) of a listing of files and their md5s.

    Nothing is walked, opened or read here: the listing is the one ingest builds from the files
    it accepted (path relative to the dataset root, POSIX, and the md5 of the bytes it read),
    so no file it refused (a link, a pipe, a hidden or ignored file) and no byte outside the
    root enters the hash. It is built exactly as DVC builds a ``.dir`` object, so it equals
    :func:`dvc_md5` of the folder (what ``dvc add`` records) whenever the folder holds only
    those files.

    Args:
        files: relative path -> md5 hex digest.
    """
    import hashlib
    import json

    entries = [{"md5": md5, "relpath": rel} for rel, md5 in sorted(files.items())]
    listing = json.dumps(entries, sort_keys=True).encode("utf-8")
    return f"{hashlib.md5(listing).hexdigest()}.dir"


class DvcCache:
    """A DVC cache directory plus a run cache of ``key -> output hash`` entries.

    Args:
        root: the cache directory (DVC 3 layout: objects under ``files/md5``). The run-cache
            entries live under ``medml-runs/`` beside the objects.
    """

    def __init__(self, root: Path | None = None) -> None:
        from dvc_data.hashfile.db import get_odb
        from dvc_objects.fs.local import LocalFileSystem

        self.root = Path(root) if root is not None else default_cache_dir()
        self._fs = LocalFileSystem()
        self._odb = get_odb(self._fs, str(self.root / "files" / "md5"), type=_CACHE_TYPES)

    def _entry(self, key: str) -> Path:
        return self.root / "medml-runs" / key[:2] / f"{key}.json"

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The run-cache entry for ``key``, if its output objects are all still in the cache."""
        entry = self._entry(key)
        if not entry.is_file():
            return None
        record = read_json(entry)
        try:
            tree = self._load(record["hash"])
        except (FileNotFoundError, ValueError, KeyError):
            return None  # objects were garbage-collected: treat as a miss
        missing = [oid for _, _, oid in tree if not self._odb.exists(oid.value)]
        return None if missing else record

    def save(self, directory: Path, key: str, **facts: Any) -> str:
        """Store ``directory`` as DVC objects and remember it under ``key``; return its hash."""
        from dvc_data.hashfile.build import build
        from dvc_data.hashfile.transfer import transfer

        staging, _, obj = build(self._odb, str(directory), self._fs, "md5")
        transfer(staging, self._odb, {obj.hash_info}, hardlink=True, shallow=False)
        digest = str(obj.hash_info.value)
        entry = self._entry(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        write_json(entry, {"key": key, "hash": digest, **facts})
        return digest

    def drop(self, key: str, digest: str, corrupted: list[str]) -> None:
        """Forget run-cache entry ``key`` and delete the objects of the ``corrupted`` files
        (paths inside directory object ``digest``), so the next :meth:`save` stores good
        bytes again instead of keeping the damaged objects under their old names."""
        self._entry(key).unlink(missing_ok=True)
        for parts, _, oid in self._load(digest):
            if "/".join(parts) in corrupted:
                Path(self._odb.oid_to_path(oid.value)).unlink(missing_ok=True)

    def checkout(self, digest: str, target: Path) -> None:
        """Materialise the directory object ``digest`` at ``target`` (atomically)."""
        from dvc_data.hashfile.checkout import checkout

        tree = self._load(digest)
        with atomic_path(Path(target)) as staging:
            checkout(str(staging), self._fs, tree, self._odb)

    def _load(self, digest: str) -> Any:
        from dvc_data.hashfile.hash_info import HashInfo
        from dvc_data.hashfile.tree import Tree

        if not digest.endswith(".dir"):
            raise ValueError(f"{digest} is not a directory object")
        return Tree.load(self._odb, HashInfo("md5", digest))
