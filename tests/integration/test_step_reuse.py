"""A retrain of an unchanged dataset reuses validation and split by content, and only then."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from medml import runs, steps
from tests.conftest import TINY

pytestmark = pytest.mark.integration


def _data_steps(run_dir: Path, source: Path, *overrides: str) -> dict[str, dict]:
    runs.init_run(run_dir, source, "kidney-ct", overrides=[*TINY, *overrides])
    return {name: steps.STEPS[name](run_dir) for name in ("ingest", "validate", "split")}


def test_an_unchanged_dataset_reuses_validation_and_split(
    phantom_dir: Path, tmp_path: Path
) -> None:
    first = _data_steps(tmp_path / "a", phantom_dir)
    assert "reused" not in first["validate"] and "reused" not in first["split"]
    again = _data_steps(tmp_path / "b", phantom_dir)
    for name in ("validate", "split"):
        assert again[name]["reused"].startswith("unchanged since run cli/"), again[name]
        assert {k: v for k, v in again[name].items() if k not in ("reused", "report")} == {
            k: v for k, v in first[name].items() if k != "report"
        }
    assert (tmp_path / "b" / "splits.parquet").read_bytes() == (
        tmp_path / "a" / "splits.parquet"
    ).read_bytes()
    page = json.loads((tmp_path / "b" / "validation" / "validation.json").read_text())["page"]
    assert page == str(tmp_path / "b" / "validation" / "validation.html")  # this run's, not a's
    assert steps.STEPS["preprocess"](tmp_path / "b")["images"] > 0  # the chain goes on

    # an image setting changes the decode behind the thumbnails the split groups by: validated
    # again; the split is reused only if the clean rows (thumbnails included) came out equal
    resized = _data_steps(tmp_path / "e", phantom_dir, "image.size=48")
    assert "reused" not in resized["validate"]
    import pandas as pd

    clean = [pd.read_parquet(tmp_path / run / "validation" / "clean_manifest.parquet")
             for run in ("a", "e")]  # fmt: skip
    assert ("reused" in resized["split"]) == clean[0].equals(clean[1])
    # another split setting: validation is reused, the split is not
    other = _data_steps(tmp_path / "c", phantom_dir, "split.seed=7")
    assert "reused" in other["validate"] and "reused" not in other["split"]
    # another data setting: validated again; the same clean rows still reuse the split
    stricter = _data_steps(tmp_path / "d", phantom_dir, "data.max_quarantine_fraction=0.5")
    assert "reused" not in stricter["validate"] and "reused" in stricter["split"]


def test_a_changed_image_or_an_edited_kept_copy_is_never_reused(
    phantom_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from medml.settings import Settings

    source = tmp_path / "data"
    shutil.copytree(phantom_dir, source)
    _data_steps(tmp_path / "a", source)
    image = next(source.rglob("*.jpg"))
    cv2.imwrite(str(image), np.full((64, 64), 200, np.uint8))  # same name, other pixels
    changed = _data_steps(tmp_path / "b", source)
    assert "reused" not in changed["validate"] and "reused" not in changed["split"]

    kept = Settings.from_env().home / "cache" / "steps" / "split"
    origin = {json.loads((p / "reuse.json").read_text())["run_root"]: p for p in kept.iterdir()}
    entry = origin[str(tmp_path / "b")]
    report = entry / "split_report.json"
    report.write_text(report.read_text().replace('"grouped": true', '"grouped": false'))
    edited = _data_steps(tmp_path / "c", source)  # the same inputs as b
    assert "reused" in edited["validate"] and "reused" not in edited["split"]
    assert json.loads((tmp_path / "c" / "split_report.json").read_text())["grouped"] is True
    assert "reused" in _data_steps(tmp_path / "d", source)["split"]  # kept anew, then reused

    # another key's entry put in place of this one's (a copied cache) is not this run's
    validations = Settings.from_env().home / "cache" / "steps" / "validate"
    by_run = {json.loads((p / "reuse.json").read_text())["run_root"]: p
              for p in validations.iterdir()}  # fmt: skip
    first, second = by_run[str(tmp_path / "a")], by_run[str(tmp_path / "b")]
    shutil.rmtree(second)
    shutil.copytree(first, second)  # the first dataset's validation under the second's key
    moved = _data_steps(tmp_path / "e", source)
    assert "reused" not in moved["validate"]

    # a broken entry (its reuse.json cut short) is dropped and kept again
    facts = second / "reuse.json"
    facts.write_text(facts.read_text()[:20])
    _data_steps(tmp_path / "f", source)
    assert "reused" in _data_steps(tmp_path / "g", source)["validate"]
