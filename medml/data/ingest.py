"""Ingest: a dataset directory becomes ``manifest.parquet``.

One row per image file: ``path`` (relative to ``root``), ``root``, ``label``, ``group``,
``sha256``, ``bytes``, ``width``, ``height``, ``channels``. Only file headers are read here
(dimensions); full decoding is the validation step's job. Unreadable headers are recorded with
zero dimensions rather than dropped, so validation can quarantine them with a reason.
"""

from __future__ import annotations

import csv
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from medml.config import Recipe
from medml.data.synthetic import GROUPS_FILE
from medml.io import atomic_path

MANIFEST_COLUMNS = [
    "path",
    "root",
    "label",
    "group",
    "sha256",
    "bytes",
    "width",
    "height",
    "channels",
]
_MODE_CHANNELS = {
    "1": 1,
    "L": 1,
    "P": 1,
    "I": 1,
    "I;16": 1,
    "F": 1,
    "LA": 2,
    "RGB": 3,
    "YCbCr": 3,
    "CMYK": 4,
    "RGBA": 4,
}


class IngestError(ValueError):
    """The source cannot be ingested; the message names the path and what to do."""


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest` wrote."""

    manifest: Path
    images: int
    class_counts: dict[str, int]


def discover_class_folders(root: Path, extensions: list[str]) -> list[tuple[str, str]]:
    """List ``(relative path, label)`` for every image under ``<root>/<Class>/``.

    Hidden files and folders are skipped; any folder name is returned as a label, so labels
    outside the recipe's classes reach validation (which quarantines them) instead of
    vanishing silently.
    """
    suffixes = {ext.lower() for ext in extensions}
    items: list[tuple[str, str]] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(class_dir.rglob("*")):
            if file.is_file() and not file.name.startswith(".") and file.suffix.lower() in suffixes:
                items.append((file.relative_to(root).as_posix(), class_dir.name))
    return items


def ingest(source: Path, manifest_path: Path, recipe: Recipe, *, workers: int = 0) -> IngestResult:
    """Scan a dataset directory and write its manifest.

    Args:
        source: dataset root (folder per class).
        manifest_path: where to write ``manifest.parquet``.
        recipe: the run's recipe (layout, extensions).
        workers: hashing threads; 0 means one per core.

    Returns:
        The manifest path, the number of images and the per-label counts.

    Raises:
        IngestError: the source is missing, is not a directory, or holds no images.
    """
    root = Path(source).expanduser().resolve()
    if not root.exists():
        raise IngestError(f"source directory {source} does not exist; check --source")
    if not root.is_dir():
        raise IngestError(f"source {source} is not a directory; point --source at the dataset root")
    items = discover_class_folders(root, recipe.data.extensions)
    if not items:
        raise IngestError(
            f"no images ({', '.join(recipe.data.extensions)}) found under {root}/<Class>/; "
            f"expected one folder per class, e.g. {root}/{recipe.data.classes[0]}/image.jpg"
        )
    groups = _read_groups(root)
    n_workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        facts = list(
            tqdm(
                pool.map(lambda rel: _file_facts(root / rel), [rel for rel, _ in items]),
                total=len(items),
                desc="ingest",
                unit="img",
                leave=False,
                disable=None,
            )
        )
    rows = [
        {"path": rel, "root": str(root), "label": label, "group": groups.get(rel, rel), **fact}
        for (rel, label), fact in zip(items, facts, strict=True)
    ]
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    with atomic_path(Path(manifest_path)) as tmp:
        manifest.to_parquet(tmp, index=False)
    counts = manifest["label"].value_counts().sort_index()
    return IngestResult(
        Path(manifest_path), len(manifest), {str(k): int(v) for k, v in counts.items()}
    )


def read_manifest(path: Path) -> pd.DataFrame:
    """Read a manifest (or any table derived from it) from parquet."""
    return pd.read_parquet(path)


def absolute_paths(table: pd.DataFrame) -> list[Path]:
    """Absolute file paths of a manifest's rows."""
    return [Path(root) / rel for root, rel in zip(table["root"], table["path"], strict=True)]


def _read_groups(root: Path) -> dict[str, str]:
    sidecar = root / GROUPS_FILE
    if not sidecar.is_file():
        return {}
    with open(sidecar, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"path", "group"} <= set(reader.fieldnames):
            raise IngestError(f"{sidecar} must have the columns 'path,group'")
        return {row["path"]: row["group"] for row in reader}


def _file_facts(path: Path) -> dict[str, int | str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    width = height = channels = 0
    try:
        with Image.open(path) as image:  # header only; no pixel decoding
            width, height = image.size
            channels = _MODE_CHANNELS.get(image.mode, len(image.getbands()))
    except Exception:  # noqa: BLE001 - any header failure is recorded, validation explains it
        pass
    return {
        "sha256": digest.hexdigest(),
        "bytes": size,
        "width": width,
        "height": height,
        "channels": channels,
    }
