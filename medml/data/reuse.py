"""Per-file results kept between runs, so a scheduled retrain or a backfill over the same
dataset reads and decodes only the files that changed.

Two kinds of table under ``$MEDML_HOME/cache/``:

- ``ingest/``, one per dataset folder: a file's hashes and header, keyed by its path and
  ``os.stat`` identity (inode, size, modification *and* change time in ns). Any write to a file
  changes its change time, which no user-space call can set back, so a file rewritten with its
  old size and ``mtime`` restored is read again. A file changed less than
  :data:`SETTLE_SECONDS` before the step began is never kept (a later write in the same
  timestamp tick could not be told apart; git calls this "racily clean"). It holds the rows of
  the last ingest of that folder (files gone from the dataset drop out).
- ``decode/``, one per decoder: validation's verdict on an image that decoded (its decoded size
  and near-duplicate signature), keyed by the file's sha256 and frame, under a fingerprint of
  everything the verdict depends on (the decoder's settings, the decoding code, the image
  libraries' versions). Keyed by content, it serves any folder; failures are never kept (a read
  error may be transient).

Concurrent runs each replace a table whole (last writer wins); an unreadable table is treated
as empty. Each table's SHA-256 is written beside it, after it; a table whose bytes do not
match (damaged, edited, or a crash between the two writes) is not trusted: every file is read
again. Deleting ``$MEDML_HOME/cache`` is always safe.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medml.io import atomic_path, medml_home

logger = logging.getLogger(__name__)

SETTLE_SECONDS = 2.0
STAT_COLUMNS = ("ino", "size", "mtime_ns", "ctime_ns")


class ReuseTable:
    """Rows kept between runs in one parquet file, looked up by a key of some columns.

    Args:
        kind: the cache folder (``ingest`` or ``decode``).
        identity: what the table is for (a dataset folder, settings); hashed into its name.
        key: the columns that identify a row.
        carry_over: how many rows this run did not use stay in the table (for a table shared
            by datasets: a content-keyed one); the rest are dropped on :meth:`save`.
        enabled: ``False`` gives a table that finds nothing and writes nothing.
    """

    def __init__(
        self, kind: str, identity: object, key: Sequence[str], *, carry_over: int = 0,
        enabled: bool = True,
    ) -> None:  # fmt: skip
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
        self.path = medml_home() / "cache" / kind / f"{digest.hexdigest()[:24]}.parquet"
        self.key = list(key)
        self.carry_over = carry_over
        self.enabled = enabled
        self.started_ns = time.time_ns()
        self._kept: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._fresh: dict[tuple[Any, ...], dict[str, Any]] = {}
        if not enabled:
            return
        try:
            rows = pd.read_parquet(io.BytesIO(self._verified_bytes())).to_dict("records")
            self._kept = {tuple(row[c] for c in self.key): row for row in rows}
        except (OSError, ValueError, KeyError):  # missing, damaged, another layout: empty
            self._kept = {}

    @property
    def checksum_path(self) -> Path:
        """The SHA-256 of the table's bytes, written after it: a table that does not match
        (bit rot, an edit, a crash between the two writes) is not trusted."""
        return self.path.with_name(self.path.name + ".sha256")

    def _verified_bytes(self) -> bytes:
        data = self.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.checksum_path.read_text().strip():
            logger.warning("kept table %s does not match its checksum (damaged or edited): "
                           "not used; every file is read again", self.path)  # fmt: skip
            raise ValueError(f"{self.path}: checksum mismatch")
        return data

    def get(self, *key: Any) -> dict[str, Any] | None:
        """The kept row for ``key``, if any."""
        return self._kept.get(key)

    def keep(self, row: dict[str, Any]) -> None:
        """Keep ``row`` for the next run (written by :meth:`save`)."""
        if self.enabled:
            self._fresh[tuple(row[c] for c in self.key)] = row

    def save(self) -> None:
        """Replace the table with this run's rows (and up to ``carry_over`` others); never
        fails the step."""
        if not self.enabled:
            return
        others = (row for key, row in self._kept.items() if key not in self._fresh)
        rows = [*self._fresh.values(), *itertools.islice(others, self.carry_over)]
        try:
            with atomic_path(self.path) as tmp:
                pd.DataFrame(rows).to_parquet(tmp, index=False)
            with atomic_path(self.checksum_path) as tmp:
                tmp.write_text(hashlib.sha256(self.path.read_bytes()).hexdigest() + "\n")
        except OSError:
            pass  # a read-only MEDML_HOME: the next run reads the files again


def stat_identity(path: Path, started_ns: int) -> tuple[int, ...] | None:
    """The file's :data:`STAT_COLUMNS`, the part of a kept row's key that says it is the same
    file; ``None`` when it is missing or changed too recently to be kept (see
    :data:`SETTLE_SECONDS`)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if info.st_ctime_ns > started_ns - int(SETTLE_SECONDS * 1e9):
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def code_identity(*modules: Any, libraries: Sequence[str] = ()) -> dict[str, str]:
    """What a kept result computed by ``modules`` depends on besides its inputs: a hash of
    their source files and the installed versions of ``libraries`` (a changed decoder makes
    a new table, never a stale hit)."""
    from importlib.metadata import PackageNotFoundError, version

    digest = hashlib.sha256()
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    identity = {"code": digest.hexdigest()}
    for name in libraries:
        try:
            identity[name] = version(name)
        except PackageNotFoundError:
            identity[name] = ""
    return identity
