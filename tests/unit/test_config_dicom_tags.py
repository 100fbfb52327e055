"""``data.dicom_group_tags`` is checked against pydicom's data dictionary only when a recipe
names other tags than the defaults: a JPEG recipe (and the run context every step reads back)
never imports pydicom."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medml.config import DEFAULT_DICOM_GROUP_TAGS, ConfigError, load_recipe

LOAD_JPEG_RECIPES = """
import sys
from pathlib import Path
from medml.config import Recipe, load_recipe, with_settings
from medml.runs import init_run, load_context

run_dir, source = Path(sys.argv[1]), Path(sys.argv[2])
for name in ("kidney-ct", "capsule-endoscopy", "chest-xray"):
    recipe = load_recipe(name)
    Recipe.model_validate(recipe.model_dump(mode="json"))  # every default spelled out
    with_settings(recipe, {"train.epochs": 1}, source="test")
init_run(run_dir, source, "kidney-ct", overrides=["image.size=32"])
load_context(run_dir)  # what every step does first
print(sorted(m for m in sys.modules if m.split(".")[0] == "pydicom"))
"""


def test_loading_jpeg_recipes_and_a_run_context_does_not_import_pydicom(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", LOAD_JPEG_RECIPES, str(tmp_path / "run"), str(source)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_default_tags_are_dicom_keywords() -> None:
    from pydicom.datadict import tag_for_keyword

    assert all(tag_for_keyword(tag) is not None for tag in DEFAULT_DICOM_GROUP_TAGS)
    assert load_recipe("kidney-ct").data.dicom_group_tags == list(DEFAULT_DICOM_GROUP_TAGS)


def test_other_tags_are_still_checked() -> None:
    tags = '["AccessionNumber", "PatientID"]'
    recipe = load_recipe("kidney-ct", overrides=[f"data.dicom_group_tags={tags}"])
    assert recipe.data.dicom_group_tags == ["AccessionNumber", "PatientID"]
    with pytest.raises(ConfigError, match=r"\['PatientId'\] are not DICOM keywords"):
        load_recipe("kidney-ct", overrides=['data.dicom_group_tags=["PatientId", "PatientID"]'])
