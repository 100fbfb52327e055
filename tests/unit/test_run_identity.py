"""Run identity and published outputs: unique run directories, an immutable run.json, and
directory outputs that are either complete or absent."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from medml import runs
from medml.errors import RunError
from medml.io import COMPLETE_MARKER, publish_dir, require_complete, write_json_once
from tests.conftest import TINY


def test_run_directories_are_unique_within_one_second() -> None:
    names = {runs.new_run_dir("cli", "2026-01-05") for _ in range(50)}
    assert len(names) == 50


def test_run_json_is_written_once_and_a_different_init_is_refused(
    phantom_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    first = runs.init_run(run_dir, phantom_dir, "kidney-ct", overrides=TINY)
    again = runs.init_run(run_dir, phantom_dir, "kidney-ct", overrides=TINY)  # a retry
    assert again.run_key == first.run_key and again.recipe == first.recipe
    refused = r"already holds a run with other settings \(recipe.image.size: 32 in run.json, 40 "
    with pytest.raises(RunError, match=refused):
        runs.init_run(run_dir, phantom_dir, "kidney-ct", overrides=[*TINY, "image.size=40"])
    assert runs.load_context(run_dir).recipe.image.size == 32  # untouched
    replaced = runs.init_run(run_dir, phantom_dir, "kidney-ct", replace=True,
                                 overrides=[*TINY, "image.size=40"])  # fmt: skip
    assert replaced.recipe.image.size == 40  # DVC's explicit re-pin


def test_exactly_one_of_racing_writers_creates_the_file(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    results: list[bool] = []

    def write(i: int) -> None:
        results.append(write_json_once(target, {"i": i}))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1 and target.read_text().startswith("{")


def test_published_directory_is_checked_against_its_marker(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    with publish_dir(out) as staging:
        (staging / "a.npy").write_bytes(b"1234")
    assert require_complete(out, "preprocess", deep=True) == out
    (out / "a.npy").write_bytes(b"12")  # truncated after the fact
    with pytest.raises(RunError, match="differs from what `preprocess` wrote"):
        require_complete(out, "preprocess")
    (out / COMPLETE_MARKER).unlink()
    with pytest.raises(RunError, match="incomplete .* run the `preprocess` step again"):
        require_complete(out, "preprocess")


def test_a_failed_replacement_keeps_the_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "evaluation"
    with publish_dir(out) as staging:
        (staging / "metrics.json").write_text("{}")
    with pytest.raises(ZeroDivisionError), publish_dir(out) as staging:
        (staging / "half.png").write_bytes(b"x")
        raise ZeroDivisionError
    require_complete(out, "evaluate")
    assert sorted(p.name for p in out.iterdir()) == [COMPLETE_MARKER, "metrics.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["evaluation"]  # no staging left behind


def test_secrets_in_urls_are_redacted_in_errors() -> None:
    from medml.errors import MedmlError

    message = str(MedmlError("cannot list s3://b/: http://AKIA:top%2Fsecret@10.0.0.1:9000/b"))
    assert "top" not in message and "AKIA" not in message and "http://***@10.0.0.1" in message


def test_the_dvc_run_directory_gets_a_new_run_for_another_source(
    phantom_dir: Path, tmp_path: Path
) -> None:
    """DVC calls each step with --source/--recipe: the same source and settings keep the run
    (its MLflow run and version); another source is a new run, so the registered version of
    the first is never re-evaluated on the second's data."""
    import shutil

    from typer.testing import CliRunner

    from medml.cli import app

    other = tmp_path / "other"
    shutil.copytree(phantom_dir, other)
    run_dir = tmp_path / "dvc-run"
    sets = [f"--set={o}" for o in TINY]

    def ingest(source: Path) -> str:
        result = CliRunner().invoke(app, ["ingest", "--run-dir", str(run_dir), "--source",
                                          str(source), "--recipe", "kidney-ct", *sets])  # fmt: skip
        assert result.exit_code == 0, result.output
        return runs.load_context(run_dir).run_key

    first = ingest(phantom_dir)
    assert ingest(phantom_dir) == first  # the same source and settings: the same run
    assert ingest(other) != first  # another source: a new run
