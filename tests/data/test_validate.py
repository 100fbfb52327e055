from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from medml.config import Recipe
from medml.data.ingest import ingest
from medml.data.validate import ValidationFailed, validate
from tests.conftest import tree_snapshot


@pytest.fixture
def dirty_dataset(phantom_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "dirty"
    shutil.copytree(phantom_dir, root)
    (root / "Normal" / "empty.jpg").write_bytes(b"")
    (root / "Cyst" / "not-an-image.jpg").write_text("hello, I am text")
    stone = sorted((root / "Stone").glob("*.jpg"))[0]
    good = stone.read_bytes()
    (root / "Stone" / "truncated.jpg").write_bytes(good[: len(good) // 3][:40])
    (root / "Alien").mkdir()
    (root / "Alien" / "x.jpg").write_bytes(good)
    added = ["Normal/empty.jpg", "Cyst/not-an-image.jpg", "Stone/truncated.jpg", "Alien/x.jpg"]
    with open(root / "groups.csv", "a") as groups:  # a user adding files lists their patients
        groups.writelines(f"{path},added-{i}\n" for i, path in enumerate(added))
    return root


def test_bad_files_are_quarantined_not_touched(
    dirty_dataset: Path, tiny_recipe: Recipe, tmp_path: Path
) -> None:
    before = tree_snapshot(dirty_dataset)
    manifest = ingest(dirty_dataset, tmp_path / "m.parquet", tiny_recipe).manifest
    recipe = tiny_recipe.model_copy(
        update={"data": tiny_recipe.data.model_copy(update={"max_quarantine_fraction": 0.1})}
    )
    result = validate(manifest, tmp_path / "validation", recipe)
    quarantine = pd.read_csv(result.quarantine).set_index("path")
    stone = f"Stone/{sorted((dirty_dataset / 'Stone').glob('*.jpg'))[0].name}"
    assert set(quarantine.index) == {
        "Normal/empty.jpg",
        "Cyst/not-an-image.jpg",
        "Stone/truncated.jpg",
        "Alien/x.jpg",
        stone,  # the Alien copy gives this image a second label: both are quarantined
    }
    assert "different labels" in quarantine.loc[stone, "reason"]
    assert "0 bytes" in quarantine.loc["Normal/empty.jpg", "reason"]
    assert "does not decode" in quarantine.loc["Cyst/not-an-image.jpg", "reason"]
    assert "is not one of" in quarantine.loc["Alien/x.jpg", "reason"]
    clean = pd.read_parquet(result.clean_manifest)
    assert len(clean) == 119 and not set(clean["path"]) & set(quarantine.index)
    assert tree_snapshot(dirty_dataset) == before  # nothing moved, changed or deleted


def test_too_many_quarantined_fails_with_counts(
    dirty_dataset: Path, tiny_recipe: Recipe, tmp_path: Path
) -> None:
    manifest = ingest(dirty_dataset, tmp_path / "m.parquet", tiny_recipe).manifest
    recipe = tiny_recipe.model_copy(
        update={"data": tiny_recipe.data.model_copy(update={"max_quarantine_fraction": 0.01})}
    )
    with pytest.raises(
        ValidationFailed, match=r"5 of 124 files quarantined .*Report: .*validation"
    ):
        validate(manifest, tmp_path / "validation", recipe)
    assert (tmp_path / "validation" / "quarantine.csv").is_file()  # the report is still there


def test_minimum_images_per_class(phantom_dir: Path, tiny_recipe: Recipe, tmp_path: Path) -> None:
    manifest = ingest(phantom_dir, tmp_path / "m.parquet", tiny_recipe).manifest
    recipe = tiny_recipe.model_copy(
        update={"data": tiny_recipe.data.model_copy(update={"min_images_per_class": 40})}
    )
    with pytest.raises(ValidationFailed, match=r"classes below the minimum of 40 images: \{"):
        validate(manifest, tmp_path / "validation", recipe)
    report = (tmp_path / "validation" / "validation.json").read_text()
    assert '"success": false' in report


def test_clean_dataset_passes(phantom_dir: Path, tiny_recipe: Recipe, tmp_path: Path) -> None:
    manifest = ingest(phantom_dir, tmp_path / "m.parquet", tiny_recipe).manifest
    result = validate(manifest, tmp_path / "validation", tiny_recipe)
    assert result.quarantined == 0 and result.images == 120
    assert sum(result.class_counts.values()) == 120


def test_data_docs_are_written(phantom_dir: Path, tiny_recipe: Recipe, tmp_path: Path) -> None:
    manifest = ingest(phantom_dir, tmp_path / "m.parquet", tiny_recipe).manifest
    validate(manifest, tmp_path / "validation", tiny_recipe)
    index = tmp_path / "validation" / "data_docs" / "index.html"
    assert index.is_file()
    pages = list((tmp_path / "validation" / "data_docs").rglob("*.html"))
    assert any("manifest_rows" in p.read_text(errors="ignore") for p in pages)


def test_the_validation_page_reads_offline_and_names_each_quarantined_file(
    phantom_dir: Path, tiny_recipe: Recipe, tmp_path: Path
) -> None:
    import re
    import shutil

    data = tmp_path / "data"
    shutil.copytree(phantom_dir, data)
    hostile = data / "Cyst" / "<img src=x onerror=alert(1)>.jpg"
    hostile.write_bytes(b"\xff\xd8 not really a jpeg")
    with open(data / "groups.csv", "a") as groups:
        groups.write('"Cyst/<img src=x onerror=alert(1)>.jpg",hostile\n')
    manifest = ingest(data, tmp_path / "m.parquet", tiny_recipe).manifest
    validate(manifest, tmp_path / "validation", tiny_recipe)
    page = (tmp_path / "validation" / "validation.html").read_text()
    # nothing to fetch: no stylesheet, script or image from elsewhere
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.IGNORECASE)
    assert "<script" not in page.lower() and "<img" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in page  # named, escaped
    assert "1 quarantined" in page and "passed" in page
    for name in tiny_recipe.data.classes:
        assert f"<td>{name}</td>" in page


def test_great_expectations_import_is_quiet_where_info_logs_show() -> None:
    """Airflow's task processes show INFO: GX's import-time lines must not flood them."""
    import subprocess
    import sys

    code = ("import logging; logging.basicConfig(level=logging.INFO); "
            "import medml.data.validate as v; v._gx_context(None)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Skipping registering function" not in result.stderr + result.stdout
