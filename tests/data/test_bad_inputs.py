"""Bad datasets as a whole (empty classes, CSV manifests); the per-file kinds are in
test_hostile_corpus.py."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from medml.config import load_recipe
from medml.data.ingest import IngestError, ingest
from medml.data.validate import ValidationFailed, validate
from tests.conftest import tree_snapshot

RECIPE = load_recipe(
    "kidney-ct",
    overrides=["data.min_images_per_class=1", "data.max_quarantine_fraction=1.0", "split.folds=2",
               "data.min_image_side=8"],
)  # fmt: skip


def _good(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)


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
