"""Model cards: the template ships with the package, and the card states its facts."""

from __future__ import annotations

import dataclasses
from importlib import resources

import pytest

from medml.config import load_recipe
from medml.metrics import OUT_OF_FOLD, HoldoutMetrics
from medml.model_card import TEMPLATE, CardFacts, render_html, render_markdown

SECTIONS = [
    "Intended use", "Not for", "Data", "Data facts", "Holdout metrics (fold ensemble)", "Overall",
    "Calibration, out-of-fold estimate, operating point", "Limitations", "How to reproduce",
]  # fmt: skip


def test_template_ships_with_the_package() -> None:
    """Found through the package (as in a wheel install), not through the source tree."""
    template = resources.files("medml").joinpath("templates", TEMPLATE)
    assert template.is_file()
    assert "## Intended use" in template.read_text(encoding="utf-8")


def _facts(estimate: str = "holdout", **changes: object) -> CardFacts:
    recipe = load_recipe("kidney-ct")
    classes = list(recipe.data.classes)
    scores = {"sensitivity": 0.5, "specificity": 0.9, "ppv": None, "npv": 0.8, "f1": 0.6,
              "support": 7}  # fmt: skip
    overall = {"accuracy": 0.8, "balanced_accuracy": 0.7, "macro_f1": 0.6,
               "roc_auc_ovr_macro": 0.9, "cohen_kappa": 0.5, "expected_calibration_error": 0.04,
               "n": 28}  # fmt: skip
    metrics = HoldoutMetrics(
        classes=classes,
        overall=overall,
        per_class={c: dict(scores) for c in classes},
        confusion_matrix=[[1] * len(classes)] * len(classes),
        ci95={"balanced_accuracy": [0.6, 0.8], "sensitivity": {c: [0.2, 0.8] for c in classes}},
        estimate=estimate,
    )
    facts = {"recipe": recipe, "metrics": metrics, "split_report": {}, "validation_report": {},
             "model_name": "kidney", "logical_date": "2024-05-01", "data_hash": "abc",
             "git_revision": "deadbeef", "gate_passed": True, "gate_reasons": []}  # fmt: skip
    return CardFacts(**{**facts, **changes})


def test_markdown_states_every_section_once_per_line() -> None:
    card = render_markdown(_facts())
    assert [line[3:] for line in card.splitlines() if line.startswith("## ")] == SECTIONS
    assert card.endswith(".\n") and not card.endswith("\n\n")
    assert (
        "| Normal | 0.500 | 0.200–0.800 | 0.900 | n/a | 0.800 | 0.600 | 7 (too few to judge) |"
        in card
    )
    assert "- Registration gate: passed." in card
    assert "- Not computed for this version." in card
    assert "{" not in card and "%}" not in card


@pytest.mark.parametrize("estimate", ["holdout", OUT_OF_FOLD])
def test_out_of_fold_cards_say_there_is_no_holdout(estimate: str) -> None:
    card = render_markdown(_facts(estimate))
    assert ("there is no holdout" in card) == (estimate == OUT_OF_FOLD)
    assert ("Cross-validation only" in card) == (estimate == OUT_OF_FOLD)


def test_html_escapes_what_the_facts_say() -> None:
    page = render_html(_facts(gate_passed=False, gate_reasons=["<script>x</script>"]))
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "FAILED — &lt;script&gt;x&lt;/script&gt;" in page


def test_classes_too_few_to_judge_are_flagged_and_not_trusted() -> None:
    """Normal has 30 holdout images, the rest 4: the card flags the three and tells readers to
    read the intervals of Normal only; the rates carry their exact intervals."""
    facts = _facts()
    rows = [[30, 0, 0, 0], [1, 3, 0, 0], [0, 0, 4, 0], [0, 0, 1, 3]]
    metrics = dataclasses.replace(
        facts.metrics,
        confusion_matrix=rows,
        ci95={**facts.metrics.ci95, "specificity": {"Normal": [0.75, 0.99]}, "method": {"x": "y"}},
    )
    card = render_markdown(dataclasses.replace(facts, metrics=metrics))
    assert (
        "| Normal | 0.500 | 0.200–0.800 | 0.900 (0.750–0.990) | n/a | 0.800 | 0.600 | 7 |" in card
    )
    assert (
        "| Cyst | 0.500 | 0.200–0.800 | 0.900 | n/a | 0.800 | 0.600 | 7 (too few to judge) |"
        in card
    )
    assert "**Too few to judge**: Cyst, Stone, Tumor (fewer than 20 images each" in card
    assert "Per-class intervals are exact (Clopper-Pearson)" in card
    limitations = card.split("## Limitations")[1].split("## How to reproduce")[0]
    assert "- Cyst, Stone, Tumor: too few images to judge (fewer than 20)" in limitations
    assert "do not rely on them" in limitations
    assert "read the per-class intervals of Normal, not the overall accuracy" in limitations
    everyone = render_markdown(dataclasses.replace(facts, metrics=dataclasses.replace(
        metrics, min_class_support=1)))  # fmt: skip
    assert "too few" not in everyone.lower()
    assert (
        "- Small classes have wide confidence intervals; read the per-class intervals, not "
        "the overall accuracy." in everyone
    )


def test_the_operating_point_states_its_exact_intervals_and_too_few() -> None:
    from medml.evaluation_facts import CalibrationReport, EvaluationFacts, OperatingPoint

    held = {"sensitivity": 1.0, "specificity": 0.9, "ppv": 0.8, "sensitivity_ci95": [0.398, 1.0],
            "specificity_ci95": [0.8, 0.95], "ppv_ci95": [0.5, 0.9], "interval": "exact",
            "too_few_to_judge": ["sensitivity"]}  # fmt: skip
    point = OperatingPoint("Tumor", 0.4, 0.95, oof={}, holdout=held)
    evaluation = EvaluationFacts(CalibrationReport(1.2, "oof", 0.1, 0.05), _facts().metrics, point)
    card = render_markdown(_facts(evaluation=evaluation))
    assert "sensitivity 1.000 (95% CI 0.398–1.000)" in card
    assert "PPV 0.800 (95% CI 0.500–0.900); intervals exact (Clopper-Pearson)." in card
    assert "Too few images to judge its sensitivity (fewer than 20)." in card


def test_the_approval_table_stays_a_table_whatever_the_store_holds() -> None:
    """Names, tags and params come from anyone with MLflow write access: in the Markdown the
    approval request renders, none may break the table or become a link, image or HTML."""
    from medml.metrics import HoldoutMetrics
    from medml.review import Side, _markdown

    metrics = HoldoutMetrics(["a", "b"], {"balanced_accuracy": 0.7, "macro_f1": 0.6, "n": 10},
                             {"a": {"sensitivity": 0.9}, "b": {"sensitivity": 0.5}},
                             [[4, 1], [2, 3]])  # fmt: skip
    hostile = "x | y\n![i](//evil.example/a.png) <img src=x onerror=alert(1)> [l](http://e)"
    tags = {"logical_date": hostile, "data_hash": "|" * 500}
    candidate = Side("2", tags, metrics, {}, baseline=hostile, warnings=[hostile])
    text = _markdown("m|x\ny", candidate, Side("1", {}, metrics, {}))
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table and all(line.count(" | ") == 2 for line in table), table
    import re

    values = "\n".join([*table, text.splitlines()[0].removeprefix("**Warning:** ")])
    unescaped = re.findall(r"(?<!\\)[<>!\[\]()]", values)
    assert not unescaped, unescaped  # each is \-escaped: shown as text, never a link or tag
    assert max(len(line) for line in table) < 700  # long values are cut
