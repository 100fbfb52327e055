"""Small file-system helpers: atomic writes and JSON files."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(
    fn: Callable[[T], R], items: Iterable[T], *, total: int, desc: str, unit: str,
    workers: int | None = None,
) -> list[R]:  # fmt: skip
    """``[fn(item) for item in items]`` on a thread pool (I/O and OpenCV release the GIL), in
    order, with a progress bar (shown on a terminal only)."""
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        mapped = pool.map(fn, items)
        return list(tqdm(mapped, total=total, desc=desc, unit=unit, leave=False, disable=None))


def safe_name(text: str) -> str:
    """``text`` with every run of characters outside ``[A-Za-z0-9_.-]`` replaced by ``_`` (for
    file names and S3 keys made from Airflow run ids)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def medml_home() -> Path:
    """Workspace for runs, caches and the default MLflow store: ``$MEDML_HOME`` or ``./.medml``."""
    return Path(os.environ.get("MEDML_HOME") or ".medml").resolve()


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    Works for files and directories. A reader never sees a half-written output, and a failed
    or retried step leaves the previous output (if any) in place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staged = tmp / target.name
    try:
        yield staged
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, payload: Any) -> Path:
    """Write ``payload`` as pretty, key-sorted JSON, atomically."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())
