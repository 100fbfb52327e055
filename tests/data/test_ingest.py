from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from medml.config import Recipe
from medml.data.ingest import MANIFEST_COLUMNS, IngestError, ingest


def test_manifest_schema_and_facts(phantom_dir: Path, tiny_recipe: Recipe, tmp_path: Path) -> None:
    result = ingest(phantom_dir, tmp_path / "manifest.parquet", tiny_recipe)
    manifest = pd.read_parquet(result.manifest)
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == result.images == 120
    assert set(manifest["label"]) == {"Normal", "Cyst", "Stone", "Tumor"}
    row = manifest.iloc[0]
    file = Path(row["root"]) / row["path"]
    assert row["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert row["bytes"] == file.stat().st_size
    assert (row["width"], row["height"], row["channels"]) == (64, 64, 1)
    assert manifest["group"].str.match(r"P\d{5}$").all()


def test_unknown_folder_becomes_a_label_for_validation(tmp_path: Path, tiny_recipe: Recipe) -> None:
    for label in ["Normal", "Oops"]:
        (tmp_path / "ds" / label).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "ds" / label / "a.png"), np.zeros((8, 8), np.uint8))
    manifest = pd.read_parquet(
        ingest(tmp_path / "ds", tmp_path / "m.parquet", tiny_recipe).manifest
    )
    assert sorted(manifest["label"]) == ["Normal", "Oops"]
    assert (manifest["group"] == manifest["path"]).all()  # no sidecar: each file is its own group


def test_missing_source_is_a_clear_error(tmp_path: Path, tiny_recipe: Recipe) -> None:
    with pytest.raises(IngestError, match="does not exist"):
        ingest(tmp_path / "nope", tmp_path / "m.parquet", tiny_recipe)


def test_empty_source_is_a_clear_error(tmp_path: Path, tiny_recipe: Recipe) -> None:
    (tmp_path / "ds" / "Normal").mkdir(parents=True)
    with pytest.raises(IngestError, match="no images"):
        ingest(tmp_path / "ds", tmp_path / "m.parquet", tiny_recipe)
    assert not (tmp_path / "m.parquet").exists()
