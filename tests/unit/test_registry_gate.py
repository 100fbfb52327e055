from __future__ import annotations

import copy

from medml.config import GateConfig
from medml.registry import check_gate

METRICS = {
    "overall": {"balanced_accuracy": 0.7, "macro_f1": 0.65, "expected_calibration_error": 0.08},
    "per_class": {"a": {"sensitivity": 0.9}, "b": {"sensitivity": 0.5}},
}


def test_gate_passes_within_thresholds() -> None:
    outcome = check_gate(METRICS, GateConfig(min_balanced_accuracy=0.6, min_macro_f1=0.6))
    assert outcome.passed and outcome.reasons == []


def test_gate_names_every_failed_threshold() -> None:
    outcome = check_gate(
        METRICS,
        GateConfig(
            min_balanced_accuracy=0.8,
            min_macro_f1=0.7,
            min_class_sensitivity=0.6,
            max_calibration_error=0.05,
        ),
    )
    assert not outcome.passed
    text = "\n".join(outcome.reasons)
    for metric in (
        "balanced_accuracy",
        "macro_f1",
        "min_class_sensitivity",
        "expected_calibration_error",
    ):
        assert f"candidate model {metric}" in text
    assert len(outcome.reasons) == 4


def test_non_inferiority_against_the_champion() -> None:
    champion = copy.deepcopy(METRICS)
    champion["per_class"]["b"]["sensitivity"] = 0.6
    gate = GateConfig(max_sensitivity_drop=0.05)
    outcome = check_gate(METRICS, gate, champion)
    assert outcome.reasons == [
        "sensitivity of b 0.500 is more than 0.050 below the champion's 0.600"
    ]
    assert check_gate(METRICS, GateConfig(max_sensitivity_drop=0.2), champion).passed
    champion["overall"]["macro_f1"] = 0.7
    assert "below the champion's 0.700" in check_gate(METRICS, gate, champion).reasons[-1]
