from __future__ import annotations

import csv
from pathlib import Path

import cv2
import pytest

from medml.data.synthetic import KIDNEY_CT_COUNTS, proportional_counts, synth_kidney_ct


def test_counts_follow_real_dataset_proportions() -> None:
    counts = proportional_counts(12446, KIDNEY_CT_COUNTS)
    assert counts == KIDNEY_CT_COUNTS
    small = proportional_counts(100, KIDNEY_CT_COUNTS)
    assert sum(small.values()) == 100
    assert small["Normal"] > small["Cyst"] > small["Tumor"] > small["Stone"] >= 1


def test_writes_class_folders_with_patient_groups(tmp_path: Path) -> None:
    result = synth_kidney_ct(tmp_path / "ds", n=60, seed=1, image_size=64)
    assert sorted(p.name for p in result.root.iterdir() if p.is_dir()) == [
        "Cyst",
        "Normal",
        "Stone",
        "Tumor",
    ]
    files = sorted(result.root.rglob("*.jpg"))
    assert len(files) == 60 == sum(result.counts.values())
    image = cv2.imread(str(files[0]), cv2.IMREAD_UNCHANGED)
    assert image.shape == (64, 64) and image.dtype.name == "uint8"
    with open(result.root / "groups.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 60
    groups = [row["group"] for row in rows]
    assert len(set(groups)) == result.patients < 60  # several slices per patient
    assert all(Path(row["path"]).name.startswith(row["group"]) for row in rows)


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = synth_kidney_ct(tmp_path / "a", n=12, seed=7, image_size=48).root
    b = synth_kidney_ct(tmp_path / "b", n=12, seed=7, image_size=48).root
    for file in a.rglob("*"):
        if file.is_file():
            assert file.read_bytes() == (b / file.relative_to(a)).read_bytes()


def test_refuses_non_empty_output(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        synth_kidney_ct(tmp_path, n=8)
    assert (tmp_path / "keep.txt").read_text() == "x"


def test_errors_are_one_line_synth_errors(tmp_path: Path) -> None:
    """Each says what to change; the CLI prints it as one line with exit code 3."""
    from medml.data.synthetic import synthesize
    from medml.errors import MedmlError, SynthError

    cases = [
        (lambda: synthesize("capsule-endoscopy", tmp_path / "a", n=120, seed=0, image_size=32),
         r"n=120 is too small: .* 12 image\(s\) for each of 14 classes, so n >= 168"),
        (lambda: synthesize("kidney-ct", tmp_path / "b", layout="csv", n=8, seed=0,
                            image_size=32),
         r"no phantom generator for recipe 'kidney-ct' with layout 'csv'; available: kidney-ct "),
        (lambda: synth_kidney_ct(tmp_path / "c", n=8, classes=("Normal", "Polyp")),
         r"unknown kidney-CT classes \['Polyp'\]"),
        (lambda: synth_kidney_ct(tmp_path / "d", n=8, image_size=16), "use at least 32"),
        (lambda: synth_kidney_ct(tmp_path / "e", n=8, slices_per_patient=(3, 2)),
         r"must satisfy 1 <= low <= high"),
    ]  # fmt: skip
    for call, message in cases:
        with pytest.raises(SynthError, match=message) as caught:
            call()
        assert isinstance(caught.value, MedmlError) and isinstance(caught.value, ValueError)
        assert caught.value.exit_code == 3 and "\n" not in str(caught.value)
    assert not any(tmp_path.iterdir())  # nothing half-written


def _own_recipe(tmp_path: Path, **data: object) -> Path:
    """A new user's recipe file: two classes from a CSV with a patient column, grey 96 px."""
    import yaml

    path = tmp_path / "ward.yaml"
    path.write_text(yaml.safe_dump({
        "name": "ward", "image": {"size": 96, "channels": 1}, "registry": {"model_name": "ward"},
        "data": {"layout": "csv", "classes": ["clear", "effusion"], "csv_file": "labels.csv",
                 "csv_path_column": "image", "csv_label_column": "finding",
                 "csv_image_dir": "images", "csv_group_column": "patient_id", **data},
    }))  # fmt: skip
    return path


def test_medml_synth_makes_a_phantom_for_any_recipe_that_ingest_reads(tmp_path: Path) -> None:
    import pandas as pd
    from typer.testing import CliRunner

    from medml.cli import app
    from medml.config import load_recipe
    from medml.data.ingest import ingest

    recipe_file = _own_recipe(tmp_path)
    out = tmp_path / "ward-data"
    result = CliRunner().invoke(app, ["synth", "--recipe", str(recipe_file), "--out", str(out),
                                      "--n", "30", "--size", "48"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "{'clear': 20, 'effusion': 10}" in result.stdout  # the first class twice the others
    with open(out / "labels.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["image", "finding", "patient_id"] and len(rows) == 30
    assert not (out / "groups.csv").exists()  # the column carries the groups
    assert cv2.imread(str(out / "images" / rows[0]["image"]), cv2.IMREAD_UNCHANGED).shape == (
        48,
        48,
    )
    manifest = pd.read_parquet(
        ingest(out, tmp_path / "m.parquet", load_recipe(recipe_file), pseudonym_key=b"k").manifest
    )
    assert len(manifest) == 30 and manifest["issue"].eq("").all()
    assert manifest["group"].nunique() < 30  # patients with more than one image


def test_a_generic_phantom_in_split_folders_and_its_limits(tmp_path: Path) -> None:
    from medml.config import load_recipe
    from medml.data.synthetic import synthesize
    from medml.errors import SynthError

    recipe = load_recipe(_own_recipe(tmp_path, layout="split_folders", csv_group_column=None))
    result = synthesize(recipe, tmp_path / "d", n=9, seed=0, image_size=40)
    for split in ("train", "val", "test"):  # every class in every split, even at n = 9
        for label in ("clear", "effusion"):
            assert any((tmp_path / "d" / split / label).iterdir())
    assert (tmp_path / "d" / "groups.csv").is_file() and sum(result.counts.values()) == 9
    with pytest.raises(SynthError, match=r"n >= 6 \(e\.g\. medml synth --n 6\)"):
        synthesize(recipe, tmp_path / "e", n=5, seed=0, image_size=40)
    with pytest.raises(SynthError, match="no generic phantom for layout 'dicom'"):
        synthesize(recipe, tmp_path / "f", layout="dicom", n=50, seed=0, image_size=40)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"layout": "class_folders", "classes": ["a/b", "c"]}, "class 'a/b' cannot be a folder"),
        ({"layout": "class_folders", "classes": ["..", "c"]}, "class '..' cannot be a folder"),
        ({"csv_image_dir": "/etc"}, "data.csv_image_dir='/etc' must be a relative path"),
        ({"csv_file": "../labels.csv"}, "data.csv_file='../labels.csv' must be a relative"),
        ({"extensions": [".dcm"]}, r"has none the phantom can write"),
    ],
)
def test_a_generic_phantom_never_writes_outside_its_folder(
    data: dict, message: str, tmp_path: Path
) -> None:
    from medml.config import load_recipe
    from medml.data.synthetic import synthesize
    from medml.errors import SynthError

    recipe = load_recipe(_own_recipe(tmp_path, **data))
    with pytest.raises(SynthError, match=message):
        synthesize(recipe, tmp_path / "out", n=20, seed=0, image_size=32)
    assert not (tmp_path / "out").exists()


def test_a_generic_phantom_follows_nested_csv_paths_tif_and_edited_shipped_recipes(
    tmp_path: Path,
) -> None:
    import yaml

    from medml.config import RECIPES_DIR, load_recipe
    from medml.data.synthetic import synthesize

    recipe = load_recipe(_own_recipe(tmp_path, csv_file="meta/labels.csv", csv_image_dir="",
                                     extensions=[".tif"]))  # fmt: skip
    synthesize(recipe, tmp_path / "nested", n=12, seed=0, image_size=32)
    with open(tmp_path / "nested" / "meta" / "labels.csv") as handle:
        first = next(csv.DictReader(handle))
    assert first["image"].endswith(".tif") and (tmp_path / "nested" / first["image"]).is_file()
    # an edited copy of a shipped recipe (same name, other CSV) gets the generic phantom
    edited = yaml.safe_load((RECIPES_DIR / "capsule-endoscopy.yaml").read_text())
    edited["data"] |= {"csv_file": "meta.csv", "csv_path_column": "file"}
    (tmp_path / "copy.yaml").write_text(yaml.safe_dump(edited))
    synthesize(load_recipe(tmp_path / "copy.yaml"), tmp_path / "copy", n=60, seed=0,
               image_size=32)  # fmt: skip
    assert (tmp_path / "copy" / "meta.csv").read_text().startswith("file,")
