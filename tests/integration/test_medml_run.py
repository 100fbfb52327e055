"""`medml run` end to end: real TF training, a real MLflow SQLite registry, real files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from medml.data.synthetic import synth_kidney_ct
from tests.conftest import venv_env

pytestmark = pytest.mark.integration


def test_medml_run_registers_a_challenger_that_beats_chance(tmp_path: Path) -> None:
    data = synth_kidney_ct(tmp_path / "kidney-ct", n=800, seed=11).root
    run_dir = tmp_path / "run"
    env = venv_env()
    cmd = [
        "medml", "run", "--source", str(data), "--recipe", "kidney-ct", "--run-dir", str(run_dir),
        "--set", "split.folds=3", "--set", "train.epochs=30",
    ]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "challenger -> version 1" in result.stdout
    for name in ("Normal", "Cyst", "Stone", "Tumor"):
        assert name in result.stdout  # the per-class table is printed
    # A baseline on the same rows, every run: the verdict is the same wherever it is shown.
    from medml.baseline import sentence

    baseline = json.loads((run_dir / "evaluation" / "baseline.json").read_text())
    said = sentence(baseline)
    assert f"baseline: {said}" in result.stdout
    card = (run_dir / "registry" / "model_card.md").read_text()
    assert f"- Baseline: {said}" in card
    reviewed = subprocess.run(["medml", "review", "kidney-ct-classifier", "--version", "1", "--out",
                               str(tmp_path / "review.html")], env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
    assert f"baseline (v1): {said}" in reviewed.stdout, reviewed.stdout + reviewed.stderr
    assert said in (tmp_path / "review.html").read_text()
    # what a clinical reviewer asks next: the registered ensemble before the holdout, the
    # prediction sets' per-class coverage, the suspected label errors — summary, card, review
    from medml.conformal import sentence as sets_sentence

    sets = sets_sentence(json.loads((run_dir / "evaluation" / "conformal.json").read_text()))
    flagged = json.loads((run_dir / "evaluation" / "label_issues.json").read_text())
    assert f"prediction sets: {sets}" in result.stdout and "- Prediction sets:" in card
    assert f"suspected label errors: {flagged['suspects']} of" in result.stdout
    for shown in ("calibration cut (v1): n=", f"prediction sets (v1): {sets}",
                  f"suspected label errors (v1): {flagged['suspects']} of"):  # fmt: skip
        assert shown in reviewed.stdout, shown
    page = (tmp_path / "review.html").read_text()
    assert "<h2>Calibration cut</h2>" in page and "<h2>Prediction sets</h2>" in page

    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    assert metrics["overall"]["balanced_accuracy"] > 0.25 + 0.2  # chance is 0.25
    assert (run_dir / "evaluation" / "confusion_matrix.png").stat().st_size > 1000
    # Out-of-fold predictions for every image the folds trained on; the temperature fitted on
    # the ensemble's average over the calibration cut, which no fold model trained on.
    oof = json.loads((run_dir / "evaluation" / "oof_metrics.json").read_text())
    calibration = json.loads((run_dir / "evaluation" / "calibration.json").read_text())
    cut = calibration["ensemble_estimate"]
    holdout_size = metrics["overall"]["n"]
    assert oof["overall"]["n"] + cut["overall"]["n"] + holdout_size == 800
    assert oof["overall"]["balanced_accuracy"] > 0.45 and cut["estimate"] == "calibration cut"
    assert calibration["holdout_ece_after"] < calibration["holdout_ece_before"]
    assert calibration["fitted_on"].startswith("the fold ensemble's averaged output on")
    assert "not the holdout" in calibration["fitted_on"]
    for fold in (0, 1):
        history = json.loads((run_dir / "folds" / f"fold_{fold}" / "history.json").read_text())
        losses = history["history"]["loss"]
        assert min(losses) < losses[0]  # it learned

    from medml.tracking import Tracking

    client = Tracking.from_env(Path(env["MEDML_HOME"])).activate()
    version = client.get_model_version_by_alias("kidney-ct-classifier", "challenger")
    assert str(version.version) == "1"
    for tag in ("data_hash", "git_revision", "params_hash", "params", "recipe", "gate"):
        assert version.tags.get(tag), tag
    assert version.tags["gate"] == "passed"
    runs = client.search_runs(
        [client.get_experiment_by_name("medml-kidney-ct").experiment_id],
        filter_string="tags.`medml.kind` = 'fold'",
    )
    assert len(runs) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {version.run_id}
    assert "val_loss" in client.get_metric_history(runs[0].info.run_id, "val_loss")[0].key

    import mlflow
    import numpy as np
    import pandas as pd

    model = mlflow.pyfunc.load_model("models:/kidney-ct-classifier@challenger")
    files = [str(p) for p in sorted(data.rglob("*.jpg"))[:3]]
    answer = model.predict(pd.DataFrame({"path": files}))  # raw files in: preprocessing inside
    probabilities = answer[[f"p_{c}" for c in ("Normal", "Cyst", "Stone", "Tumor")]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    assert set(answer["label"]) <= {"Normal", "Cyst", "Stone", "Tumor"}

    # Lineage: signature + input example, the card as description, datasets, recipe params.
    info = mlflow.models.get_model_info("models:/kidney-ct-classifier@challenger")
    assert info.signature.inputs.input_names() == ["image", "path", "frame"]
    assert info.saved_input_example_info is not None
    assert version.description.startswith("# Model card: kidney-ct-classifier")
    requirements = Path(mlflow.pyfunc.get_model_dependencies(info.model_uri)).read_text()
    assert all("==" in line for line in requirements.split() if not line.startswith("-"))
    parent = client.get_run(version.run_id)
    contexts = {d.tags[0].value for d in parent.inputs.dataset_inputs}
    assert contexts == {"training", "calibration", "holdout"}
    assert {d.dataset.digest for d in parent.inputs.dataset_inputs} == {version.tags["data_hash"]}
    assert parent.data.params["train.balance"] == "class_weight"
    assert parent.info.status == "FINISHED"


def test_a_useless_model_is_registered_without_alias_by_the_default_gate(
    phantom_dir: Path, tmp_path: Path
) -> None:
    """Labels shuffled across the class folders: nothing can be learned. The recipe's own
    thresholds are switched off, so only the default "better than chance" gate stands."""
    import random
    import shutil

    from medml import pipeline, runs
    from medml.tracking import Tracking
    from tests.conftest import TINY

    shuffled = tmp_path / "shuffled"
    files = sorted(phantom_dir.rglob("*.jpg"))
    labels = [f.parent.name for f in files]
    random.Random(0).shuffle(labels)
    for file, label in zip(files, labels, strict=True):
        (shuffled / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(file, shuffled / label / file.name)
    settings = [*TINY, "train.epochs=1", "registry.gate.thresholds={}"]
    ctx = runs.init_run(tmp_path / "run", shuffled, "kidney-ct", overrides=settings)
    result = pipeline.run_all(ctx, Tracking.from_env(), echo=lambda _: None)

    assert result["version"] == "1" and result["alias"] is None and not result["gate_passed"]
    client = Tracking.from_env().activate()
    version = client.get_model_version("kidney-ct-classifier", "1")
    assert version.tags["gate"] == "failed"
    assert "is not above chance (0.250 for 4 classes)" in version.tags["gate_reasons"]
    assert not client.get_registered_model("kidney-ct-classifier").aliases


def test_cross_validation_only_reports_out_of_fold_as_the_estimate(
    phantom_dir: Path, tmp_path: Path
) -> None:
    """``split.test_size: 0`` (small sets; the capsule write-up's protocol): no holdout, every
    image scored out-of-fold, and every report says so."""
    from medml import pipeline, report, runs
    from medml.tracking import Tracking
    from tests.conftest import TINY

    settings = [*TINY, "split.test_size=0", "registry.gate.thresholds.balanced_accuracy.min=0",
                "registry.gate.require_better_than_chance=false"]  # fmt: skip
    ctx = runs.init_run(tmp_path / "run", phantom_dir, "kidney-ct", overrides=settings)
    result = pipeline.run_all(ctx, Tracking.from_env(), echo=lambda _: None)

    splits = json.loads(ctx.layout.split_report.read_text())
    assert splits["test_size"] == 0 and splits["holdout"].startswith("none: cross-validation only")
    metrics = json.loads(ctx.layout.evaluation.metrics.read_text())
    images = sum(1 for _ in phantom_dir.rglob("*.jpg")) - splits["calibration_size"]
    assert metrics["estimate"] == "out-of-fold" and metrics["overall"]["n"] == images
    assert len(metrics["per_fold"]) == 2 and metrics["ci95"]["balanced_accuracy"][0] is not None
    calibration = json.loads(ctx.layout.evaluation.calibration.read_text())
    assert calibration["holdout_ece_before"] is None and calibration["oof_ece_after"] >= 0
    # the calibration cut is the one estimate of the ensemble itself when there is no holdout
    cut = splits["calibration_size"]
    assert cut > 0 and calibration["ensemble_estimate"]["overall"]["n"] == cut
    summary = report.summary(ctx.layout.root)
    assert f"Out-of-fold estimate (cross-validation only, no holdout; n={images})" in summary
    assert f"calibration cut (n={cut}, the registered ensemble" in summary
    assert "out-of-fold ECE" in summary and "Holdout" not in summary
    assert result["version"] == "1" and result["alias"] == "challenger", result["gate_reasons"]
    card = next((ctx.layout.registry.root).rglob("model_card.md")).read_text()
    assert "Out-of-fold metrics (cross-validation only: there is no holdout)" in card
