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
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from medml.config import DataConfig
from medml.data.images import file_kind
from medml.errors import MedmlError
from medml.extensions import LAYOUTS

SPLIT_DIRS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


class LayoutError(MedmlError, ValueError):
    """The dataset root does not match the layout; the message says what was expected."""


@dataclass(frozen=True)
class Item:
    """One labelled file found under the root."""

    path: str  # relative to the root, POSIX separators
    label: str
    source_split: str = ""  # "train"/"validation"/"test" when the dataset fixes it, else ""
    issue: str = ""  # why this file cannot be used (quarantined by validation)
    ignored: bool = False  # an extension outside data.extensions (counted, never read)


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
    """``<root>/{train,val,validation,test}/<Class>/…``; ``test`` becomes the holdout;
    ``val``/``validation`` is the validation set under ``split.validation: dataset`` and
    ordinary training data otherwise."""
    items: list[Item] = []
    found = False
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        split = SPLIT_DIRS.get(split_dir.name.lower())
        if split is None:
            continue
        found = True
        for item in _class_folders(split_dir, root, data.extensions):
            items.append(Item(item.path, item.label, split, item.issue, item.ignored))
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
    except (ValueError, RuntimeError, OSError):
        return False
    return True


def file_problem(root: Path, path: Path) -> str:
    """Why ``path`` must not be opened, or ``""`` when it is a readable regular file inside
    ``root``. Never follows a link out of ``root``, never opens anything."""
    try:
        mode = os.lstat(path).st_mode
    except OSError as err:
        return f"file cannot be examined ({err.strerror or err})"
    if stat.S_ISLNK(mode):
        try:
            target = path.resolve(strict=True)
        except FileNotFoundError:
            return "broken symlink (its target does not exist)"
        except (RuntimeError, OSError) as err:  # ELOOP: RuntimeError before Python 3.13
            if "loop" in str(err).lower() or getattr(err, "errno", None) == errno.ELOOP:
                return "symlink loop; not followed"
            return f"symlink cannot be resolved ({err})"
        if not _inside(root, target):
            return "symlink points outside the dataset root"
        mode = os.stat(target).st_mode
    if not stat.S_ISREG(mode):
        return f"not a regular file ({file_kind(mode)}); never read"
    if not os.access(path, os.R_OK):
        return "file is not readable (permission denied); fix its permissions"
    return ""


def _display_name(rel: str) -> tuple[str, str]:
    """A path safe to store and print, and the problem if the name is not valid UTF-8."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        shown = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return shown, "file name is not valid UTF-8; rename the file (it was not read)"
    return rel, ""


def _class_folders(base: Path, root: Path, extensions: list[str]) -> list[Item]:
    """Every file under each class folder of ``base``: wanted files as items (with a problem
    when they must not be read), other extensions as ``ignored`` items, folder links and
    unreadable folders as problems. Links to folders are never followed."""
    suffixes = {ext.lower() for ext in extensions}
    items: list[Item] = []
    for class_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label, _ = _display_name(class_dir.name)

        def unreadable(err: OSError, label: str = label) -> None:
            rel, _ = _display_name(Path(err.filename).relative_to(root).as_posix())
            items.append(Item(rel, label, "", f"folder cannot be read ({err.strerror})"))

        for folder, dirs, files in os.walk(class_dir, onerror=unreadable):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            here = Path(folder)
            for name in [d for d in dirs if (here / d).is_symlink()]:
                dirs.remove(name)  # os.walk does not descend into them; say so
                rel, _ = _display_name((here / name).relative_to(root).as_posix())
                problem = "symlink to a folder; folder links are not followed"
                items.append(Item(rel, label, "", problem))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                file = here / name
                rel, name_problem = _display_name(file.relative_to(root).as_posix())
                if file.suffix.lower() not in suffixes:
                    items.append(Item(rel, label, "", "", ignored=True))
                    continue
                items.append(Item(rel, label, "", name_problem or file_problem(root, file)))
    return items


def read_csv_rows(path: Path, columns: list[str], *, hint: str) -> list[tuple[int, dict[str, str]]]:
    """The rows of a CSV file with their line numbers (quoted fields may span lines).

    Raises:
        LayoutError: a required column is missing, the file is not UTF-8, or a line cannot be
            parsed (an unclosed quote, a NUL byte); the message names the file and the line.
    """
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, strict=True)
            found = reader.fieldnames or []
            missing = [c for c in columns if c not in found]
            if missing:
                raise LayoutError(f"{path} lacks column(s) {missing}; found {found}. {hint}")
            end_of_last_row = reader.line_num
            try:
                for row in reader:
                    rows.append((end_of_last_row + 1, {k: v or "" for k, v in row.items() if k}))
                    end_of_last_row = reader.line_num
            except csv.Error as err:
                raise LayoutError(
                    f"{path} line {end_of_last_row + 1}: cannot be parsed ({err}); fix that "
                    "line (an unclosed quote there swallows every line after it)"
                ) from None
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise LayoutError(
            f"{path} line {line}: not UTF-8 text ({err.reason}); save it as UTF-8"
        ) from None
    return rows


def _csv_manifest(root: Path, data: DataConfig) -> list[Item]:
    manifest = root / data.csv_file
    rows = read_csv_rows(
        manifest, [data.csv_path_column, data.csv_label_column],
        hint="Set data.csv_path_column / data.csv_label_column in the recipe to match the file",
    )  # fmt: skip
    image_dir = root / data.csv_image_dir
    items = []
    first_line: dict[str, int] = {}
    for line, row in rows:
        name = row.get(data.csv_path_column, "").strip()
        label = row.get(data.csv_label_column, "").strip()
        rel = (PurePosixPath(data.csv_image_dir) / name).as_posix()
        where = f"{data.csv_file} line {line}"
        issue = ""
        if not name:
            issue = f"{where}: empty {data.csv_path_column}"
        elif (
            PurePosixPath(name).is_absolute()
            or Path(name).is_absolute()
            or ".." in PurePosixPath(name).parts
        ):
            issue = f"{where}: path {name!r} escapes the image folder"
        elif not (image_dir / name).is_symlink() and not (image_dir / name).exists():
            issue = f"{where}: listed file {rel} does not exist"
        elif rel in first_line:
            issue = f"{where}: {rel} is listed again (first on line {first_line[rel]})"
        else:
            issue = file_problem(image_dir, image_dir / name)
            issue = issue.replace("dataset root", "image folder")
        first_line.setdefault(rel, line)
        keep_rel = not issue or "does not exist" in issue or "listed again" in issue
        items.append(Item(rel if keep_rel or "escapes" not in issue else name, label, "", issue))
    return items
