"""Register the fold ensemble as one MLflow model version, gated, tagged and aliased.

Who may later move ``champion`` to it, and the audit of that, is :mod:`medml.promotion`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medml.calibration import ServingCalibration
from medml.config import GateConfig, Recipe
from medml.errors import RunError
from medml.evaluation_facts import EvaluationFacts
from medml.faults import failpoint
from medml.identity import Identity, cli_identity
from medml.io import COMPLETE_MARKER, atomic_path, publish_dir, write_json
from medml.layout import ARTIFACTS, RegistryFiles
from medml.metrics import (
    GateOutcome,
    HoldoutMetrics,
    check_gate,
    inferior_reasons,
    scalar_metrics,
)
from medml.settings import Settings
from medml.tracking import Tracking, version_uri
from medml.version_tags import CHAMPION, VersionTags

MAX_TAG_CHARS = 5000


@dataclass(frozen=True)
class Registration:
    """The registered version and what happened to its alias."""

    model_name: str
    version: str
    alias: str | None
    gate: GateOutcome
    model_uri: str
    already_registered: bool = False
    """This pipeline run had registered the version before: nothing was changed."""
    kept_challenger: str = ""
    """Why the alias stayed on the current challenger (this version passed its gate but is
    worse than that challenger on the same holdout); empty when the alias moved or no gate."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "model_name": self.model_name,
            "version": self.version,
            "alias": self.alias,
            "gate_passed": self.gate.passed,
            "gate_reasons": self.gate.reasons,
            "model_uri": self.model_uri,
            "already_registered": self.already_registered,
            "kept_challenger": self.kept_challenger,
        }


@dataclass(frozen=True)
class ChampionScore:
    """The current champion scored on this run's holdout (``metrics``), or why it could not
    be (``error``: non-inferiority then cannot be shown and the gate fails)."""

    version: str
    metrics: HoldoutMetrics | None = None
    error: str | None = None


def git_revision(settings: Settings, start: Path | None = None) -> str:
    """The source revision: :attr:`Settings.git_revision` (``MEDML_GIT_REVISION``, set in
    images) if set, else ``git rev-parse HEAD``."""
    if settings.git_revision:
        return settings.git_revision
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


def gate_outcome(
    metrics: HoldoutMetrics, recipe: Recipe, champion: ChampionScore | None,
    evaluation: EvaluationFacts | None = None,
) -> GateOutcome:  # fmt: skip
    """The recipe's gate on the candidate, against the champion when there is one (and the
    baseline and the binary operating point's rates, when the gate asks for them)."""
    point = evaluation.operating_point if evaluation else None
    gate = check_gate(metrics, recipe.registry.gate, champion.metrics if champion else None,
                      evaluation.baseline if evaluation else None,
                      dataclasses.asdict(point) if point else None)  # fmt: skip
    if champion is not None and champion.error:
        return GateOutcome(False, [*gate.reasons, champion.error], gate.notes)
    return gate


def version_tags(
    recipe: Recipe, metrics: HoldoutMetrics, gate: GateOutcome, *, folds: int,
    champion: ChampionScore | None, revision: str, extra: dict[str, str],
) -> dict[str, str]:  # fmt: skip
    """The tags a registered version carries (lineage, gate, every registered scalar metric's
    holdout value)."""
    params_json = json.dumps(recipe.model_dump(mode="json"), sort_keys=True)
    params = params_json if len(params_json) <= MAX_TAG_CHARS else "(see run params)"
    scores = scalar_metrics(metrics)
    return {
        **extra,
        VersionTags.RECIPE: recipe.name,
        VersionTags.GIT_REVISION: revision,
        VersionTags.PARAMS_HASH: recipe.params_hash(),
        VersionTags.PARAMS: params,
        VersionTags.BALANCE: recipe.train.balance,
        VersionTags.FOLDS: str(folds),
        VersionTags.GATE: "passed" if gate.passed else "failed",
        VersionTags.GATE_REASONS: "; ".join(gate.reasons)[:MAX_TAG_CHARS],
        VersionTags.GATE_NOTES: "; ".join(gate.notes)[:MAX_TAG_CHARS],
        VersionTags.COMPARED_WITH_CHAMPION: champion.version if champion else "none",
        **{VersionTags.metric(name): f"{value:.4f}" for name, value in scores.items()},
    }


def save_ensemble(model_paths: Sequence[Path], path: Path, temperature: float = 1.0) -> Path:
    """Load the fold models, build their (calibrated) averaging ensemble, save it to ``path``."""
    import keras

    from medml.models import build_ensemble

    members = [keras.models.load_model(p, compile=False) for p in model_paths]
    ensemble = build_ensemble(members, temperature=temperature)
    with atomic_path(path) as tmp:
        ensemble.save(tmp)
    return path


def log_ensemble(
    tracking: Tracking, parent_run_id: str, ensemble_path: Path, recipe: Recipe,
    card_paths: Sequence[Path], champion: ChampionScore | None, digest: str,
    calibration: ServingCalibration | None = None,
) -> str:  # fmt: skip
    """Log the servable model (ensemble + preprocessing, :mod:`medml.serving`), registering a
    new version, with the model card and the champion's scores, to the pipeline run; returns
    the new version."""
    import mlflow

    from medml.serving import log_classifier

    # MLflow announces the new version by printing to stderr ("Successfully registered model",
    # "Created version"), which an Airflow task log labels ERROR: to stdout, it is information.
    with tracking.run(run_id=parent_run_id), contextlib.redirect_stderr(sys.stdout):
        info = log_classifier(
            ensemble_path, recipe.data.classes, recipe.image.model_dump(mode="json"),
            name=ARTIFACTS.model, registered_model_name=recipe.registry.model_name,
            tags={VersionTags.MODELS_DIGEST: digest},
            operating_point=calibration.operating_point if calibration else None,
            prediction_sets=calibration.prediction_sets if calibration else None,
        )  # fmt: skip
        for path in card_paths:
            mlflow.log_artifact(str(path), artifact_path=ARTIFACTS.model_card)
        if champion is not None and champion.metrics is not None:
            mlflow.log_dict(champion.metrics.to_dict(), ARTIFACTS.champion_metrics)
    return str(info.registered_model_version)


def register_ensemble(
    model_paths: Sequence[Path], metrics: HoldoutMetrics, out_dir: Path, recipe: Recipe, *,
    tracking: Tracking, parent_run_id: str, tags: dict[str, str],
    champion: ChampionScore | None = None, card_facts: dict[str, Any] | None = None,
    calibration: ServingCalibration | None = None, revision: str | None = None,
    registrar: Identity | None = None, challenger: ChampionScore | None = None,
) -> Registration:  # fmt: skip
    """Build the fold ensemble, log it to the pipeline run and register one model version.

    The version gets alias ``recipe.registry.alias`` (``challenger``) only if it passes the gate;
    otherwise it is tagged ``gate=failed`` with the reasons and no alias moves. A model card
    (Markdown and HTML) is logged with the run.

    Registration is idempotent per pipeline run: a retry finds the version this run created
    (by its run id) and completes its tags and alias instead of creating another. The tag
    ``medml.complete=true`` is written last; readers (review, promote) require it.

    Args:
        model_paths: the fold models (``.keras``).
        metrics: the ensemble's holdout metrics.
        out_dir: the registration folder (see :class:`~medml.layout.RegistryFiles`).
        recipe: the run's recipe (model name, alias, gate).
        tracking: the MLflow store.
        parent_run_id: the pipeline run the model is logged to.
        tags: extra version tags (data hash, logical date, ...).
        champion: the current champion scored on the same holdout, or ``None`` if there is none.
        card_facts: ``split_report``, ``validation_report`` and ``evaluation`` (calibration,
            out-of-fold metrics, operating point) for the model card.
        calibration: the temperature (inside the ensemble) and operating point (returned by
            the served model) that evaluation fitted out-of-fold.
        revision: the source revision recorded on the version (default:
            :func:`git_revision` of the environment's settings).
        registrar: who registers it (recorded in the audit trail; with the policy's
            ``registrar_may_approve`` off they cannot approve its promotion).
        challenger: the current challenger (when it is not the champion) scored on the same
            holdout: a version that passes its gate takes the alias only if it is not worse
            than that challenger by more than the gate's ``non_inferiority`` margins.
    """
    from medml.model_card import render_markdown, write_model_card

    evaluation = (card_facts or {}).get("evaluation")
    gate = gate_outcome(metrics, recipe, champion, evaluation)
    name = recipe.registry.model_name
    revision = revision or git_revision(Settings.from_env())
    card = _card_facts(recipe, metrics, gate, revision, tags, card_facts or {})
    tags = version_tags(recipe, metrics, gate, folds=len(model_paths), champion=champion,
                        revision=revision, extra=tags)  # fmt: skip
    alias = recipe.registry.alias if gate.passed else None
    kept = _kept_challenger(metrics, recipe, challenger) if alias else ""
    if kept:  # the alias stays on the better challenger; the version is still registered
        alias = None
        tags = {**tags, VersionTags.KEPT_CHALLENGER: kept[:MAX_TAG_CHARS]}
    digest = models_digest([Path(p).parent for p in model_paths])
    existing = _adoptable(version_of_run(tracking, name, parent_run_id), digest, name, tags)
    if existing is not None and existing.complete:  # a re-run of a finished run: nothing moves
        return _already_registered(existing, recipe, Path(out_dir))
    version = existing.version if existing is not None else None
    with publish_dir(Path(out_dir)) as staging:
        files = RegistryFiles(staging)
        calibration = calibration or ServingCalibration()
        ensemble = save_ensemble(model_paths, files.ensemble, calibration.temperature)
        card_paths = write_model_card(card, files)
        if version is None:  # else a retry: the version exists, only the local copy is rebuilt
            version = log_ensemble(tracking, parent_run_id, ensemble, recipe, card_paths, champion,
                                   digest, calibration)  # fmt: skip
        failpoint("register:version-created")
        describe(tracking, recipe, version, render_markdown(card))
        complete_version(tracking, name, version, tags, alias, run_id=parent_run_id,
                         registrar=registrar or cli_identity(Settings.from_env(), tracking.uri),
                         gate=gate, gate_settings=recipe.registry.gate)  # fmt: skip
        registration = Registration(name, version, alias, gate, version_uri(name, version),
                                    kept_challenger=kept)  # fmt: skip
        write_json(files.registration, registration.as_dict())
    return registration


def _kept_challenger(metrics: HoldoutMetrics, recipe: Recipe,
                     challenger: ChampionScore | None) -> str:  # fmt: skip
    """Why the current challenger keeps the alias (empty: this version may take it)."""
    if challenger is None or challenger.metrics is None:
        return ""  # none, or one that cannot be scored here: the newer passing version wins
    reasons = inferior_reasons(metrics, challenger.metrics, recipe.registry.gate,
                               f"challenger v{challenger.version}")  # fmt: skip
    if not reasons:
        return ""
    return (
        f"{recipe.registry.alias} stays on v{challenger.version}: this version passed its "
        "gate but is worse on the same holdout (" + "; ".join(reasons) + ")"
    )


def _card_facts(
    recipe: Recipe, metrics: HoldoutMetrics, gate: GateOutcome, revision: str,
    tags: dict[str, str], reports: dict[str, Any],
) -> Any:  # fmt: skip
    """What the model card states about this version."""
    from medml.model_card import CardFacts

    return CardFacts(
        recipe=recipe, metrics=metrics, model_name=recipe.registry.model_name,
        split_report=reports.get("split_report", {}),
        validation_report=reports.get("validation_report", {}),
        logical_date=tags.get(VersionTags.LOGICAL_DATE, ""),
        data_hash=tags.get(VersionTags.DATA_HASH, ""),
        git_revision=revision, gate_passed=gate.passed, gate_reasons=gate.reasons,
        evaluation=reports.get("evaluation"),
    )  # fmt: skip


def describe(tracking: Tracking, recipe: Recipe, version: str, card: str) -> None:
    """The model card as the version's description; the model's own description if it has none
    (what the MLflow UI shows on the model and version pages)."""
    client = tracking.activate()
    name = recipe.registry.model_name
    if len(card) > MAX_TAG_CHARS:  # MLflow keeps 5,000 characters of a description
        card = card[: MAX_TAG_CHARS - 80] + "\n\n… (full card: artifact model_card/model_card.md)"
    if client.get_model_version(name, version).description != card:
        client.update_model_version(name, version, description=card)
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=(
            f"{recipe.description or recipe.name}. Fold ensemble with medml's preprocessing "
            "inside (raw images in, class probabilities out); trained, gated and registered by "
            "medml. Each version's description is its model card."
        ))  # fmt: skip


@dataclass(frozen=True)
class RunVersion:
    """The model version a pipeline run registered: its number, the digest of the fold models
    it was built from, whether its registration finished, and its tags and aliases."""

    version: str
    models_digest: str | None
    complete: bool
    tags: dict[str, str]
    aliases: list[str]


def version_of_run(tracking: Tracking, name: str, run_id: str) -> RunVersion | None:
    """The version of ``name`` that pipeline run ``run_id`` registered, if any (a run
    registers at most one: the first, when older releases left more)."""
    from mlflow.exceptions import MlflowException

    client = tracking.activate()
    try:
        found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except MlflowException:
        return None  # no such registered model yet
    if not found:
        return None
    first = min(found, key=lambda v: int(v.version))
    first = client.get_model_version(name, str(first.version))  # a search omits aliases
    model_id = first.model_id or str(first.source).removeprefix("models:/")
    try:
        digest = client.get_logged_model(model_id).tags.get(VersionTags.MODELS_DIGEST)
    except MlflowException:
        digest = None
    tags = dict(first.tags or {})
    return RunVersion(str(first.version), digest, tags.get(VersionTags.COMPLETE) == "true", tags,
                      list(first.aliases or []))  # fmt: skip


def _adoptable(
    existing: RunVersion | None, digest: str, name: str, tags: dict[str, str]
) -> RunVersion | None:
    """The run's version: adopted by a retry or resume when it was built from these fold
    models; a finished one is kept as it is even when the folds were trained again since (a
    re-run of a finished run changes nothing: a new version needs a new run).

    Raises:
        RunError: the run's unfinished version was built from other fold models; one pipeline
            run registers one version, ever.
    """
    if existing is None or existing.models_digest == digest or existing.complete:
        return existing
    raise RunError(
        f"pipeline run {tags.get(VersionTags.RUN_KEY, '?')} already registered {name} "
        f"v{existing.version} from other fold models (its folds were trained again since) and "
        "did not finish it; a pipeline run registers one version: start a new run"
    )


def _already_registered(existing: RunVersion, recipe: Recipe, out_dir: Path) -> Registration:
    """A finished run's registration, unchanged: no tag written, no alias moved."""
    name = recipe.registry.model_name
    reasons = existing.tags.get(VersionTags.GATE_REASONS, "")
    gate = GateOutcome(existing.tags.get(VersionTags.GATE) == "passed",
                       [r for r in reasons.split("; ") if r])  # fmt: skip
    alias = recipe.registry.alias if recipe.registry.alias in existing.aliases else None
    uri = version_uri(name, existing.version)
    registration = Registration(name, existing.version, alias, gate, uri, already_registered=True)
    files = RegistryFiles(out_dir)
    if (out_dir / COMPLETE_MARKER).is_file():
        recorded = json.loads(files.registration.read_text())
        if recorded.get("version") == existing.version:
            return registration
    with publish_dir(out_dir) as staging:  # the local copy was lost: the record only
        write_json(RegistryFiles(staging).registration, registration.as_dict())
    return registration


def models_digest(fold_dirs: Sequence[Path]) -> str:
    """One digest of the fold models, from their folders' completion markers."""
    import hashlib

    digests = [json.loads((Path(d) / COMPLETE_MARKER).read_text())["digest"] for d in fold_dirs]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def complete_version(
    tracking: Tracking, name: str, version: str, tags: dict[str, str], alias: str | None, *,
    run_id: str, registrar: Identity, gate: GateOutcome, gate_settings: GateConfig,
    settings: Settings | None = None,
) -> None:  # fmt: skip
    """Write the tags that are missing or differ; then, under the audit trail's lock, record
    the registration (registrar and the digest of the gate evidence, once) and move the alias;
    then mark the version complete."""
    from medml import audit
    from medml.promotion import record_registration

    client = tracking.activate()
    current = client.get_model_version(name, version).tags
    for key, value in tags.items():
        if current.get(key) != value:
            client.set_model_version_tag(name, version, key, value)
    with audit.transaction(tracking, name, settings=settings) as trail:
        record_registration(trail, client, name, version, run_id=run_id, registrar=registrar,
                            gate=gate, gate_settings=gate_settings)  # fmt: skip
        if alias is not None:
            client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, VersionTags.COMPLETE, "true")


def champion_on_holdout(
    tracking: Tracking, model_name: str, files: pd.DataFrame, y_true: Any,
    classes: Sequence[str], min_class_support: int = 20, alias: str = CHAMPION,
) -> ChampionScore | None:  # fmt: skip
    """Score the version ``alias`` (default: the current ``champion``) points at on this run's
    holdout files (the served model's input: ``path`` and ``frame``), or ``None`` if there is
    none.

    The champion reads the raw files through its own preprocessing, so a champion trained with
    other image settings is still comparable. When it cannot be scored (other classes, an old
    model without preprocessing) the result carries the error instead: the gate then fails,
    since non-inferiority could not be shown.
    """
    from mlflow.exceptions import MlflowException

    from medml.evaluate import clinical_metrics
    from medml.serving import load_classifier, probability_column

    client = tracking.activate()
    try:
        version = str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None
    try:
        model = load_classifier(version_uri(model_name, version))
        if list(model.classes) != list(classes):
            raise ValueError(f"it predicts {model.classes}, this run's classes are {list(classes)}")
        proba = model.predict(None, files)
        proba = proba[[probability_column(c) for c in classes]].to_numpy(dtype=float)
    # An old or foreign champion (no preprocessing, other classes, unreadable artifacts) is
    # "not comparable"; a TypeError or AttributeError is a medml bug and keeps its traceback.
    except (MlflowException, OSError, ValueError, KeyError, ImportError) as err:
        return ChampionScore(
            version, error=f"champion v{version} could not be scored on this holdout: {err}"
        )
    scores = clinical_metrics(y_true, proba, list(classes), bootstrap=0,
                              min_class_support=min_class_support)  # fmt: skip
    return ChampionScore(version, scores)
