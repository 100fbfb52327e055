"""A scheduled retrain over an unchanged dataset reads and decodes only what changed, and a kept
result is never used for a file that is not the same file any more."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from medml.config import Recipe, load_recipe
from medml.data import ingest as ingest_module
from medml.data import reuse
from medml.data.ingest import ingest
from medml.data.synthetic import synth_kidney_ct, synth_kidney_ct_dicom
from medml.data.validate import validate
from medml.preprocess import LoadImage
from tests.conftest import TINY


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files count as settled at once (the test's phantom was written a moment ago)."""
    monkeypatch.setattr(reuse, "SETTLE_SECONDS", 0.0)


@pytest.fixture
def file_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file ingest reads and hashes."""
    reads: list[Path] = []
    original = ingest_module._file_facts

    def spy(path: Path, tags: list[str]) -> dict[str, object]:
        reads.append(path)
        return original(path, tags)

    monkeypatch.setattr(ingest_module, "_file_facts", spy)
    return reads


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every image validation decodes."""
    seen: list[str] = []
    original = LoadImage.decode

    def spy(self: LoadImage, path: str, **kwargs: object) -> object:
        seen.append(path)
        return original(self, path, **kwargs)

    monkeypatch.setattr(LoadImage, "decode", spy)
    return seen


def test_unchanged_files_are_not_read_again_and_a_rewritten_one_is(
    tmp_path: Path, tiny_recipe: Recipe, settled: None, file_reads: list[Path]
) -> None:
    source = synth_kidney_ct(tmp_path / "ds", n=40, seed=1, image_size=32).root
    first = pd.read_parquet(ingest(source, tmp_path / "m1.parquet", tiny_recipe).manifest)
    assert len(file_reads) == 40

    file_reads.clear()
    second = pd.read_parquet(ingest(source, tmp_path / "m2.parquet", tiny_recipe).manifest)
    assert file_reads == []
    pd.testing.assert_frame_equal(first, second)

    # Same size, same modification time, other bytes: only the change time tells.
    victim = source / first.loc[0, "path"]
    info = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert victim.stat().st_size == info.st_size
    file_reads.clear()
    third = pd.read_parquet(ingest(source, tmp_path / "m3.parquet", tiny_recipe).manifest)
    assert file_reads == [victim]
    assert third.loc[0, "sha256"] != first.loc[0, "sha256"]
    pd.testing.assert_frame_equal(third.drop(index=0), first.drop(index=0))


def test_files_written_just_before_the_step_are_read_every_time(
    tmp_path: Path, tiny_recipe: Recipe, file_reads: list[Path]
) -> None:
    source = synth_kidney_ct(tmp_path / "ds", n=12, seed=1, image_size=32).root
    ingest(source, tmp_path / "m1.parquet", tiny_recipe)
    ingest(source, tmp_path / "m2.parquet", tiny_recipe)
    assert len(file_reads) == 24  # changed < SETTLE_SECONDS before: never kept


def test_dicom_identifiers_never_reach_the_cache(
    tmp_path: Path, settled: None, file_reads: list[Path]
) -> None:
    recipe = load_recipe("kidney-ct", overrides=[*TINY, "data.extensions=[.dcm]"])
    source = synth_kidney_ct_dicom(tmp_path / "ds", n=30, seed=2, image_size=32).root
    ingest(source, tmp_path / "m1.parquet", recipe)
    read_first = len(file_reads)
    ingest(source, tmp_path / "m2.parquet", recipe)
    assert len(file_reads) == 2 * read_first  # headers with PatientID are never kept
    for table in (Path(os.environ["MEDML_HOME"]) / "cache").rglob("*.parquet"):
        blob = table.read_bytes()
        assert b"P0" not in blob and b"CANARY" not in blob


def test_validation_reuses_verdicts_by_content_and_never_a_failure(
    tmp_path: Path, settled: None, decodes: list[str]
) -> None:
    source = synth_kidney_ct(tmp_path / "ds", n=40, seed=1, image_size=32).root
    broken = source / "Normal" / "truncated.jpg"  # its header reads; its pixels do not decode
    broken.write_bytes(next((source / "Normal").glob("*.jpg")).read_bytes()[:200])
    own_groups = [*TINY, "data.groups_missing=own_group"]

    def run(name: str, recipe: Recipe) -> pd.DataFrame:
        manifest = ingest(source, tmp_path / name / "manifest.parquet", recipe).manifest
        result = validate(manifest, tmp_path / name / "validation", recipe)
        assert list(pd.read_csv(result.quarantine)["path"]) == ["Normal/truncated.jpg"]
        return pd.read_parquet(result.clean_manifest)

    recipe = load_recipe("kidney-ct", overrides=own_groups)
    first = run("a", recipe)
    assert len(decodes) == 41
    decodes.clear()
    again = run("b", recipe)
    assert decodes == [str(broken)]  # a failure is decoded again: it may have been transient
    pd.testing.assert_frame_equal(first, again)

    decodes.clear()  # another decoder (image size) gets its own verdicts
    run("c", load_recipe("kidney-ct", overrides=[*own_groups, "image.size=48"]))
    assert len(decodes) == 41

    # The decode verdicts edited in place (a kept row altered, the table still valid parquet):
    # its checksum no longer matches, so nothing kept is trusted and every image is decoded
    for table in (Path(os.environ["MEDML_HOME"]) / "cache" / "decode").glob("*.parquet"):
        kept = pd.read_parquet(table)
        kept.loc[0, "sha256"] = "0" * 64
        kept.to_parquet(table, index=False)
    decodes.clear()
    pd.testing.assert_frame_equal(first, run("d", recipe))
    assert len(decodes) == 41


def test_an_unreadable_cache_is_no_cache(
    tmp_path: Path, tiny_recipe: Recipe, settled: None
) -> None:
    source = synth_kidney_ct(tmp_path / "ds", n=12, seed=1, image_size=32).root
    first = pd.read_parquet(ingest(source, tmp_path / "m1.parquet", tiny_recipe).manifest)
    for table in (Path(os.environ["MEDML_HOME"]) / "cache").rglob("*.parquet"):
        table.write_bytes(b"half-written")
    second = pd.read_parquet(ingest(source, tmp_path / "m2.parquet", tiny_recipe).manifest)
    pd.testing.assert_frame_equal(first, second)


def test_a_kept_table_edited_in_place_is_not_trusted(
    tmp_path: Path, tiny_recipe: Recipe, settled: None, file_reads: list[Path]
) -> None:
    """A kept row with a wrong hash (bit rot, an edit) never reaches a manifest: the table's
    own checksum no longer matches, so every file is read again."""
    source = synth_kidney_ct(tmp_path / "ds", n=12, seed=1, image_size=32).root
    first = pd.read_parquet(ingest(source, tmp_path / "m1.parquet", tiny_recipe).manifest)
    [table] = (Path(os.environ["MEDML_HOME"]) / "cache" / "ingest").glob("*.parquet")
    kept = pd.read_parquet(table)
    kept.loc[0, "sha256"] = "0" * 64  # a forged hash, the table still well-formed parquet
    kept.to_parquet(table, index=False)
    file_reads.clear()
    second = pd.read_parquet(ingest(source, tmp_path / "m2.parquet", tiny_recipe).manifest)
    assert len(file_reads) == 12
    pd.testing.assert_frame_equal(first, second)
