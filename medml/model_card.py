"""Model cards (Markdown and HTML) for registered model versions.

Both renderings come from the same facts: intended use and non-use, the data with class counts,
holdout metrics with 95% confidence intervals per class (exact, Clopper-Pearson), the classes
too few to judge, limitations, and how to reproduce.
The prose is the template ``templates/model_card.md.j2``; this module computes what it states.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medml.config import Recipe
from medml.evaluation_facts import EvaluationFacts
from medml.io import atomic_path
from medml.layout import RegistryFiles
from medml.metrics import OUT_OF_FOLD, HoldoutMetrics, estimates_disagree, scalar_metrics

TEMPLATE = "model_card.md.j2"  # in medml/templates/: the card's prose
_NAMED_IN_PROSE = {"balanced_accuracy", "macro_f1", "accuracy", "roc_auc_ovr_macro",
                   "cohen_kappa", "expected_calibration_error"}  # fmt: skip


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
    evaluation: EvaluationFacts | None = None  # calibration, out-of-fold, operating point


def _context(facts: CardFacts) -> dict[str, Any]:
    """The values the card's template (``templates/model_card.md.j2``) puts into its prose."""
    recipe, metrics = facts.recipe, facts.metrics
    evaluation, validation, split = facts.evaluation, facts.validation_report, facts.split_report
    point = evaluation.operating_point if evaluation else None
    held = point.rates if point else {}
    return {
        "model_name": facts.model_name, "recipe": recipe, "classes": metrics.classes,
        "subject": recipe.description.lower() or recipe.name,
        "params_hash": recipe.params_hash(), "out_of_fold": metrics.estimate == OUT_OF_FOLD,
        "data_rows": _data_rows(metrics.classes, split.get("class_counts", {})),
        "metric_rows": _metric_rows(metrics),
        "logical_date": facts.logical_date, "data_hash": facts.data_hash,
        "git_revision": facts.git_revision,
        "validation": {"images": validation.get("images", "?"),
                       "quarantined": validation.get("quarantined", 0),
                       "imbalance_ratio": validation.get("imbalance_ratio") or 0},
        "split": {"strategy": split.get("strategy", "?"), "holdout": split.get("holdout", "?")},
        "overall": metrics.overall,
        "overall_ci": {name: _interval(metrics.interval(name)) for name in (
            "balanced_accuracy", "macro_f1", "roc_auc_ovr_macro", "expected_calibration_error")},
        "too_few": metrics.too_few_to_judge, "min_class_support": metrics.min_class_support,
        "exact_intervals": bool(metrics.ci95.get("method")),
        "judged": [c for c in metrics.classes if c not in metrics.too_few_to_judge],
        "gate_passed": facts.gate_passed, "gate_reasons": facts.gate_reasons,
        "calibration": evaluation.calibration if evaluation else None,
        "oof": evaluation.oof_metrics.overall if evaluation else {},
        "registered": {name: value for name, value in scalar_metrics(metrics).items()
                       if name not in _NAMED_IN_PROSE},
        "point": point,
        "point_rates": {name: _rate(held, name) for name in ("sensitivity", "specificity", "ppv")},
        "point_too_few": list(held.get("too_few_to_judge") or []),
        "point_exact": bool(held.get("interval")),
        "baseline": _baseline_sentence(evaluation),
        "disagreement": estimates_disagree(evaluation.oof_metrics, metrics) if evaluation else "",
        "ensemble_estimate": _ensemble_estimate(evaluation, metrics),
        "sets": evaluation.conformal if evaluation else None,
        "label_issues": evaluation.label_issues if evaluation else None,
        "sets_sentence": _sets_sentence(evaluation),
    }  # fmt: skip


def _ensemble_estimate(evaluation: EvaluationFacts | None, metrics: HoldoutMetrics) -> str:
    """The calibration cut's estimate of the registered ensemble, as one sentence (with the
    warning when it disagrees with the holdout); empty without a cut."""
    estimate = evaluation.calibration.ensemble_metrics() if evaluation else None
    if estimate is None:
        return ""
    overall, low_high = estimate.overall, estimate.interval("balanced_accuracy")
    interval = ""
    if low_high and None not in low_high:
        interval = f" (95% CI {low_high[0]:.3f}–{low_high[1]:.3f})"
    where = (", where its temperature was fitted"
             if evaluation and evaluation.calibration.fitted_on.startswith("the fold ensemble")
             else "")  # fmt: skip
    sentence = (f"The registered ensemble on the calibration cut ({overall['n']} images no fold "
                f"model trained or validated on{where}): balanced "
                f"accuracy {overall['balanced_accuracy']:.3f}{interval}, macro-F1 "
                f"{overall['macro_f1']:.3f}.")  # fmt: skip
    disagreement = estimates_disagree(estimate, metrics)
    return sentence + (f" **Warning:** {disagreement}." if disagreement else "")


def _sets_sentence(evaluation: EvaluationFacts | None) -> str:
    from medml.conformal import sentence

    conformal = evaluation.conformal if evaluation else None
    return sentence(conformal) if conformal and conformal.get("holdout") else ""


def _baseline_sentence(evaluation: EvaluationFacts | None) -> str:
    from medml.baseline import sentence

    return sentence(evaluation.baseline) if evaluation and evaluation.baseline else ""


def _data_rows(classes: list[str], counts: dict[str, dict[str, int]]) -> list[list[str]]:
    """The data table: a header, then each class's images in the folds, the calibration cut
    (when there is one) and the holdout."""
    parts = [("train", "training + validation folds"), ("calibration", "calibration cut"),
             ("test", "holdout test")]  # fmt: skip
    parts = [(key, title) for key, title in parts if key != "calibration" or counts.get(key)]
    return [["class", *(title for _, title in parts)]] + [
        [c, *(str(counts.get(key, {}).get(c, 0)) for key, _ in parts)] for c in classes
    ]


def _metric_rows(metrics: HoldoutMetrics) -> list[list[str]]:
    """The metrics table: a header, then each class's rates with their 95% intervals, and its
    count, flagged when too few to judge."""
    rows = [["class", "sensitivity", "95% CI", "specificity", "PPV", "NPV", "F1", "n"]]
    too_few = metrics.too_few_to_judge
    for c in metrics.classes:
        s = metrics.per_class[c]
        rates = [
            _with_interval(s[r], metrics.interval(r, c)) for r in ("specificity", "ppv", "npv")
        ]
        count = f"{s['support']}" + (" (too few to judge)" if c in too_few else "")
        rows.append([c, _f(s["sensitivity"]), _interval(metrics.interval("sensitivity", c)),
                     *rates, _f(s["f1"]), count])  # fmt: skip
    return rows


def _with_interval(value: float | None, interval: list[float | None] | None) -> str:
    """A rate, and its 95% interval in brackets where there is one."""
    bounds = _interval(interval)
    return _f(value) + (f" ({bounds})" if value is not None and bounds else "")


def _interval(values: list[float | None] | None) -> str:
    """A 95% interval as ``low–high``; empty when there is none."""
    return "" if not values or values[0] is None else f"{values[0]:.3f}–{values[1]:.3f}"


def _rate(values: dict[str, Any], name: str) -> str:
    value, interval = values.get(name), values.get(f"{name}_ci95") or [None, None]
    if value is None:
        return "n/a"
    bounds = f" (95% CI {interval[0]:.3f}–{interval[1]:.3f})" if interval[0] is not None else ""
    return f"{value:.3f}{bounds}"


def render_markdown(facts: CardFacts) -> str:
    """The model card as Markdown, rendered from ``templates/model_card.md.j2`` (jinja2)."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["fixed"] = _fixed
    return environment.get_template(TEMPLATE).render(_context(facts))


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


def _fixed(value: float, digits: int = 3) -> str:
    """The template's number format: ``digits`` decimals."""
    return f"{value:.{digits}f}"
