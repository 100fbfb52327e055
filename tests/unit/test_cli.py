"""The CLI: every step has help, and bad input is a one-line error, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from medml.cli import app
from medml.steps import STEPS

runner = CliRunner()


def test_help_lists_every_step() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for step in (*STEPS, "synth", "run", "demo", "init", "summary"):
        assert step in result.output


@pytest.mark.parametrize(
    ("step", "option"),
    [*[(step, "--run-dir") for step in STEPS], ("synth", "--out"), ("run", "--source"),
     ("demo", "--workdir"), ("init", "--recipe")],
)  # fmt: skip
def test_every_step_has_help(step: str, option: str) -> None:
    result = runner.invoke(app, [step, "--help"])
    assert result.exit_code == 0, result.output
    assert option in result.output


def _assert_one_line_error(result, fragment: str, code: int = 3) -> None:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and fragment in lines[0]
    assert "Traceback" not in result.output


def test_missing_source_dir(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["run", "--source", str(tmp_path / "nope"), "--recipe", "kidney-ct"]
    )
    _assert_one_line_error(result, "does not exist")


def test_unknown_recipe(phantom_dir: Path) -> None:
    result = runner.invoke(app, ["run", "--source", str(phantom_dir), "--recipe", "kidney-mri"])
    _assert_one_line_error(result, "unknown recipe 'kidney-mri'; available:")


def test_unknown_set_key(phantom_dir: Path) -> None:
    result = runner.invoke(
        app,
        ["run", "--source", str(phantom_dir), "--recipe", "kidney-ct", "--set", "train.epoch=2"],
    )
    _assert_one_line_error(result, "unknown key 'train.epoch'")


def test_empty_dataset(tmp_path: Path) -> None:
    (tmp_path / "ds" / "Normal").mkdir(parents=True)
    result = runner.invoke(app, ["run", "--source", str(tmp_path / "ds"), "--recipe", "kidney-ct"])
    _assert_one_line_error(result, "no images")


def test_step_before_init(tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", "--run-dir", str(tmp_path / "run")])
    _assert_one_line_error(result, "is not a medml run directory")


def test_step_out_of_order(phantom_dir: Path, tmp_path: Path) -> None:
    run_dir = str(tmp_path / "run")
    init = ["init", "--run-dir", run_dir, "--source", str(phantom_dir), "--recipe", "kidney-ct"]
    assert runner.invoke(app, init).exit_code == 0
    result = runner.invoke(app, ["split", "--run-dir", run_dir])
    _assert_one_line_error(result, "run the `validate` step first")


def test_unknown_strategy_suggests_a_name(phantom_dir: Path) -> None:
    result = runner.invoke(app, ["run", "--source", str(phantom_dir), "--recipe", "kidney-ct",
                                 "--set", "train.balance=smot"])  # fmt: skip
    _assert_one_line_error(result, "did you mean 'smote'?")


def test_a_bug_keeps_its_traceback(
    phantom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only MedmlError becomes a one-line message; anything else is a bug and is not hidden."""
    import medml.split

    def broken(*args: object) -> None:
        raise ValueError("a bug deep inside numpy")

    run_dir = str(tmp_path / "run")
    runner.invoke(app, ["init", "--run-dir", run_dir, "--source", str(phantom_dir),
                        "--recipe", "kidney-ct"])  # fmt: skip
    for step in ("ingest", "validate"):
        assert runner.invoke(app, [step, "--run-dir", run_dir]).exit_code == 0
    monkeypatch.setattr(medml.split, "split", broken)
    result = runner.invoke(app, ["split", "--run-dir", run_dir])
    assert isinstance(result.exception, ValueError) and result.exit_code == 1
    assert "error: " not in result.output


def test_lifecycle_commands_find_the_demos_store_and_latest_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After `make demo` the store is <home>/demo/mlflow.db and the run under <home>/demo/runs:
    `medml review MODEL` and `medml summary` find them with no flags (and say so)."""
    import os

    from medml.tracking import Tracking

    home = Path(os.environ["MEDML_HOME"])
    Tracking.from_env(uri=f"sqlite:///{home / 'demo' / 'mlflow.db'}").activate()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow exports it on activate
    result = runner.invoke(app, ["review", "kidney-ct-classifier"])
    assert f"using the demo's MLflow store sqlite:///{home / 'demo' / 'mlflow.db'}" in result.output
    assert "no MLflow store" not in result.output
    result = runner.invoke(app, ["summary"])
    _assert_one_line_error(result, f"no runs under {home}/runs or {home}/demo/runs")
    run = home / "demo" / "runs" / "2026-01-05" / "demo__1"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    result = runner.invoke(app, ["summary"])
    assert f"latest run: {run}" in result.output


def test_predict_fails_when_no_file_could_be_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import medml.predict
    from medml.predict import PredictResult

    def all_unreadable(*args: object, **kwargs: object) -> PredictResult:
        return PredictResult(out=tmp_path / "p.csv", images=3, failed=3)

    monkeypatch.setattr(medml.predict, "predict", all_unreadable)
    monkeypatch.setattr("medml.cli._existing_store", lambda uri: None)
    (tmp_path / "imgs").mkdir()
    result = runner.invoke(app, ["predict", "--model", "m@champion", "--source",
                                 str(tmp_path / "imgs")])  # fmt: skip
    _assert_one_line_error(result, "none of the 3 files could be read")
