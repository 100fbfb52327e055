"""Model cards (Markdown and HTML) for registered model versions.

Both renderings come from the same facts: intended use and non-use, the data with class counts,
holdout metrics with 95% confidence intervals per class, limitations, and how to reproduce.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medml.config import Recipe
from medml.io import atomic_path
from medml.layout import RegistryFiles
from medml.metrics import OUT_OF_FOLD, HoldoutMetrics


@dataclass(frozen=True)
class CardFacts:
    """Everything a model card states."""

    recipe: Recipe
    metrics: HoldoutMetrics
    split_report: dict[str, Any]
    validation_report: dict[str, Any]
    model_name: str
    logical_date: str
    data_hash: str
    git_revision: str
    gate_passed: bool
    gate_reasons: list[str]
    evaluation: dict[str, Any] = field(default_factory=dict)  # calibration, oof, operating point


def _sections(facts: CardFacts) -> list[tuple[str, list[str] | list[list[str]]]]:
    """The card's sections as (title, paragraphs or table rows); prose, exempt from the
    function-size rule (tests/unit/test_code_shape.py)."""
    recipe, metrics = facts.recipe, facts.metrics
    classes = metrics.classes
    counts = facts.split_report.get("class_counts", {})
    data_rows = [["class", "training + validation folds", "holdout test"]] + [
        [c, str(counts.get("train", {}).get(c, 0)), str(counts.get("test", {}).get(c, 0))]
        for c in classes
    ]

    def interval(values: list[float | None] | None) -> str:
        return "" if not values or values[0] is None else f"{values[0]:.3f}–{values[1]:.3f}"

    metric_rows = [["class", "sensitivity", "95% CI", "specificity", "PPV", "NPV", "F1", "n"]]
    for c in classes:
        s = metrics.per_class[c]
        metric_rows.append([c, _f(s["sensitivity"]), interval(metrics.interval("sensitivity", c)),
                            _f(s["specificity"]), _f(s["ppv"]), _f(s["npv"]), _f(s["f1"]),
                            str(s["support"])])  # fmt: skip
    overall = metrics.overall
    return [
        (
            "Intended use",
            [
                f"Decision support for {recipe.description.lower() or recipe.name}: ranks and flags "
                "images for review by a qualified clinician.",
                f"Input: images like the training data ({recipe.image.size}×{recipe.image.size}, "
                f"{'grayscale' if recipe.image.channels == 1 else 'RGB'}); output: probabilities for "
                f"{', '.join(classes)}.",
            ],
        ),
        (
            "Not for",
            [
                "Autonomous diagnosis or any use without a clinician's review.",
                "Populations, scanners, protocols or classes not represented in the data below.",
                "Images that fail medml's validation gate (corrupt, wrong modality, out-of-range size).",
            ],
        ),
        ("Data", data_rows),
        (
            "Data facts",
            [
                f"Snapshot (logical date): {facts.logical_date}; "
                f"data hash (DVC md5 of the snapshot): `{facts.data_hash}`.",
                f"Images after validation: {facts.validation_report.get('images', '?')} "
                f"({facts.validation_report.get('quarantined', 0)} quarantined); imbalance ratio "
                f"{facts.validation_report.get('imbalance_ratio') or 0:.1f}.",
                f"Split: {facts.split_report.get('strategy', '?')}, holdout "
                f"{facts.split_report.get('holdout', '?')}, {recipe.split.folds} folds; balancing "
                f"`{recipe.train.balance}` inside each fold's training part only.",
            ],
        ),
        (
            "Holdout metrics (fold ensemble)"
            if metrics.estimate != OUT_OF_FOLD
            else "Out-of-fold metrics (cross-validation only: there is no holdout)",
            metric_rows,
        ),
        (
            "Overall",
            [
                f"Balanced accuracy {overall['balanced_accuracy']:.3f} "
                f"(95% CI {interval(metrics.interval('balanced_accuracy'))}); macro-F1 {overall['macro_f1']:.3f} "
                f"(95% CI {interval(metrics.interval('macro_f1'))}); accuracy {overall['accuracy']:.3f}; "
                f"ROC AUC (one-vs-rest, macro) {overall['roc_auc_ovr_macro']:.3f}; Cohen's kappa "
                f"{overall['cohen_kappa']:.3f}; expected calibration error "
                f"{overall['expected_calibration_error']:.3f}.",
                "Registration gate: "
                + ("passed." if facts.gate_passed else "FAILED — " + "; ".join(facts.gate_reasons)),
            ],
        ),
        ("Calibration, out-of-fold estimate, operating point", _evaluation_lines(facts)),
        (
            "Limitations",
            [
                (
                    "Metrics come from one holdout drawn from the same source as the training data; "
                    "they do not show performance on other sites or devices."
                    if metrics.estimate != OUT_OF_FOLD
                    else "Cross-validation only (split.test_size=0): the metrics are out-of-fold "
                    "predictions of the fold models, each on the images it did not train on, not a "
                    "held-out test of the registered ensemble; the temperature was fitted on the "
                    "same predictions. They do not show performance on other sites or devices."
                ),
                "Small classes have wide confidence intervals; read the per-class intervals, not the "
                "overall accuracy.",
                "Calibration was fitted on out-of-fold predictions of the training images; the "
                "holdout's calibration error above is what remains.",
            ],
        ),
        (
            "How to reproduce",
            [
                f"git revision `{facts.git_revision}`, recipe `{recipe.name}` "
                f"(params hash `{recipe.params_hash()}`).",
                f"`medml run --source <snapshot {facts.logical_date}> --recipe {recipe.name}` with the "
                "params recorded on this model version (tag `params`).",
            ],
        ),
    ]


def _evaluation_lines(facts: CardFacts) -> list[str]:
    calibration = facts.evaluation.get("calibration") or {}
    oof = (facts.evaluation.get("oof_metrics") or {}).get("overall") or {}
    point = facts.evaluation.get("operating_point")
    lines = []
    if calibration:
        held_out = (
            f"the holdout: {calibration['holdout_ece_before']:.3f} before, "
            f"{calibration['holdout_ece_after']:.3f} after (out-of-fold: "
            if calibration["holdout_ece_before"] is not None
            else "(no holdout) out-of-fold: "
        )
        lines.append(
            f"Temperature scaling T = {calibration['temperature']:.3f}, fitted on "
            f"{calibration['fitted_on']}, applied inside the model. Expected calibration error on "
            f"{held_out}{calibration['oof_ece_before']:.3f} → {calibration['oof_ece_after']:.3f}"
            + (")." if calibration["holdout_ece_before"] is not None else ".")
        )
    if oof:
        lines.append(
            f"Out-of-fold estimate ({oof['n']} training images, each scored by the fold model "
            f"that did not train on it): balanced accuracy {oof['balanced_accuracy']:.3f}, "
            f"macro-F1 {oof['macro_f1']:.3f}."
        )
    if point:
        held = point["holdout"] or point["oof"]
        where = "the holdout" if point["holdout"] else "out-of-fold predictions (no holdout)"
        lines.append(
            f"Operating point for {point['positive_class']}: threshold {point['threshold']:.3f} on "
            f"its probability, chosen out-of-fold for sensitivity ≥ {point['target_sensitivity']:.2f}. "
            f"On {where}: sensitivity {_rate(held, 'sensitivity')}, specificity "
            f"{_rate(held, 'specificity')}, PPV {_rate(held, 'ppv')}. The model returns this "
            "decision in its `decision` column."
        )
    return lines or ["Not computed for this version."]


def _rate(values: dict[str, Any], name: str) -> str:
    value, interval = values.get(name), values.get(f"{name}_ci95") or [None, None]
    if value is None:
        return "n/a"
    bounds = f" (95% CI {interval[0]:.3f}–{interval[1]:.3f})" if interval[0] is not None else ""
    return f"{value:.3f}{bounds}"


def render_markdown(facts: CardFacts) -> str:
    """The model card as Markdown."""
    lines = [f"# Model card: {facts.model_name} ({facts.recipe.name})", ""]
    for title, body in _sections(facts):
        lines += [f"## {title}", ""]
        if body and isinstance(body[0], list):
            header, *rows = body
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(row) + " |" for row in rows]
        else:
            lines += [f"- {item}" for item in body]
        lines.append("")
    return "\n".join(lines)


def render_html(facts: CardFacts) -> str:
    """The model card as a standalone HTML page, rendered from its Markdown (CommonMark with
    tables, by markdown-it-py), so code spans and emphasis show as such; raw HTML in the text is
    escaped, not rendered."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(render_markdown(facts))
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        "code{background:#f3f3f3;padding:0 3px}"
    )
    title = html.escape(f"Model card: {facts.model_name}")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{style}</style></head><body>{body}</body></html>"
    )


def write_model_card(facts: CardFacts, files: RegistryFiles) -> tuple[Path, Path]:
    """Write the Markdown and HTML model cards into the registration folder."""
    files.root.mkdir(parents=True, exist_ok=True)
    paths = (files.model_card_md, files.model_card_html)
    for path, text in zip(paths, (render_markdown(facts), render_html(facts)), strict=True):
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return paths


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
