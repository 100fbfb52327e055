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
def test_snapshot_hash_is_dvcs_own_and_only_what_ingest_accepted(
    recipe: str, layout: str, tmp_path: Path
) -> None:
    """Ingest reads each file once for sha256 and md5; the snapshot hash built from those md5s
    (and the tables it read) is the one DVC computes for a folder of only those files, and
    nothing else in the folder (hidden, other extensions, links, pipes) changes it."""
    import os
    import shutil

    from medml.config import load_recipe
    from medml.data.synthetic import synthesize
    from medml.dvc_cache import dvc_md5

    source = tmp_path / "data"
    synthesize(recipe, source, layout=layout, n=200, seed=1, image_size=32)
    for extra in ("test", "Testing_set.csv", "test_labels.csv") if layout == "csv" else ():
        shutil.rmtree(source / extra) if (source / extra).is_dir() else (source / extra).unlink()
    recipe_ = load_recipe(recipe)
    clean = ingest(source, tmp_path / "manifest.parquet", recipe_)
    table = pd.read_parquet(clean.manifest, columns=["path", "md5", "ignored"])
    assert (table["md5"] != "").sum() >= 150 and not table["ignored"].any()
    assert clean.dvc_md5 == dvc_md5(source)  # what `dvc add` records for this folder

    (source / ".hidden").write_text("x")
    (source / "notes" / "deep").mkdir(parents=True)
    (source / "notes" / "deep" / "README.txt").write_text("not an image")
    images = {".png", ".jpg", ".jpeg", ".dcm"}
    first = next(p for p in sorted(source.rglob("*")) if p.suffix in images)
    os.symlink(first, first.with_name(f"again{first.suffix}"))  # a link inside the root
    os.mkfifo(first.with_name("notes.txt"))
    (first.parent / ".thumbs").mkdir()
    shutil.copy(first, first.parent / ".thumbs" / first.name)
    again = ingest(source, tmp_path / "again.parquet", recipe_, reuse=False)
    assert again.dvc_md5 == clean.dvc_md5
    assert sum(again.ignored.values()) >= 3


def _csv_dataset(root: Path, rows: list[tuple[str, str, str]]) -> Path:
    """A CSV-layout dataset: ``labels.csv`` (filename, label, patient) over ``images/``."""
    (root / "images").mkdir(parents=True)
    lines = ["filename,label,patient"]
    for i, (name, label, patient) in enumerate(rows):
        cv2.imwrite(str(root / "images" / name), np.full((24, 24), 20 * i, np.uint8))
        lines.append(f"{name},{label},{patient}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def _csv_recipe(**data: object) -> Recipe:
    return Recipe.model_validate({
        "name": "csv-groups", "registry": {"model_name": "m"},
        "data": {"layout": "csv", "classes": ["a", "b"], "csv_file": "labels.csv",
                 "csv_image_dir": "images", "csv_group_column": "patient", **data},
    })  # fmt: skip


def test_a_csv_column_names_the_patient_groups_pseudonymised(tmp_path: Path) -> None:
    root = _csv_dataset(tmp_path / "ds", [
        ("1.png", "a", "MRN-0042"), ("2.png", "b", "MRN-0042"), ("3.png", "a", "MRN-7"),
    ])  # fmt: skip
    manifest = pd.read_parquet(
        ingest(root, tmp_path / "m.parquet", _csv_recipe(), pseudonym_key=b"k").manifest
    ).set_index("path")
    groups = manifest["group"]
    assert groups["images/1.png"] == groups["images/2.png"] != groups["images/3.png"]
    assert not groups.str.contains("MRN").any()  # an identifier never reaches the manifest
    assert set(manifest["group_source"]) == {"labels.csv:patient"}


def test_a_csv_group_column_that_is_missing_or_empty_is_named(tmp_path: Path) -> None:
    root = _csv_dataset(tmp_path / "ds", [("1.png", "a", "P1"), ("2.png", "b", "")])
    with pytest.raises(
        IngestError,
        match=r"1 of 2 files are not given a group in .*labels\.csv "
        r"\(column 'patient'\) \(e\.g\. images/2\.png\)",
    ):
        ingest(root, tmp_path / "m.parquet", _csv_recipe(), pseudonym_key=b"k")
    kept = ingest(root, tmp_path / "m2.parquet", _csv_recipe(groups_missing="own_group"),
                  pseudonym_key=b"k")  # fmt: skip
    assert pd.read_parquet(kept.manifest).set_index("path")["group"]["images/2.png"] == (
        "images/2.png"
    )
    with pytest.raises(IngestError, match=r"lacks column\(s\) \['ward'\].*csv_group_column"):
        ingest(root, tmp_path / "m3.parquet", _csv_recipe(csv_group_column="ward"))


def test_a_csv_group_column_blank_throughout_or_split_in_two_is_refused(tmp_path: Path) -> None:
    blank = _csv_dataset(tmp_path / "blank", [("1.png", "a", ""), ("2.png", "b", " ")])
    with pytest.raises(IngestError, match="2 of 2 files are not given a group"):
        ingest(blank, tmp_path / "m.parquet", _csv_recipe(), pseudonym_key=b"k")
    twice = _csv_dataset(tmp_path / "twice", [("1.png", "a", "P1"), ("2.png", "b", "P2")])
    with open(twice / "labels.csv", "a") as handle:
        handle.write("1.png,a,P9\n")
    with pytest.raises(IngestError, match=r"lines 2 and 4: images/1\.png is listed with two "
                                          r"different 'patient' values"):  # fmt: skip
        ingest(twice, tmp_path / "m2.parquet", _csv_recipe(), pseudonym_key=b"k")


def test_a_csv_group_column_and_a_groups_file_are_one_too_many(tmp_path: Path) -> None:
    root = _csv_dataset(tmp_path / "ds", [("1.png", "a", "P1"), ("2.png", "b", "P2")])
    (root / "groups.csv").write_text("path,group\nimages/1.png,X\nimages/2.png,Y\n")
    with pytest.raises(IngestError, match="both name the patient groups"):
        ingest(root, tmp_path / "m.parquet", _csv_recipe(), pseudonym_key=b"k")


def test_a_csv_group_column_on_another_layout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ds" / "a").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "ds" / "a" / "1.png"), np.zeros((24, 24), np.uint8))
    recipe = _csv_recipe(layout="class_folders")
    with pytest.raises(IngestError, match="class_folders layout; remove it"):
        ingest(tmp_path / "ds", tmp_path / "m.parquet", recipe, pseudonym_key=b"k")
