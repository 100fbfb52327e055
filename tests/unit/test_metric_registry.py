"""The metric registry is the only list: every registered metric is logged to MLflow, tagged on
the version (scalars), and shown in the run summary and the model card."""

from __future__ import annotations

import pytest

from medml.metrics import GateOutcome, registered_metrics
from medml.model_card import render_markdown
from medml.registry import version_tags
from medml.report import _overall_line, _per_class_table
from medml.review import Side, _rows
from tests.unit.test_model_card import _facts

SPECS = registered_metrics()
PROSE = {"roc_auc_ovr_macro": "roc auc", "cohen_kappa": "cohen's kappa"}  # as the texts say it


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_registered_metric_is_logged_tagged_and_shown(spec) -> None:
    facts = _facts()  # every per-class rate defined but PPV, which is left out of the logs
    metrics = facts.metrics
    logged = metrics.loggable("test_")
    summary = "\n".join([*_per_class_table(metrics), _overall_line(metrics, 0.25)]).lower()
    card = render_markdown(facts).lower()
    review = [row[0] for row in _rows(Side("2", {}, metrics, {}), None)]
    shown = spec.short_name.replace("_", " ")
    if spec.per_class:
        defined = spec.read(metrics)  # undefined rates (no predicted positives) are left out
        assert all(f"test_{spec.short_name}_{c}" in logged for c in defined)
        assert spec.short_name in summary.split("\n")[0]  # a column of the per-class table
        assert spec.short_name in card  # a column of the card's metric table
        assert all(f"{spec.short_name} {c}" in review for c in metrics.classes)
    else:
        assert f"test_{spec.name}" in logged
        tags = version_tags(facts.recipe, metrics, GateOutcome(True, []), folds=2, champion=None,
                            revision="r", extra={})  # fmt: skip
        assert spec.name in tags
        assert shown in review
        said = PROSE.get(spec.name, shown)
        assert shown in summary.replace("-", " ") or spec.name == "roc_auc_ovr_macro"  # "AUC"
        assert said in card.replace("-", " ")
