"""Promotion governance: who may move ``champion`` to which version, and the audit of it.

A version is promoted only when it is complete, its gate passes when recomputed from what its
run logged (never from an editable tag) or an allowed reviewer overrides it, the reviewer is
identified and gives a reason, and (four-eyes) the requester does not approve their own
request. Every promotion, rollback and decision is appended to the audit trail
(:mod:`medml.audit`) before any alias moves. Registration itself is :mod:`medml.registry`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from medml.config import GateConfig, parse_overrides
from medml.errors import OperationalFault, RefusedError
from medml.identity import LOCAL_ADMIN, Identity
from medml.io import read_json
from medml.layout import ARTIFACTS
from medml.metrics import GateOutcome, HoldoutMetrics, check_gate
from medml.policy import Policy
from medml.settings import Settings
from medml.tracking import Tracking
from medml.version_tags import CHAMPION, PREVIOUS_CHAMPION, VersionTags


class PromotionError(RefusedError):
    """A promotion or rollback was refused; the message says why and what to do."""


class EvidenceChanged(PromotionError):
    """A version's gate evidence is not what its registration pinned in the audit trail."""


class UnreviewedChampion(PromotionError):
    """``champion`` points at a version no valid promotion event in the audit trail backs
    (moved with the plain MLflow client, or the trail is broken): refused at use time."""


def require_complete_version(model_version: Any) -> None:
    """Refuse a version whose registration was interrupted (no ``medml.complete`` tag).

    Raises:
        PromotionError: the version is incomplete.
    """
    if model_version.tags.get(VersionTags.COMPLETE) != "true":
        raise PromotionError(
            f"{model_version.name} v{model_version.version} is incomplete (its registration was "
            "interrupted before it was tagged); re-run the `register` step of its run"
        )


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


def champion_problem(tracking: Tracking, name: str) -> tuple[str | None, str | None]:
    """The champion version and why the audit trail does not back it (``None``: it does).

    The newest ``promote``/``rollback`` event of ``name`` must name the version ``champion``
    points at (a rollback names the version it restored), and that version's gate evidence
    must be what its registration pinned. No champion: ``(None, None)``.
    """
    client = tracking.activate()
    champion = alias_version(client, name, CHAMPION)
    if champion is None:
        return None, None
    events = audit_log(tracking, name)
    moves = [e for e in events if e.get("event") in ("promote", "rollback")]
    if not moves:
        recorded = "no promotion event at all"
    elif str(moves[-1].get("version")) != champion:
        newest = moves[-1]
        recorded = (f"its newest promotion event (#{newest.get('seq')}, {newest.get('event')}) "
                    f"made v{newest.get('version')} champion")  # fmt: skip
    else:
        return champion, _evidence_problem(tracking, client.get_model_version(name, champion),
                                           registration_event(events, champion))  # fmt: skip
    return champion, (
        f"{name}@{CHAMPION} points at v{champion}, but the audit trail has {recorded}: the alias "
        f"was moved outside the reviewed path; promote v{champion} with `medml promote {name} "
        f"{champion} --reason …` (or roll back) before it is used"
    )


def _evidence_problem(tracking: Tracking, model_version: Any,
                      registration: dict[str, Any] | None) -> str | None:  # fmt: skip
    """Why the champion's gate evidence is not what its registration pinned (a ``metrics.json``
    logged onto its finished run after registration), or ``None``. A version registered before
    registration events existed has nothing pinned to compare with."""
    if registration is None:
        return None
    try:
        recorded_gate(tracking, model_version, registration)
    except EvidenceChanged as err:
        return f"{err}; the champion was promoted on evidence that is no longer there"
    except PromotionError:
        return None  # unreadable evidence is promotion's concern, not a forgery
    return None


def trail_champions(events: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """``(champion, previous champion)`` as the audit trail records them — from its newest
    promotion or rollback, never from the (movable) aliases."""
    moves = [e for e in events if e.get("event") in ("promote", "rollback")]
    if not moves:
        return None, None
    newest = moves[-1]
    previous = newest.get("previous_champion") if newest["event"] == "promote" else \
        newest.get("demoted")  # fmt: skip
    return str(newest.get("version")), (None if previous in (None, "none") else str(previous))


def champion_backed_by_audit(
    tracking: Tracking, name: str, warnings: list[str] | None = None
) -> str:
    """The version ``name@champion`` points at, once the audit trail backs it.

    The trail's hash chain must verify (:func:`medml.audit.verify`) and its newest
    promotion/rollback event must name that version (:func:`champion_problem`). What weakens
    that evidence without breaking it (an unkeyed chain: without ``MEDML_AUDIT_KEY`` anyone can
    append a consistent event) is added to ``warnings`` when a list is given.

    Raises:
        UnreviewedChampion: no champion, a broken trail, or an out-of-band alias move.
    """
    from medml import audit

    champion, problem = champion_problem(tracking, name)
    if champion is None:
        raise UnreviewedChampion(f"{name} has no {CHAMPION} alias; promote a version first")
    if problem:
        raise UnreviewedChampion(problem)
    report = audit.verify(tracking, name)
    if not report.intact:
        raise UnreviewedChampion(
            f"{name}@{CHAMPION} (v{champion}) is not backed by an intact audit trail ("
            + "; ".join(report.problems)
            + f"); run `medml audit verify {name}` and repair it"
        )
    if warnings is not None:
        warnings.extend(report.warnings)
    return champion


EVIDENCE = (
    ARTIFACTS.metrics,
    ARTIFACTS.champion_metrics,
    ARTIFACTS.baseline,
    ARTIFACTS.operating_point,
)
"""The artifacts a version's gate is computed from; their SHA-256 is pinned at registration."""

_ALWAYS_PINNED = (ARTIFACTS.metrics, ARTIFACTS.champion_metrics, ARTIFACTS.baseline)
"""What every registration since gate evidence was pinned has pinned when it existed."""


def evidence_digests(client: Any, run_id: str, folder: Path) -> dict[str, str]:
    """Download the gate evidence of ``run_id`` to ``folder / <artifact path>``; the SHA-256 of
    each artifact that exists, by artifact path."""
    import hashlib

    from mlflow.exceptions import MlflowException

    digests = {}
    for artifact in EVIDENCE:
        into = folder / Path(artifact).parent
        into.mkdir(parents=True, exist_ok=True)
        try:
            path = Path(client.download_artifacts(run_id, artifact, str(into)))
        except FileNotFoundError:
            continue
        except (MlflowException, OSError) as err:
            if getattr(err, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                continue  # absent: what a run without that evidence has
            raise OperationalFault(  # a store that did not answer is no evidence either way
                f"could not read {artifact} of run {run_id} from the artifact store "
                f"({type(err).__name__}: {err}); try again"
            ) from None
        # a folder in a file's place is evidence that is not the pinned file
        digests[artifact] = (hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file()
                             else f"not a file ({artifact} is a folder)")  # fmt: skip
    return digests


def registration_event(events: list[dict[str, Any]], version: str) -> dict[str, Any] | None:
    """The ``register`` event of ``version`` (the first; a retry appends none), or ``None``."""
    registered = (e for e in events if e.get("event") == "register")
    return next((e for e in registered if str(e.get("version")) == version), None)


def record_registration(
    trail: Any, client: Any, name: str, version: str, *, run_id: str, registrar: Identity,
    gate: GateOutcome, gate_settings: GateConfig,
) -> dict[str, Any]:  # fmt: skip
    """Append ``version``'s ``register`` event (once): who registered it, the SHA-256 of its
    gate evidence (so promotion can tell a replaced ``metrics.json`` from the one the gate
    saw) and of the served model's files (so use can tell a replaced threshold or fold model
    from the registered ones), the gate settings it was judged by and its outcome with the
    reasons (so neither a param added to the finished run nor a champion score missing from
    the evidence can turn a failed gate into a passed one).

    Args:
        trail: the model's audit trail, locked (:func:`medml.audit.transaction`).
        client: the MLflow client.
        name: the registered model.
        version: the new version.
        run_id: the pipeline run the version was logged from.
        registrar: who registered it.
        gate: its gate outcome at registration.
        gate_settings: the recipe's ``registry.gate``.
    """
    import tempfile

    existing = registration_event(trail.events(), version)
    if existing is not None:
        return existing
    with tempfile.TemporaryDirectory() as tmp:
        evidence = evidence_digests(client, run_id, Path(tmp))
        served = download_model(f"models:/{name}/{version}", Path(tmp) / "model")
        model_digest = model_files_digest(served)
    return trail.append({
        "event": "register", "version": version, "run_id": run_id, "registrar": registrar.name,
        "identity": registrar.source, "evidence": evidence, "model_files": model_digest,
        "at": _now(),
        "gate": "passed" if gate.passed else "failed", "gate_reasons": gate.reasons,
        "gate_settings": gate_settings.model_dump(mode="json"),
    })  # fmt: skip


def reviewed_model_uri(model_uri: str, tracking: Tracking, *,
                       allow_unreviewed: bool = False) -> tuple[str, str]:  # fmt: skip
    """``(uri to load, warning)``: a ``NAME@champion`` reference checked against the audit trail.

    Other references (a version, another alias) are returned as they are.

    Raises:
        UnreviewedChampion: the champion is not backed by a valid promotion event (unless
            ``allow_unreviewed``, which returns the alias's URI and the reason as a warning).
    """
    name, _, alias = model_uri.removeprefix("models:/").partition("@")
    if alias != CHAMPION:
        return model_uri, ""
    weakened: list[str] = []
    try:
        version = champion_backed_by_audit(tracking, name, weakened)
        checked = verified_model(tracking, name, version, weakened)
    except UnreviewedChampion as err:
        if not allow_unreviewed:
            raise
        return model_uri, f"using an unreviewed champion (--allow-unreviewed): {err}"
    return checked, "; ".join(weakened)


def model_files_digest(folder: Path) -> str:
    """One SHA-256 of a downloaded model's files (each file's path, size and SHA-256)."""
    from medml.io import directory_listing, listing_digest

    return listing_digest(directory_listing(folder))


def download_model(model_uri: str, into: Path) -> Path:
    """Download the model at ``model_uri`` (``models:/NAME/VERSION``) into the new folder
    ``into``, readable by every account that serves it, without compiled Python: a
    ``__pycache__`` is derived, never part of what was registered, and a planted ``.pyc``
    would run in place of the model's checked source (Python writes its own when it loads)."""
    import shutil

    import mlflow.artifacts

    into.mkdir(parents=True)
    mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(into))
    for cache in sorted(into.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache, ignore_errors=True)
    into.chmod(0o755)
    return into


_SCRATCH_KEPT_SECONDS = 3600


def verified_model(tracking: Tracking, name: str, version: str, warnings: list[str]) -> str:
    """The URI to load ``name`` v``version`` from: a local copy whose files are byte for byte
    what its registration event pinned (downloaded once, checked, and that copy loaded: the
    model cannot change between the check and the load). A version registered before model
    files were pinned loads from the registry, with a warning.

    Raises:
        UnreviewedChampion: the model's files are not the registered ones (a threshold, the
            preprocessing or a fold model replaced with the plain MLflow client).
    """
    import shutil
    import time
    import uuid

    from medml.io import safe_name

    registration = registration_event(audit_log(tracking, name), version) or {}
    pinned = registration.get("model_files")
    if not pinned:
        warnings.append(f"{name} v{version} was registered before medml pinned the model's "
                        "files: they are loaded unchecked")  # fmt: skip
        return f"models:/{name}/{version}"
    cache = Settings.from_env().home / "cache" / "checked-models"  # one folder per content
    cache.mkdir(parents=True, exist_ok=True)
    for stale in cache.glob(".*"):  # scratch left by a killed check
        if stale.stat().st_mtime < time.time() - _SCRATCH_KEPT_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)
    scratch = cache / f".{safe_name(name)}-v{version}-{uuid.uuid4().hex}"
    staged = download_model(f"models:/{name}/{version}", scratch)
    try:
        if model_files_digest(staged) != pinned:
            raise UnreviewedChampion(
                f"{name}@{CHAMPION} (v{version}): the model's files are not the ones registered "
                f"(audit event #{registration.get('seq')}): a file of the served model (its "
                "preprocessing, threshold or a fold model) was replaced after registration; "
                "investigate, and register and promote a new run"
            )
        checked = cache / pinned
        for derived in sorted(checked.rglob("__pycache__"), reverse=True):
            shutil.rmtree(derived, ignore_errors=True)  # compiled here, never trusted later
        if checked.is_dir() and model_files_digest(checked) != pinned:
            shutil.rmtree(checked, ignore_errors=True)  # altered on this machine: replaced
        if not checked.is_dir():
            with contextlib.suppress(OSError):  # another process placed the same bytes first
                staged.rename(checked)
        if model_files_digest(checked) != pinned:
            raise UnreviewedChampion(f"{checked}: the local copy of {name} v{version} keeps "
                                     "changing under this check; investigate this "
                                     "machine")  # fmt: skip
        return str(checked)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def recorded_gate(
    tracking: Tracking, model_version: Any, registration: dict[str, Any] | None = None
) -> GateOutcome:
    """The version's gate, recomputed from what its run logged and MLflow never lets a client
    change: the holdout metrics artifact, the champion's scores on the same holdout, and the
    recipe's gate settings as run params — never from the (editable) ``gate`` tag.

    With the version's ``registration`` event, the artifacts must be byte for byte the ones
    registration pinned (a ``metrics.json`` logged onto the finished run afterwards is refused),
    the gate settings are the pinned ones (not the run's params, to which a client can add), and
    a gate that failed at registration stays failed.

    Raises:
        PromotionError: the run lacks its metrics or gate settings, or its evidence differs
            from what registration pinned.
    """
    import tempfile

    client = tracking.activate()
    run_id = model_version.run_id
    label = f"{model_version.name} v{model_version.version}"
    with tempfile.TemporaryDirectory() as tmp:
        digests = evidence_digests(client, run_id, Path(tmp))
        pinned = registration.get("evidence", {}) if registration is not None else {}
        if registration is not None:
            # Judged against what registration pinned: an artifact it did not pin counts only
            # where the pinned gate settings read it (a version registered before medml pinned
            # operating_point.json is not "changed" by it; a gate with operating-point bounds is)
            settings_used = registration.get("gate_settings") or {}
            read = {
                *pinned,
                *_ALWAYS_PINNED,
                *([ARTIFACTS.operating_point] if settings_used.get("operating_point") else []),
            }
            digests = {artifact: digest for artifact, digest in digests.items() if artifact in read}
        if registration is not None and digests != pinned:
            changed = sorted(a for a in set(digests) | set(pinned)
                             if digests.get(a) != pinned.get(a))  # fmt: skip
            raise EvidenceChanged(
                f"{label}: its gate evidence ({', '.join(changed)}) is not what registration "
                f"pinned in audit event #{registration.get('seq')}: it was replaced or removed "
                "after the version was registered; investigate, and register a new run"
            )
        if ARTIFACTS.metrics not in digests or not digests[ARTIFACTS.metrics].isalnum():
            raise PromotionError(f"{label}: its run {run_id} has no {ARTIFACTS.metrics}; the "
                                 "gate cannot be checked")  # fmt: skip
        metrics = HoldoutMetrics.read(Path(tmp) / ARTIFACTS.metrics)
        champion = (HoldoutMetrics.read(Path(tmp) / ARTIFACTS.champion_metrics)
                    if ARTIFACTS.champion_metrics in digests else None)  # fmt: skip
        baseline, point = (
            (read_json(Path(tmp) / artifact) if artifact in digests else None)
            for artifact in (ARTIFACTS.baseline, ARTIFACTS.operating_point)
        )
    if registration is not None and "gate_settings" in registration:
        settings = GateConfig.model_validate(registration["gate_settings"])  # pinned
    else:
        settings = gate_from_params(client.get_run(run_id).data.params)
    outcome = check_gate(metrics, settings, champion, baseline, point)
    if registration is not None and registration.get("gate") == "failed" and outcome.passed:
        why = "; ".join(registration.get("gate_reasons") or []) or "no reason recorded"
        reason = f"it failed its gate at registration (event #{registration.get('seq')}: {why})"
        return GateOutcome(False, [reason], outcome.notes)
    return outcome


def gate_shown(tracking: Tracking, model_version: Any,
               events: list[dict[str, Any]]) -> tuple[str, str]:  # fmt: skip
    """``(outcome, reasons)`` of a version's gate for display (the Models view): recomputed
    from its evidence and checked against the digest registration pinned, like promotion
    does — never the editable ``gate`` tag. Outcomes: ``passed``, ``failed``, ``unpinned`` (no
    registration event), ``evidence-changed`` or ``unknown`` (the evidence cannot be read).
    """
    registration = registration_event(events, str(model_version.version))
    if registration is None:
        return "unpinned", "no registration event in the audit trail: the gate cannot be trusted"
    try:
        gate = recorded_gate(tracking, model_version, registration)
    except PromotionError as err:
        return ("evidence-changed" if isinstance(err, EvidenceChanged) else "unknown"), str(err)
    return ("passed" if gate.passed else "failed"), "; ".join(gate.reasons)


def gate_from_params(params: dict[str, str]) -> GateConfig:
    """The ``registry.gate`` settings from a pipeline run's (immutable) flat params."""
    prefix = "registry.gate."
    pairs = [f"{key.removeprefix(prefix)}={'null' if value == 'None' else value}"
             for key, value in params.items() if key.startswith(prefix)]  # fmt: skip
    if not pairs:
        raise PromotionError("the version's run has no registry.gate params to check its gate")
    return GateConfig.model_validate(parse_overrides(pairs))


def _identity_checks(reviewer: str, reason: str, requested_by: str | None,
                     policy: Policy) -> None:  # fmt: skip
    if not reviewer.strip():
        raise PromotionError("no authenticated reviewer: the identity comes from the Airflow "
                             "user who answered the approval, the MLflow server's "
                             "authentication, or local-admin mode (CLI)")  # fmt: skip
    if not reason.strip():
        raise PromotionError("a promotion needs --reason (recorded in the audit trail)")
    if policy.four_eyes and requested_by and requested_by == reviewer:
        raise PromotionError(
            f"{reviewer} requested this promotion and cannot also approve it (four-eyes rule "
            f"of {policy.source}; another reviewer must approve)"
        )


def _require_registration(label: str, registration: dict[str, Any] | None) -> dict[str, Any]:
    if registration is None:
        raise PromotionError(
            f"{label} has no registration event in the audit trail (registered outside medml, "
            "or before medml pinned gate evidence), so its gate evidence cannot be trusted; "
            "register it again from a new pipeline run"
        )
    return registration


def _registrar_check(label: str, registration: dict[str, Any], reviewer: str,
                     policy: Policy) -> None:  # fmt: skip
    if not policy.registrar_may_approve and registration.get("registrar") == reviewer:
        raise PromotionError(
            f"{reviewer} registered {label} (audit event #{registration.get('seq')}) and cannot "
            f"also approve it (four-eyes rule of {policy.source}; another reviewer must approve)"
        )


def _override_checks(label: str, gate: GateOutcome, reviewer: str, override_gate: str | None,
                     policy: Policy) -> None:  # fmt: skip
    if gate.passed:
        return
    why = "; ".join(gate.reasons)
    if not (override_gate and override_gate.strip()):
        raise PromotionError(
            f"{label} did not pass its gate (recomputed from its logged metrics: "
            f"{why}); pass --override-gate REASON to promote it anyway (allowed roles only)"
        )
    if reviewer not in policy.gate_overriders:
        allowed = ", ".join(sorted(policy.gate_overriders)) or "nobody"
        raise PromotionError(
            f"{reviewer} may not override a failed gate ({why}); the deployment's policy "
            f"({policy.source}) lists who may in gate_overriders (now: {allowed})"
        )


def _trusted_trail(tracking: Tracking, name: str, settings: Settings, trail: Any) -> None:
    """Refuse to decide on a trail that does not verify (its events cannot be believed)."""
    from medml import audit

    report = audit.verify(tracking, name, settings, trail)
    if not report.intact:
        problems = "; ".join(report.problems)
        raise PromotionError(f"{name}'s audit trail does not verify ({problems}); run `medml "
                             f"audit verify {name}` and repair it first")  # fmt: skip


def _registered_version(client: Any, name: str, version: str) -> str:
    """``version`` once it exists and is complete.

    Raises:
        PromotionError: it does not exist or its registration was interrupted.
    """
    from mlflow.exceptions import MlflowException

    try:
        model_version = client.get_model_version(name, version)
    except MlflowException:
        raise PromotionError(f"model {name!r} has no version {version}") from None
    require_complete_version(model_version)
    return str(model_version.version)


def promote(
    tracking: Tracking, name: str, version: str | int, *, reviewer: str, reason: str,
    override_gate: str | None = None, requested_by: str | None = None,
    identity: str = LOCAL_ADMIN, settings: Settings | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Move alias ``champion`` to ``version``, keep the old champion as ``previous-champion``
    and clear ``challenger`` if it pointed at this version (a review never compares a version
    with itself).

    Everything is decided and moved under the audit trail's lock, in the order the trail
    records it: two racing promotions are serialised, and the second one sees the first's
    champion.

    Args:
        tracking: the MLflow store.
        name: the registered model.
        version: the version to promote.
        reviewer: the authenticated identity who decides (:mod:`medml.identity`).
        reason: why (required; audited).
        override_gate: why to promote a version whose gate failed; only users the deployment's
            policy lists in ``gate_overriders`` may.
        requested_by: who asked for the promotion (the Airflow user who triggered it): with
            the policy's ``four_eyes`` (on by default) they cannot approve it.
        identity: where ``reviewer`` comes from (``airflow``, ``mlflow-auth``, ``local-admin``).
        settings: the deployment's settings (default: from the environment).

    Raises:
        PromotionError: unknown or incomplete version, no identity or reason, requester or
            registrar = approver, already champion, a trail that does not verify, gate evidence
            replaced after registration, or a failed gate without an allowed override.
    """
    from mlflow.exceptions import MlflowException

    from medml import audit

    settings = settings or Settings.from_env()
    policy = settings.policy()
    _identity_checks(reviewer, reason, requested_by, policy)
    client = tracking.activate()
    version = str(version).strip()
    version = str(int(version)) if version.isdigit() else version  # "02" is version 2
    label = f"{name} v{version}"
    try:
        model_version = client.get_model_version(name, version)
    except MlflowException:
        raise PromotionError(f"model {name!r} has no version {version}") from None
    require_complete_version(model_version)
    with audit.transaction(tracking, name, settings=settings) as trail:
        _trusted_trail(tracking, name, settings, trail)
        registration = _require_registration(label, registration_event(trail.events(), version))
        _registrar_check(label, registration, reviewer, policy)
        gate = recorded_gate(tracking, model_version, registration)
        _override_checks(label, gate, reviewer, override_gate, policy)
        previous, _ = trail_champions(trail.events())  # what the reviewed path made champion
        if previous == version:
            raise PromotionError(f"{label} is already the champion")
        moved = alias_version(client, name, CHAMPION)
        event = {"event": "promote", "version": version, "reviewer": reviewer,
                 "identity": identity, "requested_by": requested_by or reviewer,
                 "registrar": registration.get("registrar", ""),
                 "reason": reason, "at": _now(), "previous_champion": previous or "none",
                 "gate_reasons": gate.reasons, "gate": "passed" if gate.passed else "failed",
                 "gate_override": override_gate or "",
                 "policy": policy.digest or "built-in defaults"}  # fmt: skip
        if moved != previous:  # the alias was moved outside the reviewed path: say so
            event["alias_was"] = moved or "none"
        recorded = trail.append(event)  # first: a refused write moves nothing
        client.set_registered_model_alias(name, CHAMPION, version)
        if previous is not None:
            client.set_registered_model_alias(name, PREVIOUS_CHAMPION, previous)
        for alias in set(model_version.aliases or []) - {CHAMPION, PREVIOUS_CHAMPION}:
            client.delete_registered_model_alias(name, alias)  # challenger: now the champion
    for key in ("reviewer", "reason", "at", "previous_champion", "gate_override"):
        client.set_model_version_tag(name, version, VersionTags.audit("promoted", key), event[key])
    return recorded


def rollback(
    tracking: Tracking, name: str, *, reviewer: str, reason: str, identity: str = LOCAL_ADMIN,
    settings: Settings | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Restore the previous champion; the demoted version becomes ``previous-champion``.

    Raises:
        PromotionError: no identity or reason, a trail that does not verify, or no champion /
            previous champion.
    """
    from medml import audit

    settings = settings or Settings.from_env()
    _identity_checks(reviewer, reason, None, settings.policy())
    client = tracking.activate()
    with audit.transaction(tracking, name, settings=settings) as trail:
        _trusted_trail(tracking, name, settings, trail)
        events = trail.events()
        current, previous = trail_champions(events)  # never the movable aliases
        if current is None or previous is None:
            raise PromotionError(
                f"{name} has no {'champion' if current is None else 'previous champion'} in its "
                "audit trail to roll back from/to"
            )
        restored = _registered_version(client, name, previous)
        _require_registration(f"{name} v{previous}", registration_event(events, previous))
        event = {"event": "rollback", "version": previous, "demoted": current,
                 "reviewer": reviewer, "identity": identity, "reason": reason,
                 "at": _now()}  # fmt: skip
        recorded = trail.append(event)
        client.set_registered_model_alias(name, CHAMPION, restored)
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, current)
    for key in ("reviewer", "reason", "at"):
        tag = client.set_model_version_tag
        tag(name, previous, VersionTags.audit("restored", key), event[key])
        tag(name, current, VersionTags.audit("rolled_back", key), event[key])
    return recorded


def seal(
    tracking: Tracking, name: str, *, reviewer: str, reason: str, identity: str = LOCAL_ADMIN,
    settings: Settings | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Vouch, with the deployment's key, for the unkeyed events written before the key was set:
    a keyed ``seal`` event naming the newest event it covers. Whoever seals has checked them
    (``medml audit log``); until then a keyed deployment refuses the trail.

    Raises:
        PromotionError: no key here, no identity or reason, nothing to seal, or a trail that is
            broken for any other reason than its unkeyed events.
    """
    from medml import audit

    settings = settings or Settings.from_env()
    _identity_checks(reviewer, reason, None, settings.policy())
    if not settings.audit_key:
        raise PromotionError("sealing needs the deployment's key: set MEDML_AUDIT_KEY")
    with audit.transaction(tracking, name, settings=settings) as trail:
        events = trail.events()
        if not events or any(e.get("scheme") == audit.KEYED for e in events):
            raise PromotionError(f"{name}'s trail has no unkeyed events waiting for a seal")
        other = [p for p in audit.verify(tracking, name, settings, trail).problems
                 if "no keyed event vouches" not in p]  # fmt: skip
        if other:
            raise PromotionError(f"{name}'s trail is broken ({'; '.join(other)}); a seal would "
                                 "vouch for that: investigate first")  # fmt: skip
        return trail.append({"event": "seal", "version": "", "reviewer": reviewer,
                             "identity": identity, "reason": reason, "at": _now(),
                             "sealed_through": events[-1]["seq"]})  # fmt: skip


def record_decision(
    tracking: Tracking, name: str, version: str | int, *, reviewer: str, decision: str, reason: str
) -> dict[str, Any]:
    """Record a reviewer's decision (e.g. a rejection) without moving any alias."""
    from medml import audit

    client = tracking.activate()
    event = {"event": decision, "version": str(version), "reviewer": reviewer, "reason": reason,
             "at": _now()}  # fmt: skip
    for key in ("reviewer", "reason", "at"):
        tag = VersionTags.audit(decision, key)
        client.set_model_version_tag(name, str(version), tag, event[key])
    return audit.append(tracking, name, event)
