"""Review a candidate model version against the champion, side by side (table + HTML report)."""

from __future__ import annotations

import base64
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medml.conformal import sentence as conformal_sentence
from medml.errors import RefusedError
from medml.io import atomic_path, medml_home, render_html
from medml.layout import ARTIFACTS
from medml.metrics import HoldoutMetrics, MetricSpec, estimates_disagree, registered_metrics
from medml.promotion import alias_version
from medml.tracking import Tracking
from medml.version_tags import CHAMPION, VersionTags


def no_such_model(tracking: Tracking, name: str) -> str:
    """'no model NAME in STORE; did you mean …? available: …'."""
    import difflib

    known = tracking.model_names()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (f"no model {name!r} in {tracking.uri}{hint} available: "
            f"{', '.join(known) or 'none'}")  # fmt: skip


class ReviewError(RefusedError):
    """The model or version to review does not exist."""


@dataclass
class Side:
    """One model version's facts for the review."""

    version: str
    tags: dict[str, str]
    metrics: HoldoutMetrics
    images: dict[str, str]  # name -> base64 PNG
    baseline: str = ""
    """How it compares with the baseline on its own holdout (empty: not compared)."""
    operating_point: dict[str, Any] | None = None
    """Binary recipes: the threshold and the holdout rates at it (``operating_point.json``)."""
    prediction_sets: str = ""
    """The prediction sets' holdout coverage, one sentence (empty: not measured)."""
    ensemble_estimate: str = ""
    """The registered ensemble scored on the calibration cut, one sentence (empty: no cut)."""
    label_issues: str = ""
    """How many training images confident learning flagged as possibly mislabelled."""
    warnings: list[str] = field(default_factory=list)
    """What a reviewer must not miss (out-of-fold or calibration-cut and holdout estimates that
    disagree)."""


def _load_side(client: Any, name: str, version: str, tracking: Tracking | None = None) -> Side:
    from mlflow.exceptions import MlflowException

    model_version = client.get_model_version(name, version)
    if model_version.tags.get(VersionTags.COMPLETE) != "true":
        raise ReviewError(f"{name} v{version} is incomplete (its registration was interrupted); "
                          "re-run the `register` step of its run")  # fmt: skip
    run_id = model_version.run_id
    images: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        metrics_path = client.download_artifacts(run_id, ARTIFACTS.metrics, tmp)
        metrics = HoldoutMetrics.read(Path(metrics_path))
        for picture in ("confusion_matrix", "reliability"):
            try:
                png = client.download_artifacts(run_id, ARTIFACTS.plot(picture), tmp)
                images[picture] = base64.b64encode(Path(png).read_bytes()).decode()
            except (MlflowException, OSError):  # older versions may lack a plot
                pass
        baseline = _baseline(client, run_id, tmp)
        point = _optional_json(client, run_id, ARTIFACTS.operating_point, tmp)
        oof = _optional_json(client, run_id, ARTIFACTS.oof_metrics, tmp)
        calibration = _optional_json(client, run_id, ARTIFACTS.calibration, tmp) or {}
        conformal = _optional_json(client, run_id, ARTIFACTS.conformal, tmp) or {}
        flagged = _optional_json(client, run_id, ARTIFACTS.label_issues, tmp)
    warnings = []
    for estimate in (calibration.get("ensemble_estimate"), oof):
        if estimate and (disagreement := estimates_disagree(HoldoutMetrics.from_dict(estimate),
                                                            metrics)):  # fmt: skip
            warnings.append(disagreement)
    if point is not None and point.get("warning"):
        warnings.append(f"operating point: {point['warning']}")
    if tracking is not None:  # what is shown must be what registration pinned
        warnings += _evidence_warning(tracking, model_version)
    sets = conformal_sentence(conformal) if conformal.get("holdout") else ""
    suspects = (f"{flagged['suspects']} of {flagged['checked']} training images (the run's "
                f"evaluation/label_issues.csv; none removed)" if flagged else "")  # fmt: skip
    return Side(str(version), dict(model_version.tags), metrics, images, baseline, point,
                sets, _cut_sentence(calibration.get("ensemble_estimate")), suspects,
                warnings)  # fmt: skip


def _cut_sentence(estimate: dict[str, Any] | None) -> str:
    """The calibration cut's estimate of the registered ensemble, one sentence."""
    if not estimate:
        return ""
    cut = HoldoutMetrics.from_dict(estimate)
    low, high = cut.interval("balanced_accuracy") or (None, None)
    interval = f" [95% CI {low:.3f}-{high:.3f}]" if low is not None and high is not None else ""
    few = f"; too few to judge: {', '.join(cut.too_few_to_judge)}" if cut.too_few_to_judge else ""
    return (
        f"n={cut.overall['n']} images no fold model trained on: balanced accuracy "
        f"{cut.overall['balanced_accuracy']:.3f}{interval}, macro-F1 "
        f"{cut.overall['macro_f1']:.3f}{few}"
    )


def _evidence_warning(tracking: Tracking, model_version: Any) -> list[str]:
    """A warning when the version's gate evidence is not what its registration pinned (or it
    has no registration): the figures shown may then have been replaced after the fact."""
    from medml.audit import events
    from medml.promotion import gate_shown

    outcome, reasons = gate_shown(tracking, model_version, events(tracking, model_version.name))
    if outcome in ("passed", "failed"):
        return []
    return [f"gate evidence {outcome}: {reasons} — the figures below cannot be trusted"]


def _optional_json(client: Any, run_id: str, artifact: str, folder: str) -> dict[str, Any] | None:
    """A JSON artifact of the run, or ``None`` (versions evaluated before it existed)."""
    from mlflow.exceptions import MlflowException

    try:
        return json.loads(Path(client.download_artifacts(run_id, artifact, folder)).read_text())
    except (MlflowException, OSError, ValueError):
        return None


def _baseline(client: Any, run_id: str, folder: str) -> str:
    """The baseline sentence of a run (empty for versions evaluated before it existed)."""
    from mlflow.exceptions import MlflowException

    from medml.baseline import sentence

    try:
        return sentence(json.loads(Path(client.download_artifacts(
            run_id, ARTIFACTS.baseline, folder)).read_text()))  # fmt: skip
    except (MlflowException, OSError, ValueError, KeyError):
        return ""


def _flat_params(tags: dict[str, str]) -> dict[str, Any]:
    from medml.config import flatten

    try:
        return flatten(json.loads(tags.get(VersionTags.PARAMS, "{}")))
    except json.JSONDecodeError:
        return {}


def review(
    tracking: Tracking, name: str, version: str | int | None = None, out: Path | None = None,
    *, markdown: bool = False,
) -> tuple[str, Path]:  # fmt: skip
    """Compare ``version`` (default: the ``challenger``) with the ``champion``.

    Args:
        tracking: the MLflow store.
        name: the registered model.
        version: the version to review (default: the ``challenger``).
        out: where to write the HTML report (default: ``$MEDML_HOME/reviews/``).
        markdown: return the table as Markdown (for Airflow's approval request) instead of
            plain text (for a terminal).

    Returns:
        The table and the path of the HTML report.

    Raises:
        ReviewError: unknown model, version or alias.
    """
    from mlflow.exceptions import MlflowException

    client = tracking.activate()
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise ReviewError(no_such_model(tracking, name)) from None
    candidate_version = (
        str(version) if version is not None else alias_version(client, name, "challenger")
    )
    if candidate_version is None:
        raise ReviewError(f"{name} has no challenger; give --version")
    try:
        candidate = _load_side(client, name, candidate_version, tracking)
    except MlflowException:
        raise ReviewError(f"{name} has no version {candidate_version}") from None
    champion_version = alias_version(client, name, CHAMPION)
    champion = _load_side(client, name, champion_version) if champion_version else None
    text = (_markdown if markdown else _table)(name, candidate, champion)
    out = Path(out or medml_home() / "reviews" / f"review-{name}-v{candidate.version}.html")
    with atomic_path(out) as tmp:
        tmp.write_text(_html(name, candidate, champion), encoding="utf-8")
    return text, out


TOO_FEW = "(too few to judge)"


def _per_class(side: Side | None, spec: MetricSpec, cls: str) -> str:
    """A per-class metric of one side, with its 95% interval where there is one (exact for
    the rates), flagged when the class has too few images to judge."""
    if side is None:
        return "-"
    value = side.metrics.per_class.get(cls, {}).get(spec.short_name)
    ci = side.metrics.interval(spec.short_name, cls)
    flag = f" {TOO_FEW}" if cls in side.metrics.too_few_to_judge else ""
    if value is None:
        return "n/a" + flag
    shown = f" [{ci[0]:.2f}-{ci[1]:.2f}]" if ci and ci[0] is not None else ""
    return f"{value:.3f}{shown}{flag}"


def _scalar(side: Side | None, spec: MetricSpec) -> str:
    """A scalar metric of one side (``n/a`` for a version evaluated before it existed)."""
    if side is None:
        return "-"
    try:
        return f"{float(spec.read(side.metrics)):.3f}"
    except KeyError:
        return "n/a"


def _rows(candidate: Side, champion: Side | None) -> list[list[str]]:
    """Every registered metric of both sides (per-class ones per class), then lineage."""
    rows = [["", f"candidate v{candidate.version}",
             f"champion v{champion.version}" if champion else "champion (none)"]]  # fmt: skip
    for cls in candidate.metrics.classes:
        for spec in registered_metrics(per_class=True):
            rows.append([f"{spec.short_name} {cls}", _per_class(candidate, spec, cls),
                         _per_class(champion, spec, cls)])  # fmt: skip
    for spec in registered_metrics(per_class=False):
        rows.append([spec.name.replace("_", " "), _scalar(candidate, spec),
                     _scalar(champion, spec)])  # fmt: skip
    if candidate.operating_point is not None:  # binary: the decision the served model returns
        rows += _threshold_rows(candidate, champion)
    rows.append(["measured on", candidate.metrics.estimate,
                 champion.metrics.estimate if champion else "-"])  # fmt: skip
    for tag in (
        VersionTags.LOGICAL_DATE,
        VersionTags.DATA_HASH,
        VersionTags.GATE,
        VersionTags.BALANCE,
        VersionTags.GIT_REVISION,
    ):
        rows.append(
            [
                tag,
                candidate.tags.get(tag, "")[:16],
                champion.tags.get(tag, "")[:16] if champion else "-",
            ]
        )
    return rows


_AT_THRESHOLD = (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("ppv", "PPV"))


def _at_threshold(side: Side | None, name: str) -> str:
    """One rate at the side's own operating point on its holdout, with its exact interval."""
    if side is None:
        return "-"
    holdout = (side.operating_point or {}).get("holdout")
    if not isinstance(holdout, dict) or holdout.get(name) is None:
        return "n/a"
    try:
        value = float(holdout[name])
        low, high = (float(x) if x is not None else None
                     for x in (holdout.get(f"{name}_ci95") or (None, None)))  # fmt: skip
    except (TypeError, ValueError):
        return "unreadable"
    shown = f" [{low:.2f}-{high:.2f}]" if low is not None and high is not None else ""
    flag = f" {TOO_FEW}" if name in (holdout.get("too_few_to_judge") or []) else ""
    return f"{value:.3f}{shown}{flag}"


def _threshold_rows(candidate: Side, champion: Side | None) -> list[list[str]]:
    """The rates at each side's binary threshold (the argmax rows above are at 0.5)."""

    def where(side: Side | None) -> str:
        point = (side.operating_point if side else None) or {}
        return (f"{point['positive_class']} >= {point['threshold']:.3f}"
                if "threshold" in point else "-")  # fmt: skip

    rows = [["operating point (threshold)", where(candidate), where(champion)]]
    for name, label in _AT_THRESHOLD:
        rows.append([f"{label} at threshold", _at_threshold(candidate, name),
                     _at_threshold(champion, name)])  # fmt: skip
    return rows


def _param_changes(candidate: Side, champion: Side | None) -> list[str]:
    if champion is None:
        return []
    new, old = _flat_params(candidate.tags), _flat_params(champion.tags)
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
            for key in sorted(set(new) | set(old)) if new.get(key) != old.get(key)]  # fmt: skip


def _table(name: str, candidate: Side, champion: Side | None) -> str:
    rows = _rows(candidate, champion)
    width, middle = (max(len(r[i]) for r in rows) + 2 for i in (0, 1))
    lines = [f"Review of {name}"] + [f"{r[0]:<{width}}{r[1]:<{max(26, middle)}}{r[2]}"
                                     for r in rows]  # fmt: skip
    changes = _param_changes(candidate, champion)
    lines.append("params changed: " + ("; ".join(changes) if changes else "none"))
    if candidate.baseline:
        lines.append(f"baseline (v{candidate.version}): {candidate.baseline}")
    if candidate.ensemble_estimate:
        lines.append(f"calibration cut (v{candidate.version}): {candidate.ensemble_estimate}")
    if candidate.prediction_sets:
        lines.append(f"prediction sets (v{candidate.version}): {candidate.prediction_sets}")
    if candidate.label_issues:
        lines.append(f"suspected label errors (v{candidate.version}): {candidate.label_issues}")
    lines += [f"WARNING (v{candidate.version}): {warning}" for warning in candidate.warnings]
    return "\n".join(lines)


def _markdown(name: str, candidate: Side, champion: Side | None) -> str:
    """The table as Markdown (Airflow renders an approval request's body as Markdown):
    warnings first, then one row per metric, the baseline and the params that changed."""

    def cell(text: str, longest: int = 200) -> str:
        # One line, no table breaks, and nothing Markdown would turn into a link, an image or
        # HTML: the values come from anyone who can write to the MLflow store.
        text = " ".join(str(text).split())
        text = text[:longest] + ("…" if len(text) > longest else "")
        return re.sub(r"([\\|!\[\]()<>`*_])", r"\\\1", text)

    rows = _rows(candidate, champion)
    warnings = [f"**Warning:** {cell(warning, 1000)}" for warning in candidate.warnings]
    lines = [*warnings, *([""] if warnings else [])]
    lines.append(f"| {cell(name)} | " + " | ".join(cell(c) for c in rows[0][1:]) + " |")
    lines.append("|---|---|---|")
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows[1:]]
    if candidate.baseline:
        lines += ["", f"**Baseline** (v{candidate.version}): {cell(candidate.baseline)}"]
    if candidate.ensemble_estimate:
        lines += ["", f"**Calibration cut** (v{candidate.version}): "
                      f"{cell(candidate.ensemble_estimate, 400)}"]  # fmt: skip
    if candidate.prediction_sets:
        lines += ["", f"**Prediction sets** (v{candidate.version}): "
                      f"{cell(candidate.prediction_sets, 400)}"]  # fmt: skip
    if candidate.label_issues:
        lines += ["", f"**Suspected label errors** (v{candidate.version}): "
                      f"{cell(candidate.label_issues)}"]  # fmt: skip
    changes = _param_changes(candidate, champion)
    lines += ["", "**Params changed:** " + (cell("; ".join(changes)) if changes else "none")]
    return "\n".join(lines)


def _html(name: str, candidate: Side, champion: Side | None) -> str:
    """The report, rendered from ``templates/review.html.j2`` (jinja2, autoescaped)."""
    return render_html(
        "review.html.j2",
        name=name, candidate=candidate, rows=_rows(candidate, champion),
        changes=_param_changes(candidate, champion), sides=(candidate, champion),
        pictures=("confusion_matrix", "reliability"),
    )  # fmt: skip
