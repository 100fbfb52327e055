"""Ingest looks before it opens (issue 24): every path is examined with ``lstat`` first, only
regular files with an accepted extension are opened, symlinks are never followed, everything
else is counted with its kind, and the snapshot hash is built from what ingest accepted.

Every ingest that meets a pipe or a link to ``/dev/zero`` runs in a forked child with a
deadline, so a regression fails the test instead of hanging it.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytest

from medml import runs, steps
from medml.config import load_recipe
from medml.data import ingest as ingest_module
from medml.data.ingest import IngestError, ignored_by_extension, ingest
from medml.dvc_cache import dvc_md5
from tests.conftest import TINY

pytestmark = pytest.mark.timeout(120)

RECIPE = load_recipe("kidney-ct", overrides=[
    "data.min_images_per_class=1", "data.max_quarantine_fraction=1.0", "data.min_image_side=8",
])  # fmt: skip
CAPSULE = load_recipe("capsule-endoscopy", overrides=["data.layout=csv"])


def bounded(fn: Callable[[], Any], timeout: float = 30.0) -> Any:
    """``fn()`` in a forked child; fails the test when it has not finished in ``timeout`` s
    (a hang), re-raises what it raised (by type name and message)."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)

    def child() -> None:
        try:
            sender.send(("ok", fn()))
        except BaseException as err:  # reported to the parent
            sender.send(("error", (type(err).__name__, str(err))))

    process = context.Process(target=child)
    process.start()
    if not receiver.poll(timeout):
        process.kill()
        process.join()
        pytest.fail(f"did not finish within {timeout:g} s: something was opened that blocks")
    status, value = receiver.recv()
    process.join()
    if status == "error":
        raise AssertionError(f"{value[0]}: {value[1]}")
    return value


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 255, (32, 32), dtype=np.uint8)
    cv2.imwrite(str(path), image)


def _dataset(root: Path) -> Path:
    for k, label in enumerate(("Normal", "Cyst", "Stone", "Tumor")):
        for i in range(3):
            _png(root / label / f"img{i}.png", 10 * k + i)
    return root


def _socket(path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()


def _zero_device(path: Path) -> bool:
    """A character device node like /dev/zero at ``path``; False where nodes cannot be made."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except OSError:
        return False
    return True


def test_a_pipe_or_a_link_to_dev_zero_never_hangs_the_ingest_step(tmp_path: Path) -> None:
    clean = _dataset(tmp_path / "clean")
    source = shutil.copytree(clean, tmp_path / "source")
    normal = source / "Normal"
    os.mkfifo(normal / "notes.txt")  # a pipe whose name is no image
    os.mkfifo(normal / "x.jpg")
    os.symlink("/dev/zero", normal / "z.jpg")
    os.symlink("/dev/zero", normal / "zero.txt")
    os.mkfifo(source / "pipe-at-the-root")
    run_dir = tmp_path / "run"
    runs.init_run(run_dir, source, "kidney-ct", overrides=TINY)

    outcome = bounded(lambda: steps.ingest(run_dir))

    manifest = pd.read_parquet(run_dir / "manifest.parquet").set_index("path")
    assert manifest.loc["Normal/notes.txt", "issue"] == "named pipe"
    assert manifest.loc["Normal/zero.txt", "issue"] == "symlink"
    assert manifest.loc["pipe-at-the-root", "issue"] == "named pipe"
    assert "a named pipe" in manifest.loc["Normal/x.jpg", "issue"]
    assert "outside the dataset root" in manifest.loc["Normal/z.jpg", "issue"]
    assert (manifest.loc[manifest["issue"] != "", "md5"] == "").all()  # never read
    assert outcome["dvc_md5"] == dvc_md5(clean)  # the hash of the 12 images, nothing else
    assert json.loads((run_dir / "snapshot.json").read_text())["dvc_md5"] == outcome["dvc_md5"]


def test_every_kind_is_counted_with_its_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    _png(outside / "elsewhere.png", 90)
    source = _dataset(tmp_path / "ds")
    normal = source / "Normal"
    os.mkfifo(normal / "notes.txt")
    os.mkfifo(normal / "x.jpg")
    os.symlink("/dev/zero", normal / "z.jpg")
    os.symlink(normal / "gone.jpg", normal / "dangling.jpg")
    os.symlink("user@host.123:456", normal / ".#img0.png")  # an Emacs lock: a dangling link
    os.symlink("/nowhere/README", normal / "README.lnk")
    os.symlink(normal / "loop-b.jpg", normal / "loop-a.jpg")
    os.symlink(normal / "loop-a.jpg", normal / "loop-b.jpg")
    os.symlink(normal / "img0.png", normal / "again.png")  # inside the root: not followed either
    _socket(normal / "socket.png")
    _socket(normal / "socket")
    _png(normal / "locked.png", 77)
    _png(normal / ".thumbs" / "thumb.png", 78)  # a valid image in a hidden folder
    os.symlink(outside, source / "Cyst2")  # a class folder that is a link
    _png(source / "stray.png", 79)
    devices = _zero_device(normal / "zero.png") and _zero_device(normal / "zero-device")
    real_access = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda path, mode, **kw: (
            not str(path).endswith("locked.png") and real_access(path, mode, **kw)
        ),
    )  # fmt: skip  (root reads a mode-000 file: deny it here)

    result = bounded(lambda: ingest(source, tmp_path / "m.parquet", RECIPE))

    manifest = pd.read_parquet(result.manifest)  # validation quarantines each issue as it is
    reasons = manifest[manifest["issue"] != ""].set_index("path")["issue"].to_dict()
    expected = {
        "Normal/x.jpg": "not a regular file (a named pipe)",
        "Normal/z.jpg": "symlink points outside the dataset root; symlinks are not followed",
        "Normal/dangling.jpg": "broken symlink",
        "Normal/loop-a.jpg": "symlink loop",
        "Normal/loop-b.jpg": "symlink loop",
        "Normal/again.png": "symlink to a regular file; symlinks are not followed",
        "Normal/socket.png": "not a regular file (a socket)",
        "Normal/locked.png": "not readable",
        "Cyst2": "symlink to a folder; symlinks are not followed",
    } | ({"Normal/zero.png": "not a regular file (a character device)"} if devices else {})
    quarantined = {path: reason for path, reason in reasons.items()
                   if not manifest.set_index("path").loc[path, "ignored"]}  # fmt: skip
    assert set(quarantined) == set(expected)
    for path, fragment in expected.items():
        assert fragment in quarantined[path], (path, quarantined[path])
    assert result.ignored == ignored_by_extension(manifest) == {  # validation.json's "ignored"
        "hidden": 1, "hidden folder": 1, "named pipe": 1, "not in a class folder": 1,
        "socket": 1, "symlink": 1,
    } | ({"character device": 1} if devices else {})  # fmt: skip
    assert result.images == 12 + len(expected)
    assert result.dvc_md5 == dvc_md5(_dataset(tmp_path / "clean"))


def test_no_byte_outside_the_root_enters_the_hash_or_the_manifest(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    for i in range(5):
        _png(outside / f"out{i}.png", 100 + i)
    source = _dataset(tmp_path / "ds")
    os.symlink(outside, source / "Tumor" / "more")  # a folder link inside a class folder
    os.symlink(outside, source / "Linked")  # a class folder that is a link
    os.symlink(outside / "out0.png", source / "Normal" / "out0.png")
    first = ingest(source, tmp_path / "a.parquet", RECIPE, reuse=False)
    for i in range(5):  # other bytes outside: the snapshot must not notice
        _png(outside / f"out{i}.png", 200 + i)
    second = ingest(source, tmp_path / "b.parquet", RECIPE, reuse=False)

    assert first.dvc_md5 == second.dvc_md5 == dvc_md5(_dataset(tmp_path / "clean"))
    manifest = pd.read_parquet(second.manifest)
    outside_sha = {ingest_module.hashlib.sha256(p.read_bytes()).hexdigest()
                   for p in outside.iterdir()}  # fmt: skip
    assert not outside_sha & set(manifest["sha256"])
    assert not manifest["path"].str.startswith(("Linked/", "Tumor/more/")).any()


def _capsule(root: Path, rows: list[str]) -> Path:
    for i in range(4):
        _png(root / "train" / f"f{i}.jpg", 20 + i)
    (root / "Training_set.csv").write_text("\n".join(["filename,label", *rows]) + "\n")
    return root


def _issues(root: Path, tmp_path: Path) -> dict[str, list[str]]:
    manifest = pd.read_parquet(ingest(root, tmp_path / "m.parquet", CAPSULE).manifest)
    return manifest.groupby("path")["issue"].apply(list).to_dict()


def test_a_file_listed_with_two_labels_is_quarantined_naming_both_rows(tmp_path: Path) -> None:
    root = _capsule(tmp_path / "ds", ["f0.jpg,Polyp", "f1.jpg,Ulcer", "f0.jpg,Ulcer",
                                      "f1.jpg,Ulcer"])  # fmt: skip
    issues = _issues(root, tmp_path)
    both = "train/f0.jpg is listed with different labels (line 2: 'Polyp', line 4: 'Ulcer')"
    assert issues["train/f0.jpg"] == [f"Training_set.csv line {n}: {both}; give it one label"
                                      for n in (2, 4)]  # fmt: skip
    assert issues["train/f1.jpg"] == [
        "",
        "Training_set.csv line 5: train/f1.jpg is listed again (first on line 3)",
    ]


def test_csv_paths_with_dots_links_or_nothing_get_their_own_reason(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _png(outside / "x.jpg", 30)
    root = _capsule(tmp_path / "ds", ["f0.jpg,Polyp", "sub/../f1.jpg,Ulcer", "../f2.jpg,Polyp",
                                      "linked/x.jpg,Ulcer"])  # fmt: skip
    os.symlink(outside, root / "train" / "linked")
    issues = _issues(root, tmp_path)
    assert issues["train/sub/../f1.jpg"] == [
        "Training_set.csv line 3: path 'sub/../f1.jpg' is not normalised ('..' in it); "
        "list it as 'f1.jpg'"
    ]
    assert issues["../f2.jpg"] == ["Training_set.csv line 4: path '../f2.jpg' escapes the "
                                   "image folder"]  # fmt: skip
    assert issues["train/linked/x.jpg"] == [
        "Training_set.csv line 5: train/linked/x.jpg is under train/linked, a symlink; "
        "symlinks are not followed"
    ]

    (root / "Training_set.csv").write_text("filename,label\n")  # the header alone
    with pytest.raises(
        IngestError, match=r"Training_set.csv has no rows \(only its header\)"
    ) as err:
        ingest(root, tmp_path / "m.parquet", CAPSULE)
    assert "folder" not in str(err.value).lower()  # no class-folder hint for a CSV layout


def test_images_the_csv_does_not_list_are_counted(tmp_path: Path) -> None:
    root = _capsule(tmp_path / "ds", ["f0.jpg,Polyp", "f1.jpg,Ulcer"])
    _png(root / "train" / "deeper" / "f9.jpg", 40)
    (root / "train" / "notes.md").write_text("not listed either")
    (root / "train" / ".cache").mkdir()
    result = ingest(root, tmp_path / "m.parquet", CAPSULE)
    assert result.images == 2
    assert result.ignored == {".md": 1, "hidden folder": 1, "not listed in Training_set.csv": 3}


def test_tables_that_are_pipes_or_links_stop_ingest_without_hanging(tmp_path: Path) -> None:
    root = _capsule(tmp_path / "ds", ["f0.jpg,Polyp"])
    (root / "Training_set.csv").unlink()
    os.mkfifo(root / "Training_set.csv")
    with pytest.raises(AssertionError, match=r"IngestError: .*Training_set.csv: not a regular "
                                             r"file \(a named pipe\)"):  # fmt: skip
        bounded(lambda: ingest(root, tmp_path / "m.parquet", CAPSULE))

    source = _dataset(tmp_path / "grouped")
    (tmp_path / "groups.csv").write_text("path,group\nNormal/img0.png,A\n")
    os.symlink(tmp_path / "groups.csv", source / "groups.csv")
    with pytest.raises(IngestError, match=r"groups.csv: symlink points outside the dataset root"):
        ingest(source, tmp_path / "m.parquet", RECIPE)


def test_split_folders_count_what_is_not_a_split_and_never_follow_one(tmp_path: Path) -> None:
    root = tmp_path / "xray"
    for split in ("train", "test"):
        for k, label in enumerate(("NORMAL", "PNEUMONIA")):
            _png(root / split / label / "a.jpeg", 50 + k)
    _png(root / "__MACOSX" / "train" / "NORMAL" / "._a.jpeg", 60)
    _png(root / "train" / "loose.jpeg", 61)
    recipe = load_recipe("chest-xray", overrides=["data.layout=split_folders"])
    result = ingest(root, tmp_path / "m.parquet", recipe)
    assert result.images == 4
    assert result.ignored == {"not in a class folder": 1, "not in a split folder": 1}

    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(root / "train", linked / "train")
    with pytest.raises(IngestError, match=r"none of the split folders .* \(train: symlinks are"):
        ingest(linked, tmp_path / "m.parquet", recipe)


def test_a_file_that_grows_or_stalls_while_read_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "growing.png"
    _png(path, 1)

    class Growing(io.FileIO):
        def read(self, size: int = -1) -> bytes:
            data = super().read(size)
            with open(path, "ab") as writer:  # someone appends while ingest reads
                writer.write(b"\0" * 10)
            return data

    with Growing(path, "rb") as handle, pytest.raises(ValueError, match="changed size"):
        ingest_module._read_hashed(handle, [])
    with pytest.raises(ValueError, match="took more than"):
        ingest_module._read_hashed(path, [], timeout=-1)
    assert ingest_module._read_hashed(path, []) == path.stat().st_size
    os.symlink(path, tmp_path / "link.png")  # swapped in after ingest looked: still refused
    facts = ingest_module._file_facts(tmp_path / "link.png", [])
    assert facts["md5"] == "" and "symlinks are not followed" in str(facts["issue"])
