"""Every dataset layout end to end: through `medml run` and through the Airflow DAG."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medml.cli import app
from medml.data.synthetic import CANARY_PATIENT_NAME, synthesize
from medml.local_airflow import airflow_env
from tests.conftest import dags_test, venv_env

pytestmark = pytest.mark.integration

CASES = [
    ("kidney-ct", "class_folders"),
    ("kidney-ct", "dicom"),
    ("chest-xray", "split_folders"),
    ("capsule-endoscopy", "csv"),
]
FAST = ["image.size=32", "split.folds=2", "train.epochs=1", "data.min_images_per_class=2",
        "registry.gate.require_better_than_chance=false",
        "registry.gate.thresholds.balanced_accuracy.min=0"]  # fmt: skip


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("layouts")
    return {
        (recipe, layout): synthesize(recipe, root / f"{recipe}-{layout}", layout=layout,
                                     n=200, seed=1, image_size=64).root
        for recipe, layout in CASES
    }  # fmt: skip


@pytest.mark.parametrize(("recipe", "layout"), CASES, ids=[f"{r}-{lay}" for r, lay in CASES])
def test_medml_run(recipe: str, layout: str, datasets, tmp_path: Path) -> None:
    args = ["run", "--source", str(datasets[(recipe, layout)]), "--recipe", recipe,
            "--run-dir", str(tmp_path / "run")]  # fmt: skip
    for override in FAST:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "challenger -> version 1" in result.output
    report = json.loads((tmp_path / "run" / "split_report.json").read_text())
    if layout == "split_folders":
        assert report["holdout"] == "dataset's own test split"
    if recipe == "chest-xray":  # binary: the operating point, chosen out-of-fold, is served
        point = json.loads((tmp_path / "run" / "evaluation" / "operating_point.json").read_text())
        assert point["positive_class"] == "PNEUMONIA" and point["oof"]["sensitivity"] >= 0.95
        assert set(point["holdout"]) >= {"sensitivity", "specificity", "ppv", "specificity_ci95"}
        from medml.serving import load_classifier

        model = load_classifier("models:/chest-xray-classifier@challenger")
        files = [str(p) for p in sorted(datasets[(recipe, layout)].rglob("*.jp*g"))[:4]]
        answer = model.predict(None, pd.DataFrame({"path": files}))
        p = answer["p_PNEUMONIA"].to_numpy()
        expected = ["PNEUMONIA" if x >= point["threshold"] else "NORMAL" for x in p]
        assert answer["decision"].tolist() == expected
        out = tmp_path / "predictions.csv"  # the batch CLI writes the same decision
        batch = ["predict", "--model", "chest-xray-classifier@challenger", "--source",
                 str(Path(files[0]).parent), "--out", str(out)]  # fmt: skip
        predicted = CliRunner().invoke(app, batch)
        assert predicted.exit_code == 0, predicted.output
        table = pd.read_csv(out)
        assert list(table.columns[:3]) == ["filename", "label", "decision"]
        at_threshold = table["p_PNEUMONIA"] >= point["threshold"]
        assert (table["decision"] == at_threshold.map({True: "PNEUMONIA", False: "NORMAL"})).all()
    if recipe == "kidney-ct":
        assert report["grouped"]  # patient groups: groups.csv, or the DICOM headers' PatientID
    if layout == "dicom":  # a hospital-style export: mixed modalities, syntaxes, multi-frame
        validation = json.loads((tmp_path / "run" / "validation" / "validation.json").read_text())
        assert validation["quarantined"] == 0
        assert set(validation["group_sources"]) == {"PatientID"}
        assert validation["multi_frame"]["files"] > 0
        canary = CANARY_PATIENT_NAME.encode()
        outputs = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".py"]
        assert [p for p in outputs if canary in p.read_bytes()] == []  # (medml's own code has
        # the canary's definition) the name reached no output, log, model, MLflow record


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    workdir = tmp_path_factory.mktemp("airflow-layouts")
    env = {**airflow_env(workdir), "PATH": venv_env()["PATH"]}
    subprocess.run(
        ["airflow", "db", "migrate"], env=env, check=True, capture_output=True, timeout=300
    )
    return env


@pytest.mark.slow
@pytest.mark.parametrize(("recipe", "layout"), CASES, ids=[f"{r}-{lay}" for r, lay in CASES])
def test_dag(recipe: str, layout: str, datasets, airflow_home, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # One model per case: the cases share one MLflow store, and a later case's version that is
    # worse than an earlier case's challenger on its holdout rightly leaves the alias where it is.
    overrides = [*FAST, f"registry.model_name=layouts-{recipe}-{layout}"]
    conf = {"source": str(datasets[(recipe, layout)]), "recipe": recipe,
            "run_dir": str(run_dir), "overrides": overrides}  # fmt: skip
    dags_test(airflow_home, "medml_retrain", "2026-01-05", conf)
    registration = json.loads((run_dir / "registry" / "registration.json").read_text())
    assert registration["alias"] == "challenger", registration


@pytest.mark.slow
def test_dag_reads_the_s3_snapshot_of_its_logical_date(
    datasets,
    airflow_home,
    s3_env: str,
    tmp_path: Path,
) -> None:
    from tests.conftest import upload_tree

    upload_tree(datasets[("kidney-ct", "class_folders")], "medml-snapshots", "ct/2026-03-02")
    run_dir = tmp_path / "run"
    conf = {"source": "s3://medml-snapshots/ct/{ds}/", "recipe": "kidney-ct",
            "run_dir": str(run_dir), "overrides": FAST}  # fmt: skip
    # Credentials only through the Airflow connection (type aws, resolved by AwsBaseHook):
    # nothing S3-related in the worker's environment.
    env = {k: v for k, v in airflow_home.items()
           if not k.startswith("AWS_") and k != "MEDML_S3_ENDPOINT_URL"}  # fmt: skip
    env["AIRFLOW_CONN_MEDML_S3"] = json.dumps({
        "conn_type": "aws", "login": "testing-key-id", "password": "testing-secret-do-not-log",
        "extra": {"endpoint_url": s3_env, "region_name": "us-east-1"},
    })  # fmt: skip
    result = dags_test(env, "medml_retrain", "2026-03-02", conf)
    pinned = json.loads((run_dir / "run.json").read_text())
    assert pinned["source"] == "s3://medml-snapshots/ct/2026-03-02/"
    assert (run_dir / "source" / "groups.csv").is_file()
    assert "testing-secret-do-not-log" not in result.stdout + result.stderr
