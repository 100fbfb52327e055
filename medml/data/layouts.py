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
``auto``. Every layout yields :class:`Item` rows.

A layout looks before anything is opened: every entry is examined with ``lstat`` (never
through a link), and nothing it meets is dropped uncounted:

- a regular file with an accepted extension is an image candidate (ingest opens it);
- **symlinks are never followed** (:data:`SYMLINK_POLICY`), to files or folders, inside the
  root or out of it, so no byte outside the root is read: a link with an accepted extension,
  or a link to a folder (a class folder too), is an item with an ``issue`` saying what it
  points at (validation quarantines it), any other link an ``ignored`` item of kind
  ``symlink``;
- special files (named pipes, sockets, devices) with an accepted extension are items with an
  ``issue``, others ``ignored`` items of their kind; unreadable files and folders and names
  that are not UTF-8 are items with an ``issue``;
- hidden entries (``.thumbs/``, ``.DS_Store``, an Emacs lock ``.#x.jpg``) are ``ignored``
  items of kind ``hidden`` (``hidden folder``: one item, never entered);
- files outside the class (or split) folders, and files under the CSV's image folder that the
  CSV does not list, are ``ignored`` items of that kind.

An ``ignored`` item's ``issue`` is its kind: empty for a regular file whose extension the recipe
does not list (the report counts those by extension). Problems that concern one file (a CSV
path that escapes the image folder, a link, a listed file that does not exist, a file listed
with two labels) are recorded in ``issue`` rather than raised, so validation quarantines them
with the reason and the rest of the dataset goes on.
"""

from __future__ import annotations

import codecs
import csv
import errno
import io
import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from medml.config import DataConfig
from medml.data.images import file_kind, open_regular_file
from medml.data.synthetic import GROUPS_FILE
from medml.errors import MedmlError
from medml.extensions import LAYOUTS

SPLIT_DIRS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
SYMLINK_POLICY = "symlinks are not followed"
"""The one symlink policy of ingest: a link (to a file or a folder) is reported, never read."""

HIDDEN, HIDDEN_FOLDER, SYMLINK = "hidden", "hidden folder", "symlink"
NOT_IN_CLASS_FOLDER, NOT_IN_SPLIT_FOLDER = "not in a class folder", "not in a split folder"


class LayoutError(MedmlError, ValueError):
    """The dataset root does not match the layout; the message says what was expected."""


@dataclass(frozen=True)
class Item:
    """One labelled file found under the root."""

    path: str  # relative to the root, POSIX separators
    label: str
    source_split: str = ""  # "train"/"validation"/"test" when the dataset fixes it, else ""
    issue: str = ""  # why this file cannot be used (quarantined); for ignored items, the kind
    ignored: bool = False  # never read: an extension outside data.extensions, hidden, … (counted)


def detect_layout(root: Path, data: DataConfig) -> str:
    """The recipe's layout, or a guess from the directory structure when it says ``auto``."""
    if data.layout != "auto":
        return data.layout
    if os.path.lexists(root / data.csv_file):  # not a regular file: the layout says so
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
    return _class_folders(root, root, [*data.extensions, ".dcm"], tables={GROUPS_FILE})


@LAYOUTS.register("split_folders")
def split_folders(root: Path, data: DataConfig) -> list[Item]:
    """``<root>/{train,val,validation,test}/<Class>/…``; ``test`` becomes the holdout;
    ``val``/``validation`` is the validation set under ``split.validation: dataset`` and
    ordinary training data otherwise. Other entries of the root are counted as ignored."""
    items: list[Item] = []
    found, linked = False, []
    for name, mode in _entries(root):
        path = root / name
        split = SPLIT_DIRS.get(name.lower())
        if split is not None and stat.S_ISDIR(mode):
            found = True
            for item in _class_folders(path, root, data.extensions):
                items.append(Item(item.path, item.label, split, item.issue, item.ignored))
        elif split is not None and stat.S_ISLNK(mode) and os.path.isdir(path):
            linked.append(name)
            items.append(Item(_display_name(name)[0], "", split, link_problem(root, path)))
        elif not (name == GROUPS_FILE and stat.S_ISREG(mode)):
            items.append(_outside_item(path, root, mode, NOT_IN_SPLIT_FOLDER))
    if not found:
        links = f" ({', '.join(linked)}: {SYMLINK_POLICY})" if linked else ""
        raise LayoutError(f"{root} has none of the split folders {sorted(SPLIT_DIRS)}{links}")
    return items


@LAYOUTS.register("csv")
def csv_manifest(root: Path, data: DataConfig) -> list[Item]:
    """A manifest CSV (``data.csv_file``) naming files under ``data.csv_image_dir``."""
    return _csv_manifest(root, data)


@LAYOUTS.register("dicom")
def dicom_folders(root: Path, data: DataConfig) -> list[Item]:
    """Class folders of ``.dcm`` slices."""
    return _class_folders(root, root, [".dcm"], tables={GROUPS_FILE})


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, RuntimeError, OSError):
        return False
    return True


def kind_word(mode: int) -> str:
    """What a ``st_mode`` is, without the article: ``"named pipe"``, ``"symlink"``, …"""
    return file_kind(mode).split(" ", 1)[1]


def link_problem(root: Path, path: Path) -> str:
    """Why the symlink ``path`` is not read (:data:`SYMLINK_POLICY`), saying what it points
    at; reads links and ``stat``\\ s their target, never opens anything."""
    try:
        target = path.resolve(strict=True)
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        what = "broken symlink (its target does not exist)"
    except (RuntimeError, OSError) as err:  # ELOOP: RuntimeError before Python 3.13
        if "loop" in str(err).lower() or getattr(err, "errno", None) == errno.ELOOP:
            what = "symlink loop"
        else:
            what = f"symlink that cannot be resolved ({getattr(err, 'strerror', None) or err})"
    else:
        if stat.S_ISDIR(mode):
            what = "symlink to a folder"
        elif not _inside(root, target):
            what = "symlink points outside the dataset root"
        else:
            what = f"symlink to {file_kind(mode)}"
    return f"{what}; {SYMLINK_POLICY}"


def file_problem(root: Path, path: Path) -> str:
    """Why ``path`` must not be opened, or ``""`` when it is a readable regular file.

    Looks with ``lstat`` only: never follows a link (:data:`SYMLINK_POLICY`), never opens
    anything.
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError as err:
        return f"file cannot be examined ({err.strerror or err})"
    if stat.S_ISLNK(mode):
        return link_problem(root, path)
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


def _entries(folder: Path) -> list[tuple[str, int]]:
    """The names in ``folder`` with their ``lstat`` modes (0: vanished or cannot be
    examined), in name order.

    Raises:
        OSError: the folder cannot be listed.
    """
    found = []
    with os.scandir(folder) as listing:
        for entry in listing:
            found.append((entry.name, _lstat_mode(entry)))
    return sorted(found)


def _lstat_mode(entry: os.DirEntry[str]) -> int:
    """The entry's ``lstat`` file type: from the directory listing itself when it says
    (links, folders, regular files), else from ``lstat`` (0 when that fails)."""
    if entry.is_symlink():
        return stat.S_IFLNK
    if entry.is_dir(follow_symlinks=False):
        return stat.S_IFDIR
    if entry.is_file(follow_symlinks=False):
        return stat.S_IFREG
    try:
        return entry.stat(follow_symlinks=False).st_mode
    except OSError:
        return 0


def _item(
    path: Path, root: Path, label: str, suffixes: set[str], mode: int, unlisted: str = ""
) -> Item:
    """The item of one entry of a class folder (``lstat`` mode ``mode``); see the module doc.
    With ``unlisted`` (the CSV's image folder), every entry is ignored, with that kind when it
    is a regular file with an accepted extension."""
    rel, name_problem = _display_name(path.relative_to(root).as_posix())
    wanted = path.suffix.lower() in suffixes
    if path.name.startswith("."):
        return Item(rel, label, "", HIDDEN_FOLDER if stat.S_ISDIR(mode) else HIDDEN, ignored=True)
    if unlisted:
        kind = (unlisted if wanted else "") if stat.S_ISREG(mode) else kind_word(mode)
        return Item(rel, label, "", kind, ignored=True)
    if stat.S_ISLNK(mode) and os.path.isdir(path):
        return Item(rel, label, "", link_problem(root, path))
    if not wanted:
        return Item(rel, label, "", "" if stat.S_ISREG(mode) else kind_word(mode), ignored=True)
    return Item(rel, label, "", name_problem or file_problem(root, path))


def _walk(base: Path, root: Path, label: str, suffixes: set[str], unlisted: str = "") -> list[Item]:
    """Every entry under folder ``base`` as an item (:func:`_item`), depth first in name order
    (in each folder: links to folders, then its other entries, then its subfolders); hidden
    folders and links are never entered."""
    items: list[Item] = []
    stack = [base]
    while stack:
        folder = stack.pop()
        try:
            entries = _entries(folder)
        except OSError as err:
            rel, _ = _display_name(folder.relative_to(root).as_posix())
            items.append(Item(rel, label, "", f"folder cannot be read ({err.strerror or err})"))
            continue
        links, others, subfolders = [], [], []
        for name, mode in entries:
            path = folder / name
            if stat.S_ISDIR(mode) and not name.startswith("."):
                subfolders.append(path)
            elif stat.S_ISLNK(mode) and not name.startswith(".") and os.path.isdir(path):
                links.append(_item(path, root, label, suffixes, mode, unlisted))
            else:
                others.append(_item(path, root, label, suffixes, mode, unlisted))
        items += links + others
        stack.extend(reversed(subfolders))
    return items


def _outside_item(path: Path, root: Path, mode: int, kind: str) -> Item:
    """An entry of the root (or a split folder) that is not a class folder: ignored, with
    ``kind`` for a regular file, else hidden or its own kind."""
    rel, _ = _display_name(path.relative_to(root).as_posix())
    if path.name.startswith("."):
        return Item(rel, "", "", HIDDEN_FOLDER if stat.S_ISDIR(mode) else HIDDEN, ignored=True)
    own = kind if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else kind_word(mode)
    return Item(rel, "", "", own, ignored=True)


def _class_folders(
    base: Path, root: Path, extensions: list[str], *, tables: set[str] | None = None
) -> list[Item]:
    """Every class folder of ``base`` walked (:func:`_walk`); a link to a folder is an item
    with an issue (never followed); anything else in ``base`` but ``tables`` (the files the
    layout reads itself) is ignored with its kind (hidden, not in a class folder, …).

    Raises:
        LayoutError: ``base`` cannot be listed.
    """
    suffixes = {ext.lower() for ext in extensions}
    try:
        entries = _entries(base)
    except OSError as err:
        raise LayoutError(f"{base} cannot be read ({err.strerror or err})") from None
    items: list[Item] = []
    for name, mode in entries:
        path = base / name
        if stat.S_ISDIR(mode) and not name.startswith("."):
            items += _walk(path, root, _display_name(name)[0], suffixes)
        elif stat.S_ISLNK(mode) and not name.startswith(".") and os.path.isdir(path):
            rel, _ = _display_name(path.relative_to(root).as_posix())
            items.append(Item(rel, _display_name(name)[0], "", link_problem(root, path)))
        elif not (name in (tables or set()) and stat.S_ISREG(mode)):
            items.append(_outside_item(path, root, mode, NOT_IN_CLASS_FOLDER))
    return items


def read_csv_rows(
    path: Path, columns: list[str], *, hint: str, follow_symlinks: bool = True
) -> list[tuple[int, dict[str, str]]]:
    """The rows of a CSV file with their line numbers (quoted fields may span lines).

    The file is opened only if it is a regular file (never blocking on a pipe or a device),
    and not through a symlink unless ``follow_symlinks``.

    Raises:
        LayoutError: the file cannot be read or is not a regular file, a required column is
            missing, the file is not UTF-8, or a line cannot be parsed (an unclosed quote, a
            NUL byte); the message names the file and the line.
    """
    try:
        with os.fdopen(open_regular_file(path, follow_symlinks=follow_symlinks), "rb") as handle:
            data = handle.read()
    except (ValueError, OSError) as err:
        raise LayoutError(str(err)) from None
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: bom + err.start].count(b"\n") + 1
        raise LayoutError(
            f"{path} line {line}: not UTF-8 text ({err.reason}); save it as UTF-8"
        ) from None
    return _parse_csv(path, text, columns, hint)


def _parse_csv(
    path: Path, text: str, columns: list[str], hint: str
) -> list[tuple[int, dict[str, str]]]:
    rows: list[tuple[int, dict[str, str]]] = []
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
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
    return rows


def read_table(
    root: Path, path: Path, columns: list[str], *, hint: str
) -> list[tuple[int, dict[str, str]]]:
    """:func:`read_csv_rows` of a table the dataset holds (the CSV layout's file,
    ``groups.csv``), which must be a regular file in it: never a link, pipe or device.

    Raises:
        LayoutError: the file is missing, not a regular file or a link, or cannot be read or
            parsed; the message names it.
    """
    if not os.path.lexists(path):
        raise LayoutError(f"{path} does not exist")
    problem = file_problem(root, path)
    if problem:
        raise LayoutError(f"{path}: {problem}")
    return read_csv_rows(path, columns, hint=hint, follow_symlinks=False)


@dataclass(frozen=True)
class _Listed:
    """One row of the CSV layout's file."""

    line: int
    path: str  # the file under the root (as listed, when the listing is not a path under it)
    label: str
    issue: str
    normal: bool  # ``path`` is a normalised path under the image folder


def _csv_manifest(root: Path, data: DataConfig) -> list[Item]:
    """The CSV layout: one item per row, then the files under the image folder that the CSV
    does not list, ignored (counted).

    Raises:
        LayoutError: the CSV is missing, not a regular file, cannot be parsed, or has no rows.
    """
    table = root / data.csv_file
    columns = f"{data.csv_path_column},{data.csv_label_column}"
    rows = read_table(root, table, [data.csv_path_column, data.csv_label_column], hint=(
        "Set data.csv_path_column / data.csv_label_column in the recipe to match the file"
    ))  # fmt: skip
    if not rows:
        raise LayoutError(
            f"{table} has no rows (only its header); list one image per line as {columns}, "
            f"with the files under {root / data.csv_image_dir}"
        )
    folders: dict[str, str] = {}
    listed = [_listed_row(root, data, line, row, folders) for line, row in rows]
    items = _one_label_each(listed, data.csv_file)
    return items + _unlisted(root, data, [entry.path for entry in listed if entry.normal])


def _listed_row(
    root: Path, data: DataConfig, line: int, row: dict[str, str], folders: dict[str, str]
) -> _Listed:
    """A CSV row with the problem of its path (checked with ``lstat``, never followed);
    ``folders`` caches the problems of the folders on the way."""
    name = row.get(data.csv_path_column, "").strip()
    label = row.get(data.csv_label_column, "").strip()
    where = f"{data.csv_file} line {line}"
    rel = (PurePosixPath(data.csv_image_dir) / name).as_posix()
    pure = PurePosixPath(name)
    if not name:
        return _Listed(line, rel, label, f"{where}: empty {data.csv_path_column}", False)
    normal = posixpath.normpath(name)
    if pure.is_absolute() or Path(name).is_absolute() or normal.split("/")[0] == "..":
        return _Listed(line, name, label, f"{where}: path {name!r} escapes the image folder", False)
    if ".." in pure.parts:
        issue = f"{where}: path {name!r} is not normalised ('..' in it); list it as {normal!r}"
        return _Listed(line, rel, label, issue, False)
    parts = PurePosixPath(rel).parts
    for depth in range(1, len(parts)):
        folder = "/".join(parts[:depth])
        if folder not in folders:
            folders[folder] = _folder_problem(root / folder)
        if folders[folder]:
            problem = folders[folder].format(rel=rel, folder=folder)
            return _Listed(line, rel, label, f"{where}: {problem}", True)
    if not os.path.lexists(root / rel):
        return _Listed(line, rel, label, f"{where}: listed file {rel} does not exist", True)
    problem = file_problem(root, root / rel)
    return _Listed(line, rel, label, f"{where}: {problem}" if problem else "", True)


def _folder_problem(path: Path) -> str:
    """A message template (``{rel}``, ``{folder}``) when ``path`` is not a real folder."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "listed file {rel} does not exist"
    if stat.S_ISLNK(mode):
        return "{rel} is under {folder}, a symlink; " + SYMLINK_POLICY
    return "" if stat.S_ISDIR(mode) else "listed file {rel} does not exist"


def _one_label_each(listed: list[_Listed], csv_file: str) -> list[Item]:
    """Items of the CSV rows. A file listed twice with one label: the later rows are
    quarantined as repeats; with different labels, every row of it is quarantined naming them
    (its label is unknown, like an image found under two labels)."""
    rows_of: dict[str, list[_Listed]] = {}
    for entry in listed:
        if entry.normal:
            rows_of.setdefault(entry.path, []).append(entry)
    items = []
    for entry in listed:
        same = rows_of.get(entry.path, [entry]) if entry.normal else [entry]
        issue = entry.issue
        if len({other.label for other in same}) > 1:
            said = ", ".join(f"line {other.line}: {other.label!r}" for other in same[:5])
            issue = (f"{csv_file} line {entry.line}: {entry.path} is listed with different "
                     f"labels ({said}); give it one label")  # fmt: skip
        elif same[0] is not entry:
            issue = (f"{csv_file} line {entry.line}: {entry.path} is listed again "
                     f"(first on line {same[0].line})")  # fmt: skip
        items.append(Item(entry.path, entry.label, "", issue))
    return items


def _unlisted(root: Path, data: DataConfig, listed: list[str]) -> list[Item]:
    """The entries under the CSV's image folder that the CSV does not list, ignored (kind
    ``not listed in <csv>``, or hidden, symlink, … ; other extensions by extension)."""
    image_dir = root / data.csv_image_dir
    parts = PurePosixPath(data.csv_image_dir).parts
    for depth in range(1, len(parts) + 1):  # not a real folder: the listed rows say so
        if _folder_problem(root.joinpath(*parts[:depth])):
            return []
    known = set(listed)
    for rel in listed:
        known.update(parent.as_posix() for parent in PurePosixPath(rel).parents)
    suffixes = {ext.lower() for ext in data.extensions}
    found = _walk(image_dir, root, "", suffixes, unlisted=f"not listed in {data.csv_file}")
    return [item for item in found if item.path not in known]
