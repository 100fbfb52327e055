"""Ingest: a dataset directory becomes ``manifest.parquet``.

One row per image (a file, or one frame of a multi-frame file): ``path`` (relative to
``root``), ``root``, ``label``, ``group`` (and where it came from: ``group_source``),
``sha256``, ``bytes``, ``width``, ``height``, ``channels``, ``frame``/``frames``. Only headers
are read here (dimensions, frame count, DICOM grouping tags); full decoding is the validation
step's job.

Nothing a file can be makes ingest crash or hang: every path is examined with ``lstat`` before
anything is opened (:mod:`medml.data.layouts`), and only regular files with an accepted
extension are opened (non-blocking, never through a symlink, read within
:data:`READ_TIMEOUT_S` and never past the size they had when opened). Symlinks are never
followed; special files (pipes, devices, sockets), links, unreadable files and names that are
not UTF-8 get an ``issue`` (validation quarantines them with it); hidden files and folders,
files of other extensions or kinds, files outside the class folders and files the CSV does not
list are kept as ``ignored`` rows with their kind (counted in the validation report, never
read); an unparseable CSV stops the step naming its line.

The snapshot hash (:attr:`IngestResult.dvc_md5`) is computed from what ingest accepted, never
by walking the folder again: the files it read (path and md5) and the tables it read (the CSV,
``groups.csv``), as a DVC ``.dir`` listing (:func:`medml.dvc_cache.directory_md5`). It equals
``dvc add``'s hash of the folder whenever the folder holds only those files.

Groups (patients) come from ``groups.csv`` when the dataset has one (every file must be in it,
or ``data.groups_missing: own_group``), else from DICOM headers (``data.dicom_group_tags``,
``PatientID`` first), else each file is its own group. DICOM identifiers are stored only as a
keyed hash (:func:`pseudonym`): no patient name or ID reaches the manifest, logs or MLflow.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import pandas as pd

from medml.config import DataConfig, Recipe
from medml.data.images import ImageHeader, header_of, open_regular_file
from medml.data.layouts import Item, LayoutError, discover, read_table
from medml.data.reuse import STAT_COLUMNS, ReuseTable, stat_identity
from medml.data.synthetic import GROUPS_FILE
from medml.dvc_cache import directory_md5
from medml.errors import MedmlError
from medml.io import atomic_path, parallel_map
from medml.settings import Settings

MANIFEST_COLUMNS = [
    "path", "root", "label", "group", "group_source", "sha256", "md5", "bytes", "width", "height",
    "channels", "frame", "frames", "source_split", "issue", "ignored",
]  # fmt: skip
PSEUDONYM_KEY_ENV = "MEDML_PSEUDONYM_KEY"
READ_TIMEOUT_S = 120.0
"""Longest one file may take to read (checked between 1 MiB chunks): a file on a stalled
mount, or one that never ends, is quarantined with the reason instead of stalling ingest."""


class IngestError(MedmlError, ValueError):
    """The source cannot be ingested; the message names the path and what to do."""


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest` wrote."""

    manifest: Path
    images: int
    class_counts: dict[str, int]
    ignored: dict[str, int] = field(default_factory=dict)
    dvc_md5: str = ""  # the snapshot hash: DVC's ``.dir`` hash of the files ingest accepted


def ingest(
    source: Path,
    manifest_path: Path,
    recipe: Recipe,
    *,
    workers: int = 0,
    reuse: bool = True,
    pseudonym_key: bytes | None = None,
) -> IngestResult:
    """Scan a dataset directory and write its manifest.

    Args:
        source: dataset root in any layout of :mod:`medml.data.layouts`.
        manifest_path: where to write ``manifest.parquet``.
        recipe: the run's recipe (layout, extensions, multi-frame and grouping policies).
        workers: hashing threads; 0 means one per core.
        reuse: keep each file's hashes and header for the next ingest of ``source``, and use
            the last one's for files that are the same files (:mod:`medml.data.reuse`); off
            for a folder made for this run alone (a download of an S3 snapshot).
        pseudonym_key: the key of the DICOM patient pseudonyms (default:
            :func:`pseudonym_key` of the environment's settings).

    Returns:
        The manifest path, the number of images, the per-label counts, the ignored files by
        extension or kind, and the snapshot hash (:func:`snapshot_md5`).

    Raises:
        IngestError: the source is missing, is not a directory, holds no images, has a CSV
            that cannot be parsed, or files missing from ``groups.csv``.
    """
    key = pseudonym_key if pseudonym_key is not None else _settings_pseudonym_key()
    root, layout, items, groups = _scan(source, recipe.data, key)
    found = _facts_of(root, items, recipe.data.dicom_group_tags, workers=workers, reuse=reuse)
    wanted = [item for item in items if not item.ignored and not item.issue]  # the rest: unread
    _check_groups_cover(groups, wanted, recipe.data, root)
    recorded_root = _recorded_root(root, Path(manifest_path).resolve().parent)
    rows = [row for item, fact in zip(items, found, strict=True)
            for row in _rows(item, fact, recorded_root, groups, recipe.data, key)]  # fmt: skip
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    snapshot = snapshot_md5(manifest, _tables_read(root, layout, recipe.data))
    with atomic_path(Path(manifest_path)) as tmp:
        manifest.to_parquet(tmp, index=False)
    images = manifest[~manifest["ignored"]]
    counts = images["label"].value_counts().sort_index()
    return IngestResult(
        Path(manifest_path), len(images), {str(k): int(v) for k, v in counts.items()},
        ignored_by_extension(manifest), snapshot,
    )  # fmt: skip


def snapshot_md5(manifest: pd.DataFrame, tables: dict[str, str]) -> str:
    """The snapshot hash: DVC's ``.dir`` hash of the files ingest accepted and read (rows not
    ignored with an md5; each file once, whatever its frames) and of the ``tables`` it read
    (relative path -> md5). Nothing is walked or opened: links, pipes, hidden, ignored and
    unreadable files never enter it, nor any byte outside the root. Equal to ``dvc add``'s
    hash of the folder when it holds only these files."""
    read = manifest[~manifest["ignored"] & (manifest["md5"] != "")]
    return directory_md5({**dict(zip(read["path"], read["md5"], strict=True)), **tables})


def _tables_read(root: Path, layout: str, data: DataConfig) -> dict[str, str]:
    """The md5 of each table the layout and ingest read (the CSV, ``groups.csv``), by path."""
    names = [data.csv_file] if layout == "csv" else []
    names += [GROUPS_FILE] if os.path.lexists(root / GROUPS_FILE) else []
    tables = {}
    for name in names:
        md5 = hashlib.md5()
        try:
            _read_hashed(root / name, [md5])
        except (ValueError, OSError) as err:
            raise IngestError(
                f"{root / name} cannot be read for the snapshot hash: {err}"
            ) from None
        tables[PurePosixPath(name).as_posix()] = md5.hexdigest()
    return tables


def _scan(
    source: Path, data: DataConfig, key: bytes
) -> tuple[Path, str, list[Item], dict[str, tuple[str, str]]]:
    """The dataset root, its layout and files (:func:`~medml.data.layouts.discover`) and the
    group of each file that a table names (:func:`_read_groups`; empty without one).

    Raises:
        IngestError: the source is missing, is not a directory, has a CSV that cannot be
            parsed, or holds no images.
    """
    root = Path(source).expanduser().resolve()
    if not root.exists():
        raise IngestError(f"source directory {source} does not exist; check --source")
    if not root.is_dir():
        raise IngestError(f"source {source} is not a directory; point --source at the dataset root")
    try:
        layout, items = discover(root, data)
        groups = _read_groups(root, layout, data, key)
    except LayoutError as err:
        raise IngestError(str(err)) from None
    if not any(not item.ignored for item in items):
        example = f"train/{data.classes[0]}" if layout == "split_folders" else data.classes[0]
        seen = _ignored_summary(items)
        raise IngestError(
            f"no images ({', '.join(data.extensions)}) found under {root} "
            f"(layout {layout}); expected e.g. {root}/{example}/image.jpg"
            + (f"; found only ignored files ({seen})" if seen else "")
        )
    return root, layout, items, groups


def _ignored_summary(items: list[Item]) -> str:
    """``"3 .gif, 1 hidden folder"``: the ignored items by kind (or extension)."""
    kinds = pd.Series([_ignored_key(item.path, item.issue) for item in items if item.ignored])
    return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.value_counts().items()))


def _facts_of(
    root: Path, items: list[Item], tags: list[str], *, workers: int, reuse: bool
) -> list[dict[str, object]]:
    """Each file's hashes, size and header (:func:`_reused_facts`), read in parallel; files
    with an ``issue`` and ignored ones are never opened."""
    kept = ReuseTable("ingest", {"root": str(root), "tags": tags}, key=["path", *STAT_COLUMNS],
                      enabled=reuse)  # fmt: skip

    def facts(item: Item) -> dict[str, object]:
        if item.issue or item.ignored:  # never open what must not be read
            return _no_facts(item.issue)
        return _reused_facts(root, item.path, tags, kept)

    found = parallel_map(facts, items, total=len(items), desc="ingest", unit="file",
                         workers=workers)  # fmt: skip
    kept.save()
    return found


def ignored_by_extension(manifest: pd.DataFrame) -> dict[str, int]:
    """How many files were ignored, by kind: ``hidden``, ``hidden folder``, ``symlink``,
    ``named pipe``, ``not in a class folder``, ``not listed in Training_set.csv``, … and, for
    regular files of an extension the recipe does not list, by extension (``"(none)"`` for
    none)."""
    ignored = manifest.loc[manifest["ignored"], ["path", "issue"]]
    keys = [
        _ignored_key(p, kind) for p, kind in zip(ignored["path"], ignored["issue"], strict=True)
    ]
    return dict(sorted(pd.Series(keys, dtype=str).value_counts().to_dict().items()))


def _ignored_key(path: str, kind: str) -> str:
    return kind or Path(path).suffix.lower() or "(none)"


def _recorded_root(root: Path, table_dir: Path) -> str:
    """The ``root`` a manifest records: relative to the manifest's own folder when the dataset
    lies inside it (a run's copy of an S3 snapshot, so the run directory can move: a mirror on
    another worker), else absolute."""
    return os.path.relpath(root, table_dir) if root.is_relative_to(table_dir) else str(root)


def absolute_paths(table: pd.DataFrame, table_dir: Path) -> list[str]:
    """Absolute file paths of a manifest's (or splits table's) rows; relative roots are
    relative to ``table_dir``, the folder of the table file (strings: a tenth of a ``Path``'s
    memory)."""
    base = str(Path(table_dir).resolve())
    return [os.path.join(base, root, rel)
            for root, rel in zip(table["root"], table["path"], strict=True)]  # fmt: skip


def read_rows(path: Path, columns: list[str]) -> pd.DataFrame:
    """Only ``columns`` of a manifest/splits parquet (they can be wide: hashes, reasons);
    ``frame`` is 0 in tables written before multi-frame support."""
    import pyarrow.parquet as pq

    present = set(pq.read_schema(path).names)
    table = pd.read_parquet(path, columns=[c for c in columns if c in present])
    if "frame" in columns and "frame" not in present:
        table["frame"] = 0
    return table


def frames_of(table: pd.DataFrame) -> list[int]:
    """The frame each row reads (0 for single-frame files and tables without the column)."""
    if "frame" not in table.columns:
        return [0] * len(table)
    return table["frame"].fillna(0).astype("int64").tolist()


def pseudonym(tag: str, value: str, key: bytes) -> str:
    """A keyed hash (HMAC-SHA256 with ``key``, :func:`pseudonym_key`) of a DICOM identifier:
    equal values give equal pseudonyms, and nobody without the key can tell the value (or
    test a guess)."""
    digest = hmac.new(key, f"{tag}\0{value}".encode(), hashlib.sha256)
    return f"{tag}:{digest.hexdigest()[:20]}"


def pseudonym_key(settings: Settings) -> bytes:
    """The pseudonym key: :attr:`Settings.pseudonym_key` (``$MEDML_PSEUDONYM_KEY``), else a
    random key created once in ``<home>/pseudonym.key`` (mode 600). Machines that must
    reproduce the same split of a DICOM dataset share the key."""
    if settings.pseudonym_key:
        return settings.pseudonym_key.encode()
    return _key_file(settings.home / "pseudonym.key")


def _settings_pseudonym_key() -> bytes:
    return pseudonym_key(Settings.from_env())


@functools.cache
def _key_file(path: Path) -> bytes:
    """The key in ``path``, created once (read once per process, not once per file)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: use theirs
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def _read_groups(
    root: Path, layout: str, data: DataConfig, key: bytes
) -> dict[str, tuple[str, str]]:
    """Each file's ``(group, where it came from)`` as a table names it: ``groups.csv``
    (``path,group``), or, with ``data.csv_group_column``, that column of the CSV layout's file
    (pseudonymised: a patient ID column is an identifier). Rows with an empty group are left
    out (a file without a group: :func:`_check_groups_cover`).

    Raises:
        LayoutError: the table cannot be read, or both sources are given.
        IngestError: ``data.csv_group_column`` on a dataset that is not in the CSV layout.
    """
    sidecar = root / GROUPS_FILE
    column = data.csv_group_column
    if column is not None:
        if layout != "csv":
            raise IngestError(
                f"data.csv_group_column={column!r} names a column of the CSV layout's file, but "
                f"{root} is in the {layout} layout; remove it (give a {GROUPS_FILE} instead)"
            )
        if os.path.lexists(sidecar):
            raise LayoutError(
                f"{sidecar} and data.csv_group_column={column!r} both name the patient groups; "
                f"keep one (remove {GROUPS_FILE}, or data.csv_group_column)"
            )
        path_column = data.csv_path_column
        rows = read_table(root, root / data.csv_file, [path_column, column], hint=(
            "data.csv_group_column names the column of each image's patient; set it to one of "
            "the file's columns"
        ))  # fmt: skip
        image_dir = PurePosixPath(data.csv_image_dir)
        source = f"{data.csv_file}:{column}"
        found: dict[str, tuple[int, str]] = {}
        for line, row in rows:
            path, group = (image_dir / row[path_column].strip()).as_posix(), row[column].strip()
            if group and path in found and found[path][1] != group:
                raise LayoutError(
                    f"{root / data.csv_file} lines {found[path][0]} and {line}: {path} is listed "
                    f"with two different {column!r} values; give each image one patient"
                )
            if group:
                found.setdefault(path, (line, group))
        return {path: (pseudonym(column, group, key), source)
                for path, (_, group) in found.items()}  # fmt: skip
    if not os.path.lexists(sidecar):  # a link or a pipe is an error, not "no groups"
        return {}
    rows = read_table(
        root, sidecar, ["path", "group"], hint="it must have the columns 'path,group'"
    )
    return {row["path"]: (row["group"], GROUPS_FILE) for _, row in rows}


def _check_groups_cover(
    groups: dict[str, tuple[str, str]], items: list[Item], data: DataConfig, root: Path
) -> None:
    if data.groups_missing == "own_group" or not (groups or data.csv_group_column):
        return
    missing = [item.path for item in items if item.path not in groups]
    if missing:
        where = (f"given a group in {root / data.csv_file} (column {data.csv_group_column!r})"
                 if data.csv_group_column else f"in {root / GROUPS_FILE}")  # fmt: skip
        raise IngestError(
            f"{len(missing)} of {len(items)} files are not {where} "
            f"(e.g. {', '.join(missing[:3])}); add them with their patient group, or set "
            "data.groups_missing=own_group to give each its own group (counted in the "
            "validation report)"
        )


def _rows(
    item: Item,
    fact: dict[str, object],
    root: str,
    groups: dict[str, tuple[str, str]],
    data: DataConfig,
    key: bytes,
) -> list[dict[str, object]]:
    """The manifest rows of one file: one per frame the recipe's policy keeps."""
    header = fact.pop("header", None)
    frames = header.frames if isinstance(header, ImageHeader) else 1
    group, source = _group_of(item.path, header, groups, key)
    base = {"path": item.path, "root": root, "label": item.label, "group": group,
            "group_source": source, **fact, "frames": frames, "source_split": item.source_split,
            "ignored": item.ignored}  # fmt: skip
    return [{**base, "frame": frame} for frame in chosen_frames(frames, data.multi_frame)]


def chosen_frames(frames: int, policy: str) -> list[int]:
    """The frames ``data.multi_frame`` keeps of a file with ``frames`` frames."""
    if frames <= 1 or policy == "first":
        return [0]
    return [frames // 2] if policy == "middle" else list(range(frames))


def _group_of(
    path: str, header: object, groups: dict[str, tuple[str, str]], key: bytes
) -> tuple[str, str]:
    if path in groups:
        return groups[path]
    tagged = next(iter(header.tags.items()), None) if isinstance(header, ImageHeader) else None
    if tagged is not None:  # the first of data.dicom_group_tags the header has
        tag, value = tagged
        return pseudonym(tag, value, key), tag
    return path, "file"


def _no_facts(issue: str) -> dict[str, object]:
    return {
        "sha256": "",
        "md5": "",
        "bytes": 0,
        "width": 0,
        "height": 0,
        "channels": 0,
        "issue": issue,
    }


_KEPT_FACTS = ["sha256", "md5", "bytes", "width", "height", "channels"]


def _reused_facts(root: Path, rel: str, tags: list[str], kept: ReuseTable) -> dict[str, object]:
    """:func:`_file_facts`, or what the last ingest of this folder found when the file is the
    same one (see :mod:`medml.data.reuse`). Headers with DICOM identifiers are never kept."""
    path = root / rel
    identity = stat_identity(path, kept.started_ns)
    row = kept.get(rel, *identity) if identity is not None else None
    if row is not None:
        sides = (int(row["width"]), int(row["height"]), int(row["channels"]), int(row["frames"]))
        fact: dict[str, object] = {c: row[c] for c in _KEPT_FACTS}
        fact.update(issue="", header=ImageHeader(*sides))
    else:
        fact = _file_facts(path, tags)
    header = fact.get("header")
    if identity is not None and isinstance(header, ImageHeader) and not header.tags:
        kept.keep({"path": rel, **dict(zip(STAT_COLUMNS, identity, strict=True)),
                   **{c: fact[c] for c in _KEPT_FACTS}, "frames": header.frames})  # fmt: skip
    return fact


def _file_facts(path: Path, tags: list[str]) -> dict[str, object]:
    """Hashes, size and header of one file (read once: sha256 for medml, md5 for DVC's
    snapshot hash; never through a symlink, see :func:`_read_hashed`); ``issue`` says why it
    must not be decoded."""
    digest, md5 = hashlib.sha256(), hashlib.md5()
    try:
        with os.fdopen(open_regular_file(path, follow_symlinks=False), "rb") as handle:
            size = _read_hashed(handle, [digest, md5])
            try:
                header = header_of(handle, str(path), tags=tags)
            except ValueError as err:
                return {**_no_facts(str(err).replace(f"{path}", "the file")),
                        "sha256": digest.hexdigest(), "md5": md5.hexdigest(),
                        "bytes": size}  # fmt: skip
    except (ValueError, OSError) as err:
        return _no_facts(str(err).replace(f"{path}", "the file") or "file cannot be read")
    return {"sha256": digest.hexdigest(), "md5": md5.hexdigest(), "bytes": size,
            "width": header.width,
            "height": header.height, "channels": header.channels, "issue": "",
            "header": header}  # fmt: skip


def _read_hashed(
    source: Path | BinaryIO, hashes: list[Any], timeout: float = READ_TIMEOUT_S
) -> int:
    """Feed every byte of a regular file (a path: opened without following a link, never
    blocking on a pipe; or an open file, read from where it is) to ``hashes``; returns the
    number of bytes.

    Raises:
        ValueError: not a regular file, reading took longer than ``timeout`` seconds, or the
            file changed size while it was read (it is being written, or is no real file).
        OSError: a read failed.
    """
    if isinstance(source, Path):
        with os.fdopen(open_regular_file(source, follow_symlinks=False), "rb") as handle:
            return _read_hashed(handle, hashes, timeout)
    expected = os.fstat(source.fileno()).st_size
    deadline = time.monotonic() + timeout
    size = 0
    while chunk := source.read(1 << 20):
        size += len(chunk)
        if size > expected:
            break
        for digest in hashes:
            digest.update(chunk)
        if time.monotonic() > deadline:
            raise ValueError(f"reading the file took more than {timeout:g} s; it was not used")
    if size != expected:
        raise ValueError(
            f"the file changed size while it was read ({expected} bytes when opened); "
            "ingest again once it is complete"
        )
    return size
