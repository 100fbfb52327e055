"""Register the fold ensemble as one MLflow model version, gated, tagged and aliased."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medml.config import GateConfig, Recipe
from medml.io import atomic_path, write_json
from medml.tracking import MODEL_REQUIREMENTS, Tracking

MAX_TAG_CHARS = 5000


@dataclass(frozen=True)
class GateOutcome:
    """Whether a model passed the registration gate, and why not."""

    passed: bool
    reasons: list[str]


@dataclass(frozen=True)
class Registration:
    """The registered version and what happened to its alias."""

    model_name: str
    version: str
    alias: str | None
    gate: GateOutcome
    model_uri: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "model_name": self.model_name,
            "version": self.version,
            "alias": self.alias,
            "gate_passed": self.gate.passed,
            "gate_reasons": self.gate.reasons,
            "model_uri": self.model_uri,
        }


def check_gate(metrics: dict[str, Any], gate: GateConfig) -> GateOutcome:
    """Compare holdout metrics with the recipe's absolute thresholds."""
    overall = metrics["overall"]
    reasons = []
    if overall["balanced_accuracy"] < gate.min_balanced_accuracy:
        reasons.append(
            f"balanced accuracy {overall['balanced_accuracy']:.3f} < "
            f"{gate.min_balanced_accuracy:.3f}"
        )
    if overall["macro_f1"] < gate.min_macro_f1:
        reasons.append(f"macro-F1 {overall['macro_f1']:.3f} < {gate.min_macro_f1:.3f}")
    for name, scores in metrics["per_class"].items():
        sensitivity = scores["sensitivity"]
        if sensitivity is not None and sensitivity < gate.min_class_sensitivity:
            reasons.append(
                f"sensitivity of {name} {sensitivity:.3f} < {gate.min_class_sensitivity:.3f}"
            )
    return GateOutcome(passed=not reasons, reasons=reasons)


def git_revision(start: Path | None = None) -> str:
    """The source revision: ``MEDML_GIT_REVISION`` if set (images), else ``git rev-parse HEAD``."""
    if os.environ.get("MEDML_GIT_REVISION"):
        return os.environ["MEDML_GIT_REVISION"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=start or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def register_ensemble(
    model_paths: Sequence[Path],
    metrics: dict[str, Any],
    out_dir: Path,
    recipe: Recipe,
    *,
    tracking: Tracking,
    parent_run_id: str,
    tags: dict[str, str],
) -> Registration:
    """Build the fold ensemble, log it to the pipeline run and register one model version.

    The version gets alias ``recipe.registry.alias`` (``challenger``) only if the gate passes;
    otherwise it is tagged ``gate=failed`` with the reasons and no alias moves.

    Args:
        model_paths: the fold models (``.keras``).
        metrics: the ensemble's holdout metrics (``metrics.json``).
        out_dir: where ``ensemble.keras`` and ``registration.json`` go.
        recipe: the run's recipe (model name, alias, gate).
        tracking: the MLflow store.
        parent_run_id: the pipeline run the model is logged to.
        tags: extra version tags (data hash, logical date, ...).
    """
    import keras
    import mlflow

    from medml.models import build_ensemble

    members = [keras.models.load_model(path, compile=False) for path in model_paths]
    ensemble = build_ensemble(members)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "ensemble.keras") as tmp:
        ensemble.save(tmp)

    gate = check_gate(metrics, recipe.registry.gate)
    client = tracking.activate()
    name = recipe.registry.model_name
    params_json = json.dumps(recipe.model_dump(mode="json"), sort_keys=True)
    version_tags = {
        **tags,
        "recipe": recipe.name,
        "git_revision": git_revision(),
        "params_hash": recipe.params_hash(),
        "params": params_json if len(params_json) <= MAX_TAG_CHARS else "(see run params)",
        "balance": recipe.train.balance,
        "folds": str(len(model_paths)),
        "gate": "passed" if gate.passed else "failed",
        "gate_reasons": "; ".join(gate.reasons)[:MAX_TAG_CHARS],
        "balanced_accuracy": f"{metrics['overall']['balanced_accuracy']:.4f}",
        "macro_f1": f"{metrics['overall']['macro_f1']:.4f}",
    }
    with mlflow.start_run(run_id=parent_run_id):
        info = mlflow.keras.log_model(
            ensemble,
            name="ensemble",
            registered_model_name=name,
            pip_requirements=MODEL_REQUIREMENTS,
            metadata={"classes": list(recipe.data.classes)},
        )
    version = str(info.registered_model_version)
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, value)
    alias = None
    if gate.passed:
        alias = recipe.registry.alias
        client.set_registered_model_alias(name, alias, version)
    registration = Registration(name, version, alias, gate, f"models:/{name}/{version}")
    write_json(out_dir / "registration.json", registration.as_dict())
    return registration
