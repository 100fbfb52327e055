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
    entry = next(p for p in kept.iterdir() if (p / "reuse.json").is_file())
    report = entry / "split_report.json"
    report.write_text(report.read_text().replace('"grouped": true', '"grouped": false'))
    edited = _data_steps(tmp_path / "c", source)  # the same inputs as b
    assert "reused" in edited["validate"] and "reused" not in edited["split"]
    assert json.loads((tmp_path / "c" / "split_report.json").read_text())["grouped"] is True
