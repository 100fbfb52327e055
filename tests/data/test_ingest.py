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


@pytest.mark.parametrize(
    ("recipe", "layout"),
    [("kidney-ct", "class_folders"), ("kidney-ct", "dicom"), ("capsule-endoscopy", "csv"),
     ("chest-xray", "split_folders")],
)  # fmt: skip
def test_one_read_gives_dvcs_own_snapshot_hash(recipe: str, layout: str, tmp_path: Path) -> None:
    """Ingest reads each file once for sha256 and md5; the snapshot hash built from those md5s
    is the one DVC computes itself, extra files (not images, hidden, nested) included."""
    import os

    from medml.config import load_recipe
    from medml.data.synthetic import synthesize
    from medml.dvc_cache import directory_md5, dvc_md5

    source = tmp_path / "data"
    synthesize(recipe, source, layout=layout, n=200, seed=1, image_size=32)
    (source / ".hidden").write_text("x")
    (source / "notes" / "deep").mkdir(parents=True)
    (source / "notes" / "deep" / "README.txt").write_text("not an image")
    manifest = ingest(source, tmp_path / "manifest.parquet", load_recipe(recipe)).manifest
    table = pd.read_parquet(manifest, columns=["path", "md5", "ignored"])
    known = dict(zip(table["path"], table["md5"], strict=True))
    assert sum(bool(v) for v in known.values()) >= 24
    assert directory_md5(source, known) == dvc_md5(source)
    assert directory_md5(source, {}) == dvc_md5(source)  # nothing known: every file read here
    os.symlink(source / ".hidden", source / "link")  # a link: left to DVC itself
    assert directory_md5(source, known) == dvc_md5(source)
