"""The model lifecycle against a real MLflow registry: gate, champion comparison, promotion,
refusal, override, rollback, rejection, review and batch prediction."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pandas as pd
import pytest

from medml import pipeline, runs
from medml.promotion import PromotionError, audit_log, promote, record_decision, rollback
from medml.tracking import Tracking
from tests.conftest import TINY

pytestmark = pytest.mark.integration
NAME = "kidney-ct-classifier"


def _run(source: Path, run_dir: Path, *extra: str) -> dict:
    ctx = runs.init_run(
        run_dir, source, "kidney-ct", overrides=[*TINY, *extra], logical_date="2026-01-05"
    )
    return pipeline.run_all(ctx, Tracking.from_env(), echo=lambda _: None)


def test_gate_promotion_rollback_review_predict(
    phantom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracking = Tracking.from_env()
    client = tracking.activate()

    first = _run(
        phantom_dir,
        tmp_path / "r1",
        "registry.gate.require_better_than_chance=false",
        "registry.gate.thresholds.balanced_accuracy.min=0",
    )
    assert (first["version"], first["alias"]) == ("1", "challenger")
    v1 = client.get_model_version(NAME, "1")
    assert v1.tags["compared_with_champion"] == "none"  # no champion: thresholds only
    artifacts = {a.path for a in client.list_artifacts(v1.run_id, "model_card")}
    assert artifacts == {"model_card/model_card.md", "model_card/model_card.html"}
    assert {a.path for a in client.list_artifacts(v1.run_id, "validation")} >= {
        "validation/validation.json",
        "validation/quarantine.csv",
        "validation/data_docs",
    }

    promote(tracking, NAME, 1, reviewer="alice", reason="first model")
    assert client.get_model_version_by_alias(NAME, "champion").version in (1, "1")
    assert "challenger" not in client.get_registered_model(NAME).aliases  # no self-comparison

    strict = "registry.gate.thresholds.balanced_accuracy.min=0.99"
    failed = _run(phantom_dir, tmp_path / "r2", strict)
    assert failed["alias"] is None and not failed["gate_passed"]
    v2 = client.get_model_version(NAME, "2")
    assert v2.tags["gate"] == "failed" and "balanced_accuracy" in v2.tags["gate_reasons"]
    assert v2.tags["compared_with_champion"] == "1"  # scored the champion on the same holdout
    assert "challenger" not in client.get_registered_model(NAME).aliases  # a failed gate: none

    client.set_model_version_tag(NAME, "2", "gate", "passed")  # a forged tag changes nothing
    with pytest.raises(PromotionError, match="did not pass its gate .recomputed from its logged"):
        promote(tracking, NAME, 2, reviewer="bob", reason="looks fine")
    with pytest.raises(PromotionError, match="bob may not override a failed gate"):
        promote(tracking, NAME, 2, reviewer="bob", reason="urgent", override_gate="known issue")
    policy = tmp_path / "policy.toml"  # the deployment's policy, not the promoter's environment
    policy.write_text('gate_overriders = ["bob", "erin"]\n')
    monkeypatch.setenv("MEDML_POLICY", str(policy))
    promote(tracking, NAME, 2, reviewer="bob", reason="urgent fix", override_gate="known issue")
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    assert str(client.get_model_version_by_alias(NAME, "previous-champion").version) == "1"
    v2 = client.get_model_version(NAME, "2")
    assert v2.tags["audit.promoted.reviewer"] == "bob"
    assert v2.tags["audit.promoted.previous_champion"] == "1"
    assert v2.tags["audit.promoted.gate_override"] == "known issue"

    rollback(tracking, NAME, reviewer="carol", reason="regression in Stone")
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    record_decision(tracking, NAME, 2, reviewer="dave", decision="rejected", reason="no")
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"  # unchanged
    events = [(e["event"], e["version"], e.get("reviewer") or e["registrar"])
              for e in audit_log(tracking, NAME)]  # fmt: skip
    registrar = pwd.getpwuid(os.getuid()).pw_name  # the CLI's local-admin identity
    assert events == [
        ("register", "1", registrar),
        ("promote", "1", "alice"),
        ("register", "2", registrar),
        ("promote", "2", "bob"),
        ("rollback", "1", "carol"),
        ("rejected", "2", "dave"),
    ]

    from typer.testing import CliRunner

    from medml.cli import app

    runner = CliRunner()
    result = runner.invoke(
        app, ["review", NAME, "--version", "2", "--out", str(tmp_path / "review.html")]
    )
    assert result.exit_code == 0, result.output
    assert "candidate v2" in result.output and "champion v1" in result.output
    page = (tmp_path / "review.html").read_text()
    assert "data:image/png;base64" in page and "sensitivity Stone" in page
    from medml.review import review

    markdown, _ = review(tracking, NAME, "2", tmp_path / "r.html", markdown=True)
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert table[:2] == [f"| {NAME} | candidate v2 | champion v1 |", "|---|---|---|"]
    cells = [line for line in table[2:] if line.count(" | ") != 2]
    assert not cells, cells  # three cells in every row
    assert any(line.startswith("| sensitivity Stone | ") for line in table)

    out = tmp_path / "predictions.csv"
    result = runner.invoke(
        app,
        [
            "predict",
            "--model",
            f"{NAME}@champion",
            "--source",
            str(phantom_dir / "Cyst"),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(out)
    assert len(predictions) == len(list((phantom_dir / "Cyst").glob("*.jpg")))
    assert set(predictions["label"]) <= {"Normal", "Cyst", "Stone", "Tumor"}
    probabilities = predictions[[f"p_{c}" for c in ("Normal", "Cyst", "Stone", "Tumor")]]
    assert ((probabilities.sum(axis=1) - 1).abs() < 1e-4).all()

    result = runner.invoke(app, ["promote", NAME, "--version", "9", "--reason", "y"])
    assert result.exit_code == 5 and "has no version 9" in result.output  # refused
