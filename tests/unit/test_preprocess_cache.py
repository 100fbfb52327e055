"""Preprocess re-uses content-addressed shards for unchanged data (like DVC's run cache)."""

from __future__ import annotations

from pathlib import Path

from medml import pipeline
from tests.conftest import TINY


def _data_steps(run_dir: Path, source: Path, *overrides: str) -> dict:
    pipeline.init_run(run_dir, source, "kidney-ct", overrides=[*TINY, *overrides])
    for step in (pipeline.step_ingest, pipeline.step_validate, pipeline.step_split):
        step(run_dir)
    return pipeline.step_preprocess(run_dir, cache_dir=run_dir.parent / "cache")


def test_second_run_on_the_same_data_is_a_cache_hit(phantom_dir: Path, tmp_path: Path) -> None:
    first = _data_steps(tmp_path / "a", phantom_dir)
    second = _data_steps(tmp_path / "b", phantom_dir)
    assert (first["cache"], second["cache"]) == ("miss", "hit")
    assert first["cache_key"] == second["cache_key"]
    for file in (tmp_path / "a" / "shards").iterdir():
        assert file.read_bytes() == (tmp_path / "b" / "shards" / file.name).read_bytes()
    other = _data_steps(tmp_path / "c", phantom_dir, "image.size=24")  # settings changed
    assert other["cache"] == "miss" and other["cache_key"] != first["cache_key"]
