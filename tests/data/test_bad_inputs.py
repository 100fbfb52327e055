"""The bad-input corpus: every case has a clear outcome, and no input file is changed or lost."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medml.config import load_recipe
from medml.data.ingest import IngestError, ingest
from medml.data.validate import ValidationFailed, validate
from medml.preprocess import LoadImage
from tests.conftest import tree_snapshot

RECIPE = load_recipe(
    "kidney-ct",
    overrides=["data.min_images_per_class=1", "data.max_quarantine_fraction=1.0", "split.folds=2",
               "data.min_image_side=8"],
)  # fmt: skip


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but carries no real pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _good(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "ds"
    outside = tmp_path / "outside"
    outside.mkdir()
    cv2.imwrite(str(outside / "secret.png"), _good(99))
    for label in ("Normal", "Cyst", "Stone", "Tumor"):
        (root / label).mkdir(parents=True)
        cv2.imwrite(str(root / label / "ok.png"), _good(hash(label) % 1000))
    n = root / "Normal"
    (n / "zero.jpg").write_bytes(b"")
    good_jpeg = cv2.imencode(".jpg", _good(1))[1].tobytes()
    (n / "truncated.jpg").write_bytes(good_jpeg[:200])
    (n / "text.jpg").write_text("this is not an image\n")
    cv2.imwrite(str(n / "sixteen-bit.png"), (_good(2).astype(np.uint16) * 257))
    cv2.imwrite(str(n / "rgba.png"), np.dstack([_good(3)] * 3 + [np.full((32, 32), 128, np.uint8)]))
    Image.new("CMYK", (32, 32), (10, 200, 30, 5)).save(n / "cmyk.jpg", "JPEG")
    cv2.imwrite(str(n / "one-pixel.png"), np.zeros((1, 1), np.uint8))
    (n / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    cv2.imwrite(str(n / "ünïcødé 肾.png"), _good(4))
    os.symlink(outside / "secret.png", n / "escape.png")
    cv2.imwrite(str(root / "Cyst" / "twice.png"), _good(5))
    cv2.imwrite(str(root / "Tumor" / "twice.png"), _good(5))  # same bytes, another label
    (root / "Kidney-Stone").mkdir()  # unknown label
    cv2.imwrite(str(root / "Kidney-Stone" / "x.png"), _good(6))
    (root / "Stone" / "empty-subfolder").mkdir()
    return root, outside


def test_every_bad_input_has_a_clear_outcome(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    root, outside = corpus
    before = tree_snapshot(root), tree_snapshot(outside)
    manifest = ingest(root, tmp_path / "m.parquet", RECIPE).manifest
    result = validate(manifest, tmp_path / "validation", RECIPE)
    reasons = pd.read_csv(result.quarantine).set_index("path")["reason"].to_dict()
    expected = {
        "Normal/zero.jpg": "0 bytes",
        "Normal/truncated.jpg": "does not decode",
        "Normal/text.jpg": "does not decode",
        "Normal/one-pixel.png": "smaller than data.min_image_side=8",
        "Normal/bomb.png": "decompression-bomb",
        "Normal/escape.png": "symlink points outside the dataset root",
        "Cyst/twice.png": "different labels",
        "Tumor/twice.png": "different labels",
        "Kidney-Stone/x.png": "is not one of",
    }
    assert set(reasons) == set(expected)
    for path, fragment in expected.items():
        assert fragment in reasons[path], (path, reasons[path])
    clean = pd.read_parquet(result.clean_manifest)
    accepted = {"Normal/sixteen-bit.png", "Normal/rgba.png", "Normal/cmyk.jpg",
                "Normal/ünïcødé 肾.png", "Normal/ok.png", "Cyst/ok.png", "Stone/ok.png",
                "Tumor/ok.png"}  # fmt: skip
    assert set(clean["path"]) == accepted
    load = LoadImage(16, 3)
    for path in accepted:
        assert load(root / path).shape == (16, 16, 3)
    assert (tree_snapshot(root), tree_snapshot(outside)) == before  # nothing changed or lost


def test_empty_class_folder_fails_naming_the_class(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for label in ("Normal", "Cyst", "Stone"):
        (root / label).mkdir(parents=True)
        cv2.imwrite(str(root / label / "a.png"), _good(len(label)))
    (root / "Tumor").mkdir()
    manifest = ingest(root, tmp_path / "m.parquet", RECIPE).manifest
    with pytest.raises(ValidationFailed, match=r"below the minimum of 1 images: \{'Tumor': 0\}"):
        validate(manifest, tmp_path / "v", RECIPE)


def _csv_dataset(root: Path, header: str, rows: list[str]) -> Path:
    (root / "train").mkdir(parents=True)
    for i in range(4):
        cv2.imwrite(str(root / "train" / f"f{i}.jpg"), _good(10 + i))
    (root / "Training_set.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def test_csv_with_a_missing_column(tmp_path: Path) -> None:
    recipe = load_recipe("capsule-endoscopy")
    root = _csv_dataset(tmp_path / "ds", "file,label", ["f0.jpg,Polyp"])
    with pytest.raises(
        IngestError, match=r"lacks column\(s\) \['filename'\]; found \['file', 'label'\]"
    ):
        ingest(root, tmp_path / "m.parquet", recipe)


def test_csv_paths_cannot_escape_the_image_folder(tmp_path: Path) -> None:
    recipe = load_recipe(
        "capsule-endoscopy",
        overrides=["data.min_images_per_class=1", "data.max_quarantine_fraction=1.0"],
    )
    (tmp_path / "secret.jpg").write_bytes(cv2.imencode(".jpg", _good(50))[1].tobytes())
    root = _csv_dataset(tmp_path / "ds", "filename,label", [
        "f0.jpg,Polyp", "../../secret.jpg,Polyp", f"{tmp_path / 'secret.jpg'},Ulcer",
        "missing.jpg,Ulcer", "f1.jpg,Ulcer",
    ])  # fmt: skip
    before = tree_snapshot(root), (tmp_path / "secret.jpg").read_bytes()
    manifest = pd.read_parquet(ingest(root, tmp_path / "m.parquet", recipe).manifest)
    assert (manifest.loc[manifest["issue"] != "", "sha256"] == "").all()  # never read
    with pytest.raises(ValidationFailed):  # 12 of the 14 classes have no images here
        validate(tmp_path / "m.parquet", tmp_path / "v", recipe)
    reasons = pd.read_csv(tmp_path / "v" / "quarantine.csv")["reason"].tolist()
    assert sum("escapes the image folder" in r for r in reasons) == 2
    assert any("listed file train/missing.jpg does not exist" in r for r in reasons)
    assert (tree_snapshot(root), (tmp_path / "secret.jpg").read_bytes()) == before
