from __future__ import annotations

from medml.config import GateConfig
from medml.registry import check_gate

METRICS = {
    "overall": {"balanced_accuracy": 0.7, "macro_f1": 0.65},
    "per_class": {"a": {"sensitivity": 0.9}, "b": {"sensitivity": 0.5}},
}


def test_gate_passes_within_thresholds() -> None:
    outcome = check_gate(METRICS, GateConfig(min_balanced_accuracy=0.6, min_macro_f1=0.6))
    assert outcome.passed and outcome.reasons == []


def test_gate_names_every_failed_threshold() -> None:
    outcome = check_gate(
        METRICS,
        GateConfig(min_balanced_accuracy=0.8, min_macro_f1=0.7, min_class_sensitivity=0.6),
    )
    assert not outcome.passed
    assert outcome.reasons == [
        "balanced accuracy 0.700 < 0.800",
        "macro-F1 0.650 < 0.700",
        "sensitivity of b 0.500 < 0.600",
    ]
