"""Register the fold ensemble as one MLflow model version, gated, tagged and aliased."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medml.calibration import ServingCalibration
from medml.config import GateConfig, Recipe, parse_overrides
from medml.errors import RefusedError
from medml.faults import failpoint
from medml.io import COMPLETE_MARKER, atomic_path, publish_dir, write_json
from medml.layout import RegistryFiles
from medml.metrics import GateOutcome, HoldoutMetrics, check_gate
from medml.tracking import Tracking, alias_uri, version_uri

MAX_TAG_CHARS = 5000
CHAMPION = "champion"
COMPLETE_TAG = "medml.complete"
MODELS_DIGEST_TAG = "medml.models_digest"


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


@dataclass(frozen=True)
class ChampionScore:
    """The current champion scored on this run's holdout (``metrics``), or why it could not
    be (``error``: non-inferiority then cannot be shown and the gate fails)."""

    version: str
    metrics: HoldoutMetrics | None = None
    error: str | None = None


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


def gate_outcome(
    metrics: HoldoutMetrics, recipe: Recipe, champion: ChampionScore | None
) -> GateOutcome:
    """The recipe's gate on the candidate, against the champion when there is one."""
    gate = check_gate(metrics, recipe.registry.gate, champion.metrics if champion else None)
    if champion is not None and champion.error:
        return GateOutcome(False, [*gate.reasons, champion.error])
    return gate


def version_tags(
    recipe: Recipe, metrics: HoldoutMetrics, gate: GateOutcome, *, folds: int,
    champion: ChampionScore | None, revision: str, extra: dict[str, str],
) -> dict[str, str]:  # fmt: skip
    """The tags a registered version carries (lineage, gate, headline scores)."""
    params_json = json.dumps(recipe.model_dump(mode="json"), sort_keys=True)
    return {
        **extra,
        "recipe": recipe.name,
        "git_revision": revision,
        "params_hash": recipe.params_hash(),
        "params": params_json if len(params_json) <= MAX_TAG_CHARS else "(see run params)",
        "balance": recipe.train.balance,
        "folds": str(folds),
        "gate": "passed" if gate.passed else "failed",
        "gate_reasons": "; ".join(gate.reasons)[:MAX_TAG_CHARS],
        "compared_with_champion": champion.version if champion else "none",
        "balanced_accuracy": f"{metrics.value('balanced_accuracy'):.4f}",
        "macro_f1": f"{metrics.value('macro_f1'):.4f}",
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
    operating_point: dict[str, Any] | None = None,
) -> str:  # fmt: skip
    """Log the servable model (ensemble + preprocessing, :mod:`medml.serving`), registering a
    new version, with the model card and the champion's scores, to the pipeline run; returns
    the new version."""
    import mlflow

    from medml.serving import log_classifier

    with tracking.run(run_id=parent_run_id):
        info = log_classifier(
            ensemble_path, recipe.data.classes, recipe.image.model_dump(mode="json"),
            name="model", registered_model_name=recipe.registry.model_name,
            tags={MODELS_DIGEST_TAG: digest}, operating_point=operating_point,
        )  # fmt: skip
        for path in card_paths:
            mlflow.log_artifact(str(path), artifact_path="model_card")
        if champion is not None and champion.metrics is not None:
            mlflow.log_dict(champion.metrics.to_dict(), "evaluation/champion_on_this_holdout.json")
    return str(info.registered_model_version)


def register_ensemble(
    model_paths: Sequence[Path],
    metrics: HoldoutMetrics,
    out_dir: Path,
    recipe: Recipe,
    *,
    tracking: Tracking,
    parent_run_id: str,
    tags: dict[str, str],
    champion: ChampionScore | None = None,
    card_facts: dict[str, Any] | None = None,
    calibration: ServingCalibration | None = None,
) -> Registration:
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
    """
    from medml.model_card import CardFacts, render_markdown, write_model_card

    gate = gate_outcome(metrics, recipe, champion)
    name, revision = recipe.registry.model_name, git_revision()
    card = CardFacts(
        recipe=recipe, metrics=metrics, model_name=name,
        split_report=(card_facts or {}).get("split_report", {}),
        validation_report=(card_facts or {}).get("validation_report", {}),
        logical_date=tags.get("logical_date", ""), data_hash=tags.get("data_hash", ""),
        git_revision=revision, gate_passed=gate.passed, gate_reasons=gate.reasons,
        evaluation=(card_facts or {}).get("evaluation", {}),
    )  # fmt: skip
    tags = version_tags(recipe, metrics, gate, folds=len(model_paths), champion=champion,
                        revision=revision, extra=tags)  # fmt: skip
    alias = recipe.registry.alias if gate.passed else None
    with publish_dir(Path(out_dir)) as staging:
        files = RegistryFiles(staging)
        digest = models_digest([Path(p).parent for p in model_paths])
        version = version_of_run(tracking, name, parent_run_id, digest)
        calibration = calibration or ServingCalibration()
        ensemble = save_ensemble(model_paths, files.ensemble, calibration.temperature)
        card_paths = write_model_card(card, files)
        if version is None:  # else a retry: the version exists, only the local copy is rebuilt
            version = log_ensemble(tracking, parent_run_id, ensemble, recipe, card_paths, champion,
                                   digest, calibration.operating_point)  # fmt: skip
        failpoint("register:version-created")
        describe(tracking, recipe, version, render_markdown(card))
        complete_version(tracking, name, version, tags, alias)
        registration = Registration(name, version, alias, gate, version_uri(name, version))
        write_json(files.registration, registration.as_dict())
    return registration


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


def version_of_run(tracking: Tracking, name: str, run_id: str, models_digest: str) -> str | None:
    """The version of ``name`` that pipeline run ``run_id`` registered from exactly these fold
    models (their digest is a tag of the logged model, set when the version is created), if
    any: a retry adopts it; a re-run that retrained the folds registers a new version."""
    from mlflow.exceptions import MlflowException

    client = tracking.activate()
    try:
        found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except MlflowException:
        return None  # no such registered model yet
    for version in sorted(found, key=lambda v: int(v.version), reverse=True):
        model_id = version.model_id or str(version.source).removeprefix("models:/")
        try:
            tags = client.get_logged_model(model_id).tags
        except MlflowException:
            continue
        if tags.get(MODELS_DIGEST_TAG) == models_digest:
            return str(version.version)
    return None


def models_digest(fold_dirs: Sequence[Path]) -> str:
    """One digest of the fold models, from their folders' completion markers."""
    import hashlib

    digests = [json.loads((Path(d) / COMPLETE_MARKER).read_text())["digest"] for d in fold_dirs]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def complete_version(
    tracking: Tracking, name: str, version: str, tags: dict[str, str], alias: str | None
) -> None:
    """Write the tags that are missing or differ, move the alias, then mark it complete."""
    client = tracking.activate()
    current = client.get_model_version(name, version).tags
    for key, value in tags.items():
        if current.get(key) != value:
            client.set_model_version_tag(name, version, key, value)
    if alias is not None:
        client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, COMPLETE_TAG, "true")


def require_complete_version(model_version: Any) -> None:
    """Refuse a version whose registration was interrupted (no ``medml.complete`` tag).

    Raises:
        PromotionError: the version is incomplete.
    """
    if model_version.tags.get(COMPLETE_TAG) != "true":
        raise PromotionError(
            f"{model_version.name} v{model_version.version} is incomplete (its registration was "
            "interrupted before it was tagged); re-run the `register` step of its run"
        )


def champion_on_holdout(
    tracking: Tracking, model_name: str, files: pd.DataFrame, y_true: Any,
    classes: Sequence[str],
) -> ChampionScore | None:  # fmt: skip
    """Score the current ``champion`` on this run's holdout files (the served model's input:
    ``path`` and ``frame``), or ``None`` if there is none.

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
        version = str(client.get_model_version_by_alias(model_name, CHAMPION).version)
    except MlflowException:
        return None
    try:
        model = load_classifier(alias_uri(model_name, CHAMPION))
        if list(model.classes) != list(classes):
            raise ValueError(f"it predicts {model.classes}, this run's classes are {list(classes)}")
        proba = model.predict(None, files)
        proba = proba[[probability_column(c) for c in classes]].to_numpy(dtype=float)
    except Exception as err:  # any failure means "not comparable"
        return ChampionScore(
            version, error=f"champion v{version} could not be scored on this holdout: {err}"
        )
    return ChampionScore(version, clinical_metrics(y_true, proba, list(classes), bootstrap=0))


PREVIOUS_CHAMPION = "previous-champion"
OVERRIDERS_ENV = "MEDML_GATE_OVERRIDERS"
FOUR_EYES_ENV = "MEDML_FOUR_EYES"


class PromotionError(RefusedError):
    """A promotion or rollback was refused; the message says why and what to do."""


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version an alias points to, or ``None`` when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def audit_log(tracking: Tracking, name: str) -> list[dict[str, Any]]:
    """The promotion/rollback/decision events of a registered model, oldest first."""
    from medml import audit

    return audit.events(tracking, name)


def recorded_gate(tracking: Tracking, model_version: Any) -> GateOutcome:
    """The version's gate, recomputed from what its run logged and MLflow never lets a client
    change: the holdout metrics artifact, the champion's scores on the same holdout, and the
    recipe's gate settings as run params — never from the (editable) ``gate`` tag.

    Raises:
        PromotionError: the run lacks its metrics or gate settings.
    """
    import tempfile

    from mlflow.exceptions import MlflowException

    client = tracking.activate()
    run_id = model_version.run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            metrics = HoldoutMetrics.read(Path(client.download_artifacts(
                run_id, "evaluation/metrics.json", tmp)))  # fmt: skip
        except (MlflowException, OSError) as err:
            raise PromotionError(
                f"{model_version.name} v{model_version.version}: its run {run_id} has no "
                f"evaluation/metrics.json ({err}); the gate cannot be checked"
            ) from None
        try:
            champion: HoldoutMetrics | None = HoldoutMetrics.read(Path(client.download_artifacts(
                run_id, "evaluation/champion_on_this_holdout.json", tmp)))  # fmt: skip
        except (MlflowException, OSError):
            champion = None
    gate = gate_from_params(client.get_run(run_id).data.params)
    return check_gate(metrics, gate, champion)


def gate_from_params(params: dict[str, str]) -> GateConfig:
    """The ``registry.gate`` settings from a pipeline run's (immutable) flat params."""
    prefix = "registry.gate."
    pairs = [f"{key.removeprefix(prefix)}={'null' if value == 'None' else value}"
             for key, value in params.items() if key.startswith(prefix)]  # fmt: skip
    if not pairs:
        raise PromotionError("the version's run has no registry.gate params to check its gate")
    return GateConfig.model_validate(parse_overrides(pairs))


def _identity_checks(reviewer: str, reason: str, requested_by: str | None) -> None:
    if not reviewer.strip():
        raise PromotionError("no authenticated reviewer: the identity comes from the OS user "
                             "(CLI) or the Airflow user who answered the approval")  # fmt: skip
    if not reason.strip():
        raise PromotionError("a promotion needs --reason (recorded in the audit trail)")
    four_eyes = os.environ.get(FOUR_EYES_ENV, "true").lower() not in ("0", "false", "no")
    if four_eyes and requested_by and requested_by == reviewer:
        raise PromotionError(
            f"{reviewer} requested this promotion and cannot also approve it (four-eyes rule; "
            f"another reviewer must approve, or the deployment sets {FOUR_EYES_ENV}=false)"
        )


def _override_checks(name: str, version: str, gate: GateOutcome, reviewer: str,
                     override_gate: str | None) -> None:  # fmt: skip
    if gate.passed:
        return
    why = "; ".join(gate.reasons)
    if not (override_gate and override_gate.strip()):
        raise PromotionError(
            f"{name} v{version} did not pass its gate (recomputed from its logged metrics: "
            f"{why}); pass --override-gate REASON to promote it anyway (allowed roles only)"
        )
    allowed = {u.strip() for u in os.environ.get(OVERRIDERS_ENV, "").split(",") if u.strip()}
    if reviewer not in allowed:
        raise PromotionError(
            f"{reviewer} may not override a failed gate ({why}); the deployment lists who "
            f"may in {OVERRIDERS_ENV} (now: {', '.join(sorted(allowed)) or 'nobody'})"
        )


def promote(
    tracking: Tracking, name: str, version: str | int, *, reviewer: str, reason: str,
    override_gate: str | None = None, requested_by: str | None = None, identity: str = "os-user",
) -> dict[str, Any]:  # fmt: skip
    """Move alias ``champion`` to ``version``, keep the old champion as ``previous-champion``
    and clear ``challenger`` if it pointed at this version (a review never compares a version
    with itself).

    Args:
        tracking: the MLflow store.
        name: the registered model.
        version: the version to promote.
        reviewer: the authenticated identity who decides (OS user, or the Airflow approver).
        reason: why (required; audited).
        override_gate: why to promote a version whose gate failed; only users listed in
            ``$MEDML_GATE_OVERRIDERS`` may.
        requested_by: who asked for the promotion (the Airflow user who triggered it): with
            the four-eyes rule (``$MEDML_FOUR_EYES``, on by default) they cannot approve it.
        identity: where ``reviewer`` comes from (``os-user`` or ``airflow``), for the audit.

    Raises:
        PromotionError: unknown or incomplete version, no identity or reason, requester =
            approver, already champion, or a failed gate without an allowed override.
    """
    from mlflow.exceptions import MlflowException

    from medml import audit

    _identity_checks(reviewer, reason, requested_by)
    client = tracking.activate()
    version = str(version)
    try:
        model_version = client.get_model_version(name, version)
    except MlflowException:
        raise PromotionError(f"model {name!r} has no version {version}") from None
    require_complete_version(model_version)
    gate = recorded_gate(tracking, model_version)
    _override_checks(name, version, gate, reviewer, override_gate)
    previous = alias_version(client, name, CHAMPION)
    if previous == version:
        raise PromotionError(f"{name} v{version} is already the champion")
    event = {"event": "promote", "version": version, "reviewer": reviewer, "identity": identity,
             "requested_by": requested_by or reviewer, "reason": reason, "at": _now(),
             "previous_champion": previous or "none", "gate_reasons": gate.reasons,
             "gate": "passed" if gate.passed else "failed",
             "gate_override": override_gate or ""}  # fmt: skip
    recorded = audit.append(tracking, name, event)  # first: a refused write moves nothing
    client.set_registered_model_alias(name, CHAMPION, version)
    if previous is not None:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, previous)
    for alias in set(model_version.aliases or []) - {CHAMPION, PREVIOUS_CHAMPION}:
        client.delete_registered_model_alias(name, alias)  # challenger: now the champion
    for key in ("reviewer", "reason", "at", "previous_champion", "gate_override"):
        client.set_model_version_tag(name, version, f"audit.promoted.{key}", event[key])
    return recorded


def rollback(tracking: Tracking, name: str, *, reviewer: str, reason: str,
             identity: str = "os-user") -> dict[str, Any]:  # fmt: skip
    """Restore the previous champion; the demoted version becomes ``previous-champion``.

    Raises:
        PromotionError: no identity or reason, or no champion / previous champion.
    """
    from medml import audit

    _identity_checks(reviewer, reason, None)
    client = tracking.activate()
    current = alias_version(client, name, CHAMPION)
    previous = alias_version(client, name, PREVIOUS_CHAMPION)
    if current is None or previous is None:
        raise PromotionError(
            f"{name} has no {'champion' if current is None else 'previous champion'}"
            " to roll back from/to"
        )
    event = {"event": "rollback", "version": previous, "demoted": current, "reviewer": reviewer,
             "identity": identity, "reason": reason, "at": _now()}  # fmt: skip
    recorded = audit.append(tracking, name, event)
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_registered_model_alias(name, PREVIOUS_CHAMPION, current)
    for key in ("reviewer", "reason", "at"):
        client.set_model_version_tag(name, previous, f"audit.restored.{key}", event[key])
        client.set_model_version_tag(name, current, f"audit.rolled_back.{key}", event[key])
    return recorded


def record_decision(
    tracking: Tracking, name: str, version: str | int, *, reviewer: str, decision: str, reason: str
) -> dict[str, Any]:
    """Record a reviewer's decision (e.g. a rejection) without moving any alias."""
    from medml import audit

    client = tracking.activate()
    event = {"event": decision, "version": str(version), "reviewer": reviewer, "reason": reason,
             "at": _now()}  # fmt: skip
    for key in ("reviewer", "reason", "at"):
        client.set_model_version_tag(name, str(version), f"audit.{decision}.{key}", event[key])
    return audit.append(tracking, name, event)
