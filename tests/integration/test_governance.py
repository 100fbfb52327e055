"""Governance on a real MLflow registry: who may promote, the recomputed gate, and an audit
trail that is complete under concurrency and shows any edit or deletion."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medml import audit
from medml.cli import app
from medml.config import load_recipe
from medml.metrics import HoldoutMetrics
from medml.promotion import PromotionError, promote
from medml.tracking import Tracking
from tests.conftest import venv_env

pytestmark = pytest.mark.integration
NAME = "governed-classifier"


def _metrics(sensitivity_b: float) -> HoldoutMetrics:
    per_class = {"a": {"sensitivity": 0.9, "specificity": 0.8, "ppv": 0.8, "npv": 0.9, "f1": 0.85,
                       "support": 50},
                 "b": {"sensitivity": sensitivity_b, "specificity": 0.9, "ppv": 0.8, "npv": 0.8,
                       "f1": 0.8, "support": 50}}  # fmt: skip
    overall = {"balanced_accuracy": (0.9 + sensitivity_b) / 2, "macro_f1": 0.8, "accuracy": 0.85,
               "roc_auc_ovr_macro": 0.9, "cohen_kappa": 0.6, "expected_calibration_error": 0.05,
               "n": 100}  # fmt: skip
    return HoldoutMetrics(["a", "b"], overall, per_class, [[45, 5], [10, 40]],
                          ci95={"balanced_accuracy": [0.7, 0.9]})  # fmt: skip


def _versions(tracking: Tracking, count: int, *, sensitivity_b: float = 0.8) -> None:
    """``count`` complete versions of NAME whose run logged metrics and the gate as params —
    what `medml register` leaves (without training: the registry is what is under test)."""
    import mlflow

    client = tracking.activate()
    client.create_registered_model(NAME)
    params = load_recipe("kidney-ct").flat_params()
    for _ in range(count):
        with mlflow.start_run() as run:
            mlflow.log_params({k: v for k, v in params.items() if k.startswith("registry.gate.")})
            mlflow.log_dict(_metrics(sensitivity_b).to_dict(), "evaluation/metrics.json")
            mlflow.log_text("stand-in", "model/MLmodel")
        version = client.create_model_version(NAME, f"runs:/{run.info.run_id}/model",
                                              run.info.run_id)  # fmt: skip
        client.set_model_version_tag(NAME, version.version, "medml.complete", "true")
        client.set_model_version_tag(NAME, version.version, "gate", "passed")


def test_twenty_concurrent_promotions_lose_no_event(tmp_path: Path) -> None:
    tracking = Tracking.from_env()
    _versions(tracking, 20)
    env = {**venv_env(), "MLFLOW_TRACKING_URI": tracking.uri}
    code = ("import sys; from medml.promotion import promote; from medml.tracking import "
            "Tracking; promote(Tracking.from_env(), sys.argv[1], sys.argv[2], "
            "reviewer=f'reviewer-{sys.argv[2]}', reason='concurrent')")  # fmt: skip
    processes = [subprocess.Popen([sys.executable, "-c", code, NAME, str(v)], env=env,
                                  stderr=subprocess.PIPE, text=True)
                 for v in range(1, 21)]  # fmt: skip
    failures = [p.stderr.read() for p in processes if p.wait(timeout=300) != 0]
    assert failures == []
    events = audit.events(tracking, NAME)
    assert sorted(int(e["version"]) for e in events) == list(range(1, 21))  # nothing lost
    assert [e["seq"] for e in events] == list(range(1, 21))
    report = audit.verify(tracking, NAME)
    assert report.intact and report.events == 20, report.problems
    champion = tracking.activate().get_model_version_by_alias(NAME, "champion").version
    assert str(champion) == events[-1]["version"]  # the last event is the one that stuck


def test_verify_catches_an_edited_event_a_deleted_one_and_a_removed_tail(tmp_path: Path) -> None:
    tracking = Tracking.from_env()
    _versions(tracking, 3)
    for version in ("1", "2", "3"):
        promote(tracking, NAME, version, reviewer="alice", reason=f"step {version}")
    result = CliRunner().invoke(app, ["audit", "verify", NAME, "--tracking-uri", tracking.uri])
    assert result.exit_code == 0 and "3 audit events, hash chain intact" in result.output

    database = tracking.uri.removeprefix("sqlite:///")
    run_of = {e["seq"]: r for e, r in _event_runs(tracking)}
    with sqlite3.connect(database) as db:  # what someone with database access could do
        row = db.execute("SELECT value FROM params WHERE key='event' AND run_uuid=?",
                         (run_of[2],)).fetchone()  # fmt: skip
        forged = json.loads(row[0]) | {"reviewer": "mallory"}
        db.execute("UPDATE params SET value=? WHERE key='event' AND run_uuid=?",
                   (json.dumps(forged, sort_keys=True), run_of[2]))  # fmt: skip
    result = CliRunner().invoke(app, ["audit", "verify", NAME, "--tracking-uri", tracking.uri])
    assert result.exit_code == 6 and "event #2 was edited after it was written" in result.output

    tracking.activate().delete_run(run_of[1])
    problems = audit.verify(tracking, NAME).problems
    assert "event #1 was deleted" in " ".join(problems)
    assert "event #1 is missing" in " ".join(problems)

    with sqlite3.connect(database) as db:  # drop the newest event entirely
        db.execute("DELETE FROM params WHERE run_uuid=?", (run_of[3],))
    assert any("the newest event should be 3:" in p for p in audit.verify(tracking, NAME).problems)


def _event_runs(tracking: Tracking) -> list[tuple[dict, str]]:
    client = tracking.activate()
    experiment = client.get_experiment_by_name(audit.AUDIT_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    return [(json.loads(r.data.params["event"]), r.info.run_id) for r in runs]


def test_promotion_identity_four_eyes_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    tracking = Tracking.from_env()
    _versions(tracking, 2, sensitivity_b=0.3)  # class b at or below chance: the gate fails
    client = tracking.activate()
    with pytest.raises(PromotionError, match="alice requested this promotion and cannot also"):
        promote(tracking, NAME, "1", reviewer="alice", reason="r", requested_by="alice",
                override_gate="x")  # fmt: skip
    with pytest.raises(PromotionError, match="did not pass its gate .*is at or below chance"):
        promote(tracking, NAME, "1", reviewer="bob", reason="r", requested_by="alice")
    with pytest.raises(PromotionError, match="bob may not override.*now: nobody"):
        promote(tracking, NAME, "1", reviewer="bob", reason="r", override_gate="urgent")
    assert audit.events(tracking, NAME) == []  # refused: nothing moved, nothing recorded
    monkeypatch.setenv("MEDML_GATE_OVERRIDERS", "bob")
    event = promote(tracking, NAME, "1", reviewer="bob", reason="r", requested_by="alice",
                    override_gate="urgent", identity="airflow")  # fmt: skip
    assert (event["requested_by"], event["reviewer"], event["identity"]) == ("alice", "bob",
                                                                             "airflow")  # fmt: skip
    assert event["gate"] == "failed" and event["gate_override"] == "urgent"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"

    import os
    import pwd

    runner = CliRunner()
    refused = runner.invoke(app, ["promote", NAME, "--version", "2", "--reason", "cli",
                                  "--tracking-uri", tracking.uri])  # fmt: skip
    assert refused.exit_code == 5 and "did not pass its gate" in refused.output
    override = ["--override-gate", "me", "--tracking-uri", tracking.uri]
    refused = runner.invoke(app, ["promote", NAME, "--version", "2", "--reason", "cli", *override])
    assert refused.exit_code == 5 and f"{pwd.getpwuid(os.getuid()).pw_name} may not override" in (
        refused.output
    )
    assert runner.invoke(app, ["promote", NAME, "--version", "2", "--reviewer", "x", "--reason",
                               "y"]).exit_code == 2  # fmt: skip # no free-text identity
