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
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image

from medml.config import Recipe
from medml.data.images import dicom_header, is_dicom
from medml.data.layouts import Item, LayoutError, discover
from medml.data.synthetic import GROUPS_FILE
from medml.errors import MedmlError
from medml.io import atomic_path, parallel_map

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
    "source_split",
    "issue",
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


class IngestError(MedmlError, ValueError):
    """The source cannot be ingested; the message names the path and what to do."""


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest` wrote."""

    manifest: Path
    images: int
    class_counts: dict[str, int]


def ingest(source: Path, manifest_path: Path, recipe: Recipe, *, workers: int = 0) -> IngestResult:
    """Scan a dataset directory and write its manifest.

    Args:
        source: dataset root in any layout of :mod:`medml.data.layouts`.
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
    try:
        layout, items = discover(root, recipe.data)
    except LayoutError as err:
        raise IngestError(str(err)) from None
    if not items:
        raise IngestError(
            f"no images ({', '.join(recipe.data.extensions)}) found under {root} "
            f"(layout {layout}); expected e.g. {root}/{recipe.data.classes[0]}/image.jpg"
        )
    groups = _read_groups(root)

    def facts(item: Item) -> dict[str, int | str]:
        if item.issue:  # never open a file that escapes the root or is missing
            return {
                "sha256": "",
                "bytes": 0,
                "width": 0,
                "height": 0,
                "channels": 0,
                "issue": item.issue,
            }
        return _file_facts(root / item.path)

    found = parallel_map(facts, items, total=len(items), desc="ingest", unit="img",
                         workers=workers)  # fmt: skip
    rows = [
        {
            "path": item.path,
            "root": str(root),
            "label": item.label,
            "group": groups.get(item.path, item.path),
            **fact,
            "source_split": item.source_split,
        }
        for item, fact in zip(items, found, strict=True)
    ]
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    with atomic_path(Path(manifest_path)) as tmp:
        manifest.to_parquet(tmp, index=False)
    counts = manifest["label"].value_counts().sort_index()
    return IngestResult(
        Path(manifest_path), len(manifest), {str(k): int(v) for k, v in counts.items()}
    )


def absolute_paths(table: pd.DataFrame) -> list[str]:
    """Absolute file paths of a manifest's rows (strings: a tenth of a ``Path``'s memory)."""
    return [os.path.join(root, rel) for root, rel in zip(table["root"], table["path"], strict=True)]


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
    """Hash, size and header dimensions of one file; ``issue`` says why it must not be decoded."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    width = height = channels = 0
    issue = ""
    try:
        if is_dicom(path):
            width, height, channels = dicom_header(path)
        else:
            with Image.open(path) as image:  # header only; no pixel decoding
                width, height = image.size
                channels = _MODE_CHANNELS.get(image.mode, len(image.getbands()))
    except Image.DecompressionBombError:
        issue = "image header declares a decompression-bomb size; not decoded"
    except Exception:
        pass
    return {
        "sha256": digest.hexdigest(),
        "bytes": size,
        "width": width,
        "height": height,
        "channels": channels,
        "issue": issue,
    }
