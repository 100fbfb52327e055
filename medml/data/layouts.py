"""Dataset layouts: how labelled image files are found under a dataset root.

- ``class_folders``: ``<root>/<Class>/*.jpg|png|dcm`` (CT-KIDNEY, X-ray 3-class);
- ``split_folders``: ``<root>/{train,val,validation,test}/<Class>/...`` (chest X-ray,
  cats-vs-dogs); the dataset's own ``test`` split becomes the holdout;
- ``csv``: a manifest CSV (``Training_set.csv`` with ``filename,label``) and images under
  ``train/`` (Kvasir-Capsule shape); an unlabelled ``Testing_set.csv`` + ``test/`` is for batch
  prediction and is not ingested for training;
- ``dicom``: class folders of ``.dcm`` slices (read with pydicom, rescaled to Hounsfield units
  and windowed; see :mod:`medml.data.images`).

A layout is a function ``(root, data) -> list[Item]`` registered with
``@LAYOUTS.register(name)`` (:data:`medml.extensions.LAYOUTS`); ``data.layout`` names one, or
``auto``. Every layout yields :class:`Item` rows. Problems that concern one file (a CSV path
that escapes the root, a symlink pointing outside it, a listed file that does not exist) are
recorded in ``issue`` rather than raised, so validation quarantines them with the reason and
the rest of the dataset goes on.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from medml.config import DataConfig
from medml.errors import MedmlError
from medml.extensions import LAYOUTS

SPLIT_DIRS = {"train": "train", "val": "train", "validation": "train", "test": "test"}


class LayoutError(MedmlError, ValueError):
    """The dataset root does not match the layout; the message says what was expected."""


@dataclass(frozen=True)
class Item:
    """One labelled file found under the root."""

    path: str  # relative to the root, POSIX separators
    label: str
    source_split: str = ""  # "train"/"test" when the dataset fixes it, else ""
    issue: str = ""  # why this file cannot be used (quarantined by validation)


def detect_layout(root: Path, data: DataConfig) -> str:
    """The recipe's layout, or a guess from the directory structure when it says ``auto``."""
    if data.layout != "auto":
        return data.layout
    if (root / data.csv_file).is_file():
        return "csv"
    subdirs = {p.name.lower() for p in root.iterdir() if p.is_dir()}
    if subdirs and subdirs <= set(SPLIT_DIRS) and "train" in subdirs:
        return "split_folders"
    if any(root.glob("*/*.dcm")):
        return "dicom"
    return "class_folders"


def discover(root: Path, data: DataConfig) -> tuple[str, list[Item]]:
    """Find every labelled image under ``root``; returns the layout used and the items.

    Raises:
        LayoutError: the root does not have the shape of the layout.
        ConfigError: the recipe names an unknown layout ("did you mean …").
    """
    layout = detect_layout(root, data)
    return layout, LAYOUTS.get(layout)(root, data)


@LAYOUTS.register("class_folders")
def class_folders(root: Path, data: DataConfig) -> list[Item]:
    """``<root>/<Class>/…``; DICOM slices are welcome in class folders too."""
    return _class_folders(root, root, [*data.extensions, ".dcm"])


@LAYOUTS.register("split_folders")
def split_folders(root: Path, data: DataConfig) -> list[Item]:
    """``<root>/{train,val,validation,test}/<Class>/…``; ``test`` becomes the holdout."""
    items: list[Item] = []
    found = False
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        split = SPLIT_DIRS.get(split_dir.name.lower())
        if split is None:
            continue
        found = True
        for item in _class_folders(split_dir, root, data.extensions):
            items.append(Item(item.path, item.label, split, item.issue))
    if not found:
        raise LayoutError(f"{root} has none of the split folders {sorted(SPLIT_DIRS)}")
    return items


@LAYOUTS.register("csv")
def csv_manifest(root: Path, data: DataConfig) -> list[Item]:
    """A manifest CSV (``data.csv_file``) naming files under ``data.csv_image_dir``."""
    return _csv_manifest(root, data)


@LAYOUTS.register("dicom")
def dicom_folders(root: Path, data: DataConfig) -> list[Item]:
    """Class folders of ``.dcm`` slices."""
    return _class_folders(root, root, [".dcm"])


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _class_folders(base: Path, root: Path, extensions: list[str]) -> list[Item]:
    suffixes = {ext.lower() for ext in extensions}
    items: list[Item] = []
    for class_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(class_dir.rglob("*")):
            if file.name.startswith(".") or file.suffix.lower() not in suffixes:
                continue
            if not (file.is_file() or file.is_symlink()):
                continue
            rel = file.relative_to(root).as_posix()
            issue = "" if _inside(root, file) else "symlink points outside the dataset root"
            if not issue and not file.is_file():
                issue = "broken symlink"
            items.append(Item(rel, class_dir.name, "", issue))
    return items


def _csv_manifest(root: Path, data: DataConfig) -> list[Item]:
    manifest = root / data.csv_file
    with open(manifest, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in (data.csv_path_column, data.csv_label_column) if c not in columns]
        if missing:
            raise LayoutError(
                f"{manifest} lacks column(s) {missing}; found {columns}. Set "
                "data.csv_path_column / data.csv_label_column in the recipe to match the file"
            )
        rows = list(reader)
    image_dir = root / data.csv_image_dir
    items = []
    for line, row in enumerate(rows, start=2):
        name = (row[data.csv_path_column] or "").strip()
        label = (row[data.csv_label_column] or "").strip()
        rel = PurePosixPath(data.csv_image_dir) / name
        issue = ""
        if not name:
            issue = f"{data.csv_file} line {line}: empty {data.csv_path_column}"
        elif (
            PurePosixPath(name).is_absolute()
            or Path(name).is_absolute()
            or ".." in PurePosixPath(name).parts
        ):
            issue = f"{data.csv_file} line {line}: path {name!r} escapes the image folder"
        elif not _inside(image_dir, image_dir / name):
            issue = f"{data.csv_file} line {line}: {name!r} resolves outside the image folder"
        elif not (image_dir / name).is_file():
            issue = f"{data.csv_file} line {line}: listed file {rel} does not exist"
        items.append(
            Item(
                rel.as_posix() if not issue or "does not exist" in issue else name, label, "", issue
            )
        )
    return items
