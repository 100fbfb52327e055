"""Typed holdout metrics and the declarative gate (thresholds keyed by metric name)."""

from __future__ import annotations

import dataclasses

import pytest

from medml.config import GateConfig, load_recipe
from medml.errors import ConfigError
from medml.metrics import HoldoutMetrics, check_gate


def _metrics(**overrides: float) -> HoldoutMetrics:
    overall = {"balanced_accuracy": 0.7, "macro_f1": 0.65, "expected_calibration_error": 0.08,
               "accuracy": 0.8, "roc_auc_ovr_macro": 0.9, "cohen_kappa": 0.5, "n": 20}  # fmt: skip
    overall |= overrides
    keys = ("sensitivity", "specificity", "ppv", "npv", "f1")
    per_class = {"a": dict(zip(keys, (0.9, 0.5, 0.6, 0.9, 0.7), strict=True)),
                 "b": dict(zip(keys, (0.5, 0.9, 0.8, 0.6, 0.6), strict=True))}  # fmt: skip
    return HoldoutMetrics(["a", "b"], overall, per_class, [[9, 1], [5, 5]])


def _gate(**sections: dict) -> GateConfig:
    """A gate of these sections only (the chance rule has its own tests below)."""
    return GateConfig.model_validate({"require_better_than_chance": False, **sections})


def test_the_default_gate_requires_better_than_chance_with_confidence() -> None:
    gate = GateConfig()  # what a recipe without a gate section gets
    assert check_gate(_metrics(), gate).reasons == [
        "class_sensitivity of b 0.500 is at or below chance (0.500)"
    ]
    confident = _metrics()
    confident.per_class["b"]["sensitivity"] = 0.6
    assert check_gate(confident, gate).passed  # no interval: the point estimate decides
    unsure = HoldoutMetrics(
        confident.classes,
        confident.overall,
        confident.per_class,
        confident.confusion_matrix,
        ci95={"balanced_accuracy": [0.48, 0.9]},
    )
    assert check_gate(unsure, gate).reasons == [
        "balanced_accuracy 0.700 (95% CI lower bound 0.480) is not above chance "
        "(0.500 for 2 classes)"
    ]
    recipe_thresholds = GateConfig.model_validate({"thresholds": {"macro_f1": {"min": 0.7}}})
    assert check_gate(unsure, recipe_thresholds).reasons[1:] == [
        "macro_f1 0.650 is below the minimum 0.700"  # recipe thresholds add to the chance rule
    ]


def test_gate_passes_within_thresholds() -> None:
    gate = _gate(thresholds={"balanced_accuracy": {"min": 0.6}, "macro_f1": {"min": 0.6}})
    outcome = check_gate(_metrics(), gate)
    assert outcome.passed and outcome.reasons == []


def test_gate_names_every_failed_threshold_and_each_failing_class() -> None:
    gate = _gate(thresholds={
        "balanced_accuracy": {"min": 0.8}, "macro_f1": {"min": 0.7},
        "min_class_sensitivity": {"min": 0.6}, "expected_calibration_error": {"max": 0.05},
        "class_sensitivity": {"min": 0.6},
    })  # fmt: skip
    outcome = check_gate(_metrics(), gate)
    assert outcome.reasons == [
        "balanced_accuracy 0.700 is below the minimum 0.800",
        "macro_f1 0.650 is below the minimum 0.700",
        "min_class_sensitivity 0.500 is below the minimum 0.600",
        "expected_calibration_error 0.080 is above the maximum 0.050",
        "class_sensitivity of b 0.500 is below the minimum 0.600",
    ]


def test_non_inferiority_against_the_champion_uses_each_metrics_direction() -> None:
    champion = _metrics(expected_calibration_error=0.02)
    champion.per_class["b"]["sensitivity"] = 0.6
    gate = _gate(non_inferiority={"class_sensitivity": 0.05, "expected_calibration_error": 0.05})
    assert check_gate(_metrics(), gate, champion).reasons == [
        "class_sensitivity of b 0.500 is more than 0.050 worse than the champion's 0.600 on the "
        "same holdout",
        "expected_calibration_error 0.080 is more than 0.050 worse than the champion's 0.020 on "
        "the same holdout",
    ]
    relaxed = _gate(non_inferiority={"class_sensitivity": 0.2, "expected_calibration_error": 0.1})
    assert check_gate(_metrics(), relaxed, champion).passed


def test_unknown_gate_metric_suggests_a_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown metric 'balanced_acc'; did you mean "
                                          r"'balanced_accuracy'\?"):  # fmt: skip
        load_recipe("kidney-ct", overrides=["registry.gate.thresholds.balanced_acc.min=0.5"])
    with pytest.raises(ConfigError, match="give min, max or both"):
        load_recipe("kidney-ct", overrides=["registry.gate.thresholds.macro_f1={}"])


def test_metrics_json_round_trip(tmp_path) -> None:
    metrics = _metrics().with_folds([{"balanced_accuracy": 0.6, "macro_f1": 0.5}])
    path = metrics.write(tmp_path / "metrics.json")
    assert HoldoutMetrics.read(path) == metrics
    assert metrics.loggable()["test_fold0_macro_f1"] == 0.5


def _counted(found: list[int], support: list[int], minimum: int = 20) -> HoldoutMetrics:
    """Binary metrics whose class i found ``found[i]`` of its ``support[i]`` images (the
    misses called the other class)."""
    (fa, fb), (na, nb) = found, support
    cm = [[fa, na - fa], [nb - fb, fb]]
    rates = {"specificity": 0.9, "ppv": 0.8, "npv": 0.8, "f1": 0.8}
    per_class = {c: {"sensitivity": f / n, **rates, "support": n}
                 for c, f, n in zip("ab", found, support, strict=True)}  # fmt: skip
    overall = {"balanced_accuracy": (fa / na + fb / nb) / 2, "macro_f1": 0.8, "accuracy": 0.8,
               "roc_auc_ovr_macro": 0.9, "cohen_kappa": 0.5, "expected_calibration_error": 0.05,
               "n": na + nb}  # fmt: skip
    return HoldoutMetrics(["a", "b"], overall, per_class, cm, min_class_support=minimum)


def test_a_class_with_enough_images_must_beat_chance_by_its_exact_interval() -> None:
    gate = GateConfig()
    # b: 12/20 = 0.600 is above chance (0.5) as a point, but its exact interval is 0.361-0.809
    assert check_gate(_counted([45, 12], [50, 20]), gate).reasons == [
        "class_sensitivity of b 0.600 (exact 95% CI 0.361-0.809) is not above chance (0.500) "
        "with confidence"
    ]
    assert check_gate(_counted([45, 15], [50, 20]), gate).passed  # 15/20: 0.508-0.913


def test_a_class_too_few_to_judge_is_noted_not_failed_but_still_held_to_the_floor() -> None:
    gate = GateConfig()
    small = check_gate(_counted([45, 3], [50, 3]), gate)  # 3/3: 0.292-1.000 includes 0.5
    assert small.passed and small.reasons == []
    assert small.notes == [
        "b: too few to judge (3 images, fewer than evaluate.min_class_support=20, sensitivity "
        "95% CI 0.292-1.000); held to the point-estimate floor only"
    ]
    missed = check_gate(_counted([45, 0], [50, 4]), gate)  # 0/4: the point is at chance
    assert missed.reasons[-1] == "class_sensitivity of b 0.000 is at or below chance (0.500)"
    # the same 12/20 judged by its interval once the recipe's minimum is above 20
    relaxed = check_gate(_counted([45, 12], [50, 20], minimum=21), gate)
    assert relaxed.passed and [note.split(":")[0] for note in relaxed.notes] == ["b"]


def test_a_passing_version_worse_than_the_current_challenger_does_not_take_the_alias() -> None:
    """Issue: `challenger` moved to the newest passing version although it was worse than the
    current challenger (0.925 replaced 0.972)."""
    from medml.registry import ChampionScore, _kept_challenger

    recipe = load_recipe("kidney-ct")
    current = _metrics(macro_f1=0.972)
    kept = _kept_challenger(_metrics(macro_f1=0.925), recipe, ChampionScore("3", current))
    assert kept.startswith("challenger stays on v3: this version passed its gate but is worse")
    assert "macro_f1 0.925 is more than 0.000 worse than challenger v3's 0.972" in kept
    assert _kept_challenger(_metrics(macro_f1=0.98), recipe, ChampionScore("3", current)) == ""
    unscorable = ChampionScore("3", error="other classes")
    assert _kept_challenger(_metrics(), recipe, unscorable) == ""  # the newer version wins
    assert _kept_challenger(_metrics(), recipe, None) == ""


def test_the_optional_beats_baseline_gate_needs_a_measurably_better_model() -> None:
    gate = _gate(beats_baseline=True)
    unclear = {"verdict": "not measurably better", "difference": 0.01,
               "difference_ci95": [-0.04, 0.06]}  # fmt: skip
    assert check_gate(_metrics(), gate, baseline=unclear).reasons == [
        "beats_baseline: balanced accuracy +0.010 against the baseline (paired 95% CI -0.040 to "
        "+0.060) is not measurably better"
    ]
    better = unclear | {"verdict": "better", "difference_ci95": [0.01, 0.06]}
    assert check_gate(_metrics(), gate, baseline=better).passed
    assert "needs a holdout" in check_gate(_metrics(), gate).reasons[0]
    assert check_gate(_metrics(), _gate(), baseline=unclear).passed  # off by default


def test_out_of_fold_and_holdout_estimates_that_disagree_are_named() -> None:
    """Issue: OOF balanced accuracy 0.644 (single fold models) against the ensemble's holdout
    0.789, with disjoint intervals, was shown without comment."""
    from medml.metrics import estimates_disagree

    oof = _metrics(balanced_accuracy=0.644)
    oof.ci95["balanced_accuracy"] = [0.60, 0.69]
    # (as evaluation writes it: clinical_metrics labels the OOF metrics "holdout" too)
    holdout = _metrics(balanced_accuracy=0.789)
    holdout.ci95["balanced_accuracy"] = [0.74, 0.83]
    said = estimates_disagree(oof, holdout)
    assert said.startswith("the out-of-fold balanced_accuracy 0.644 (0.600-0.690, single fold")
    assert "disagree beyond their 95% intervals" in said
    holdout.ci95["balanced_accuracy"] = [0.68, 0.83]  # overlapping: nothing to say
    assert estimates_disagree(oof, holdout) == ""
    holdout.ci95["balanced_accuracy"] = [0.74, 0.83]  # cross-validation only: no holdout
    assert estimates_disagree(oof, dataclasses.replace(holdout, estimate="out-of-fold")) == ""


def test_a_missing_or_nan_value_cannot_show_non_inferiority() -> None:
    from medml.metrics import inferior_reasons

    reference = _metrics()
    candidate = _metrics(macro_f1=float("nan"))
    gate = _gate(non_inferiority={"macro_f1": 0.0})
    assert inferior_reasons(candidate, reference, gate, "challenger v2") == [
        "macro_f1: non-inferiority cannot be shown (a value is missing)"]  # fmt: skip


def test_the_operating_point_gate_bounds_the_rates_at_the_binary_threshold() -> None:
    import numpy as np

    from medml.evaluate import exact_at_threshold
    from medml.metrics import operating_point_reasons

    # 20 positives, 17 scored above the threshold; 30 negatives, 24 below it
    p_positive = np.r_[np.full(17, 0.9), np.full(3, 0.1), np.full(24, 0.1), np.full(6, 0.9)]
    positive = np.r_[np.ones(20, bool), np.zeros(30, bool)]
    point = {"positive_class": "b", "threshold": 0.4, "holdout": exact_at_threshold(
        p_positive, positive, 0.4)}  # fmt: skip
    gate = _gate(operating_point={"sensitivity": {"min": 0.9}, "specificity": {"min": 0.75}})
    outcome = check_gate(_metrics(), gate, operating_point=point)
    # 17/20 = 0.85, exact (Clopper-Pearson) 0.621-0.968; 24/30 = 0.8 passes
    assert outcome.reasons == ["sensitivity at b >= 0.400 0.850 (exact 95% CI 0.621-0.968) is "
                               "below the minimum 0.900"]  # fmt: skip
    assert check_gate(_metrics(), _gate(operating_point={"sensitivity": {"min": 0.85}}),
                      operating_point=point).passed  # fmt: skip
    # no holdout (cross-validation only) or no operating point: the bound cannot be shown
    assert operating_point_reasons({**point, "holdout": None}, gate.operating_point)
    assert not check_gate(_metrics(), gate, operating_point=None).passed
    assert check_gate(_metrics(), _gate(), operating_point=None).passed  # not asked for


def test_operating_point_bounds_need_a_binary_recipe_with_a_positive_class() -> None:
    bound = ["registry.gate.operating_point.sensitivity.min=0.9"]
    with pytest.raises(ConfigError, match="set evaluate.positive_class"):
        load_recipe("kidney-ct", overrides=bound)
    recipe = load_recipe("chest-xray", overrides=bound)
    assert recipe.registry.gate.operating_point["sensitivity"].min == 0.9
    with pytest.raises(ConfigError, match="operating_point"):
        load_recipe("chest-xray", overrides=["registry.gate.operating_point.recall.min=0.9"])


@pytest.mark.parametrize("bound", ["min=nan", "min=inf", "min=1.5", "max=-1"])
def test_an_operating_point_bound_that_can_never_hold_is_refused(bound: str) -> None:
    with pytest.raises(ConfigError, match="operating_point"):
        load_recipe("chest-xray", overrides=[f"registry.gate.operating_point.sensitivity.{bound}"])
