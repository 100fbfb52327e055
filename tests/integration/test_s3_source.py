"""S3 snapshots per date, against a real S3-compatible HTTP server (moto server mode)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medml import runs, steps
from medml.data.sources import SourceError, fetch_s3_prefix, s3_client
from medml.data.synthetic import synth_kidney_ct
from tests.conftest import TINY, upload_tree

pytestmark = pytest.mark.integration


def test_snapshot_per_date_is_fetched_resumably(
    s3_env: str, phantom_dir: Path, tmp_path: Path
) -> None:
    n = upload_tree(phantom_dir, "medml-data", "kidney-ct/2026-01-05")
    other = synth_kidney_ct(tmp_path / "other", n=40, seed=9)
    upload_tree(other.root, "medml-data", "kidney-ct/2026-01-12")

    run_dir = tmp_path / "run"
    runs.init_run(
        run_dir,
        "s3://medml-data/kidney-ct/2026-01-05/",
        "kidney-ct",
        overrides=TINY,
        logical_date="2026-01-05",
    )
    first = steps.ingest(run_dir)
    assert first["downloaded"] == n and first["images"] == 120
    manifest = pd.read_parquet(run_dir / "manifest.parquet")
    assert manifest["group"].str.startswith("P").all()  # groups.csv came along

    second = steps.ingest(run_dir)  # a retried task re-uses what is there
    assert second["downloaded"] == 0 and second["already_present"] == n

    copy = run_dir / "source"
    victim = next(copy.glob("Normal/*.jpg"))
    victim.unlink()
    changed = next(copy.glob("Cyst/*.jpg"))
    changed.write_bytes(changed.read_bytes()[:-10] + b"0123456789")  # same size, other bytes
    third = steps.ingest(run_dir)
    assert third["downloaded"] == 2

    later = tmp_path / "run-later"
    runs.init_run(
        later,
        "s3://medml-data/kidney-ct/2026-01-12/",
        "kidney-ct",
        overrides=TINY,
        logical_date="2026-01-12",
    )
    assert steps.ingest(later)["images"] == 40  # each date reads its own snapshot

    for text in [(run_dir / "run.json").read_text(), manifest.to_csv()]:
        assert "testing-secret-do-not-log" not in text


def test_missing_snapshot_is_a_clear_error(s3_env: str, tmp_path: Path) -> None:
    client = s3_client()
    client.create_bucket(Bucket="medml-empty")
    with pytest.raises(
        SourceError, match="no objects under s3://medml-empty/kidney-ct/2030-01-01/"
    ):
        fetch_s3_prefix("s3://medml-empty/kidney-ct/2030-01-01/", tmp_path / "x")
    with pytest.raises(SourceError, match="cannot list s3://no-such-bucket/x/"):
        fetch_s3_prefix("s3://no-such-bucket/x/", tmp_path / "y")


def test_medml_run_reads_s3(s3_env: str, phantom_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medml.cli import app

    upload_tree(phantom_dir, "medml-run", "ct/2026-02-02")
    args = [
        "run",
        "--source",
        "s3://medml-run/ct/2026-02-02",
        "--recipe",
        "kidney-ct",
        "--run-dir",
        str(tmp_path / "run"),
        "--set",
        "registry.gate.thresholds.balanced_accuracy.min=0",
        "--set",
        "registry.gate.require_better_than_chance=false",
    ]
    for override in TINY:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "challenger -> version" in result.output
