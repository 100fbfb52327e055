"""One test per exit code of the ``medml`` command (the table in :mod:`medml.errors`).

Codes 3 to 6 are deliberate medml errors: the output is one line, ``error: …``, and no
traceback. Code 1 is a bug: its exception is kept, not turned into a message.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from medml.cli import app
from medml.data.synthetic import synth_kidney_ct
from medml.errors import AuditBroken, DataGateFailed, MedmlError, RefusedError, SplitError

runner = CliRunner()


def _assert_one_line_error(result: Result, code: int, fragment: str) -> None:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 kidney-CT phantoms: 2 Stone images, below the recipe's minimum of 10 per class."""
    root = tmp_path_factory.mktemp("exit-codes") / "kidney-ct"
    synth_kidney_ct(root, n=20, seed=0, image_size=32)
    return root


def _ingested_run(run_dir: Path, source: Path) -> None:
    init = ["init", "--run-dir", str(run_dir), "--source", str(source), "--recipe", "kidney-ct"]
    assert runner.invoke(app, init).exit_code == 0
    assert runner.invoke(app, ["ingest", "--run-dir", str(run_dir)]).exit_code == 0


def _empty_store(tmp_path: Path) -> str:
    """A tracking URI whose SQLite file exists, so the lifecycle commands get past their check
    that the store is there (the step itself is replaced in these tests)."""
    (tmp_path / "mlflow.db").touch()
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_exit_0_success() -> None:
    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 0, result.output
    assert "kidney-ct" in result.output and "error:" not in result.output


def test_exit_1_a_bug_keeps_its_exception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medml.data.synthetic

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug inside medml")

    monkeypatch.setattr(medml.data.synthetic, "synthesize", broken)
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "ds")])
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError) and not isinstance(
        result.exception, MedmlError
    )
    assert result.exc_info is not None and result.exc_info[2] is not None  # the traceback
    assert "error: " not in result.output


def test_exit_2_usage_error(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["synth"])
    assert missing.exit_code == 2 and "--out" in missing.output
    unknown = runner.invoke(app, ["synth", "--out", str(tmp_path / "ds"), "--colour", "red"])
    assert unknown.exit_code == 2 and "--colour" in unknown.output
    assert "Traceback" not in missing.output + unknown.output


def test_exit_3_synth_into_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    result = runner.invoke(app, ["synth", "--out", str(tmp_path)])
    _assert_one_line_error(result, 3, "is not empty; choose a new one")
    assert (tmp_path / "keep.txt").read_text() == "x"


def test_exit_3_synth_n_below_the_layouts_minimum(tmp_path: Path) -> None:
    out = ["--out", str(tmp_path / "ds"), "--n", "120"]
    result = runner.invoke(app, ["synth", "--recipe", "capsule-endoscopy", *out])
    _assert_one_line_error(result, 3, "n >= 168")
    assert not (tmp_path / "ds").exists()


def test_exit_3_synth_recipe_yaml_path(tmp_path: Path) -> None:
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "kidney-ct.yaml"
    ok = runner.invoke(app, ["synth", "--recipe", str(recipe), "--out", str(tmp_path / "ds"),
                             "--n", "8", "--size", "32"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert len(list((tmp_path / "ds").rglob("*.jpg"))) == 8
    missing = runner.invoke(app, ["synth", "--recipe", str(tmp_path / "nope.yaml"),
                                  "--out", str(tmp_path / "other")])  # fmt: skip
    _assert_one_line_error(missing, 3, "nope.yaml does not exist")


def test_exit_3_missing_run_dir(tmp_path: Path) -> None:
    result = runner.invoke(app, ["summary", "--run-dir", str(tmp_path / "no-run")])
    _assert_one_line_error(result, 3, "is not a medml run directory")


def test_exit_4_data_gate_failed(
    small_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI mapping only (the real gate runs Great Expectations: see the slow test below and
    tests/data/test_validate.py)."""
    import medml.data.validate

    def gate_fails(*args: object, **kwargs: object) -> None:
        raise medml.data.validate.ValidationFailed(
            "data validation failed: classes below the minimum of 10 images: {'Stone': 2}"
        )

    _ingested_run(tmp_path / "run", small_dataset)
    monkeypatch.setattr(medml.data.validate, "validate", gate_fails)
    result = runner.invoke(app, ["validate", "--run-dir", str(tmp_path / "run")])
    _assert_one_line_error(result, DataGateFailed.exit_code, "classes below the minimum of 10")
    assert result.exit_code == 4


def _run(source: Path, run_dir: Path, *sets: str) -> Result:
    overrides = [arg for pair in sets for arg in ("--set", pair)]
    return runner.invoke(app, ["run", "--source", str(source), "--recipe", "kidney-ct",
                               "--run-dir", str(run_dir), *overrides])  # fmt: skip


def _assert_ends_in_one_line_error(result: Result, code: int, fragment: str) -> None:
    """``medml run`` prints a line per finished step, then the error as its last line."""
    assert result.exit_code == code, result.output
    last = [line for line in result.output.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and fragment in last, last
    assert sum(line.startswith("error: ") for line in result.output.splitlines()) == 1
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_run_with_too_many_folds_is_exit_3(small_dataset: Path, tmp_path: Path) -> None:
    """``medml run --set split.folds=8`` on a small dataset: one line naming the classes."""
    sets = ("data.min_images_per_class=2", "split.folds=8")
    result = _run(small_dataset, tmp_path / "run", *sets)
    _assert_ends_in_one_line_error(result, SplitError.exit_code, "split.folds=8")
    error = result.output.strip().splitlines()[-1]  # the classes and their patient groups
    assert result.exit_code == 3 and "'Stone': 1" in error and "need at least 9" in error


@pytest.mark.slow
def test_run_below_the_class_minimum_is_exit_4(small_dataset: Path, tmp_path: Path) -> None:
    """The real data gate (Great Expectations) fails: exit 4, one line."""
    result = _run(small_dataset, tmp_path / "run")
    _assert_ends_in_one_line_error(result, 4, "classes below the minimum of 10 images")


def test_exit_5_refused_promotion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medml.promotion

    def refuse(*args: object, **kwargs: object) -> None:
        raise RefusedError("kidney-ct-classifier v2 failed the promotion gate; see its review")

    monkeypatch.setattr(medml.promotion, "promote", refuse)
    store = _empty_store(tmp_path)
    result = runner.invoke(app, ["promote", "kidney-ct-classifier", "--version", "2",
                                 "--reason", "better", "--tracking-uri", store])  # fmt: skip
    _assert_one_line_error(result, RefusedError.exit_code, "failed the promotion gate")
    assert result.exit_code == 5


def test_exit_6_audit_trail_broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medml.audit

    def broken_chain(tracking: object, model: str) -> medml.audit.AuditReport:
        return medml.audit.AuditReport(model, 3, ["event #2 was edited (hash mismatch)"])

    monkeypatch.setattr(medml.audit, "verify", broken_chain)
    result = runner.invoke(app, ["audit", "verify", "kidney-ct-classifier",
                                 "--tracking-uri", _empty_store(tmp_path)])  # fmt: skip
    _assert_one_line_error(result, AuditBroken.exit_code, "event #2 was edited")
    assert result.exit_code == 6


def test_a_missing_weights_file_is_exit_3_before_any_data_step(
    small_dataset: Path, tmp_path: Path
) -> None:
    """The seed-001 recipe names an ImageNet weights file medml never downloads: a machine
    without it hears so at once, not after minutes of data steps."""
    result = runner.invoke(
        app,
        [
            "run",
            "--source",
            str(small_dataset),
            "--recipe",
            "capsule-endoscopy-seed001",
            "--run-dir",
            str(tmp_path / "r"),
        ],
    )
    _assert_ends_in_one_line_error(result, 3, "densenet121_weights_tf_dim_ordering_tf_kernels")
    assert "never downloads weights" in result.output
    assert not (tmp_path / "r" / "manifest.parquet").exists()  # no data step ran


@pytest.mark.parametrize("given", ["", "folder", "fifo"])
def test_a_weights_path_that_is_no_file_says_what_it_is(tmp_path: Path, given: str) -> None:
    import os

    from medml.errors import ConfigError
    from medml.models import local_weights

    path = tmp_path / given if given else ""
    if given == "folder":
        path.mkdir()
    elif given == "fifo":
        os.mkfifo(path)
    with pytest.raises(ConfigError, match="empty" if not given else "is not a regular file"):
        local_weights(str(path))
