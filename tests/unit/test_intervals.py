"""Intervals that are right at any n: exact per-class rates, a stratified bootstrap for the
composite scores, and classes too few to judge flagged wherever they are shown."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medml.config import EvaluateConfig, load_recipe
from medml.evaluate import (
    Scored,
    clinical_metrics,
    exact_at_threshold,
    expected_calibration_error,
    operating_point,
    stratified_weights,
    weighted_roc_auc,
)
from medml.metrics import MIN_CLASS_SUPPORT, HoldoutMetrics, exact_interval

# Clopper-Pearson 95% references computed independently of medml. With 0 or n successes the
# bounds have a closed form: 0/n -> [0, 1 - 0.025**(1/n)], n/n -> [0.025**(1/n), 1]; 5/10 and
# 3/7 are R's binom.test(5, 10) and binom.test(3, 7) (the same beta quantiles).
REFERENCE = {
    (3, 3): (0.292, 1.000),  # 0.025 ** (1 / 3) = 0.2924
    (0, 4): (0.000, 0.602),  # 1 - 0.025 ** (1 / 4) = 0.6024
    (4, 4): (0.398, 1.000),  # 0.025 ** (1 / 4) = 0.3976
    (5, 10): (0.187, 0.813),  # 0.1870860 0.8129140
    (3, 7): (0.099, 0.816),  # 0.09898828 0.81594843
}


@pytest.mark.parametrize(("counts", "expected"), REFERENCE.items(), ids=str)
def test_exact_intervals_match_clopper_pearson(counts: tuple[int, int], expected: tuple) -> None:
    assert exact_interval(*counts) == pytest.approx(expected, abs=5e-4)


def test_no_trials_no_interval() -> None:
    assert exact_interval(0, 0) == [None, None]


def _three_of_three_and_none_of_four() -> tuple[np.ndarray, np.ndarray]:
    """Class a: 3 images, all found; class b: 4 images, none found (all called a)."""
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    proba = np.tile([0.8, 0.2], (7, 1))
    return y, proba


def test_holdout_metrics_give_every_rate_its_exact_interval(tmp_path) -> None:
    y, proba = _three_of_three_and_none_of_four()
    m = clinical_metrics(y, proba, ["a", "b"], bootstrap=200)
    assert m.per_class["a"]["sensitivity"] == 1.0 and m.per_class["b"]["sensitivity"] == 0.0
    assert m.interval("sensitivity", "a") == pytest.approx(REFERENCE[3, 3], abs=5e-4)
    assert m.interval("sensitivity", "b") == pytest.approx(REFERENCE[0, 4], abs=5e-4)
    assert m.interval("specificity", "a") == pytest.approx(REFERENCE[0, 4], abs=5e-4)  # 0/4
    assert m.interval("specificity", "b") == pytest.approx(REFERENCE[3, 3], abs=5e-4)  # 3/3
    assert m.interval("ppv", "a") == pytest.approx(REFERENCE[3, 7], abs=5e-4)  # 3 of 7 called a
    assert m.interval("ppv", "b") == [None, None]  # nothing called b
    assert m.interval("npv", "a") == [None, None]
    assert m.interval("npv", "b") == pytest.approx(REFERENCE[3, 7], abs=5e-4)
    written = m.write(tmp_path / "metrics.json")
    data = HoldoutMetrics.read(written).to_dict()
    assert data["too_few_to_judge"] == ["a", "b"] and data["min_class_support"] == 20
    assert set(data["ci95"]) >= {"sensitivity", "specificity", "ppv", "npv", "method"}


def test_the_minimum_support_is_a_setting() -> None:
    assert EvaluateConfig().min_class_support == MIN_CLASS_SUPPORT == 20
    recipe = load_recipe("kidney-ct", overrides=["evaluate.min_class_support=4"])
    y, proba = _three_of_three_and_none_of_four()
    m = clinical_metrics(y, proba, ["a", "b"], bootstrap=0,
                         min_class_support=recipe.evaluate.min_class_support)  # fmt: skip
    assert m.too_few_to_judge == ["a"]  # 3 images < 4; b has 4


def test_stratified_bootstrap_keeps_every_class_at_its_count() -> None:
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    for weights in stratified_weights(y, 500, np.random.default_rng(0)):
        for c, count in enumerate(np.bincount(y)):
            assert (weights[:, y == c].sum(axis=1) == count).all()


def test_balanced_accuracy_interval_does_not_collapse_at_three_per_class() -> None:
    y = np.repeat([0, 1, 2], 3)
    predicted = np.array([0, 0, 0, 1, 1, 2, 2, 0, 1])  # 3/3, 2/3, 1/3 found
    proba = np.full((9, 3), 0.1)
    proba[np.arange(9), predicted] = 0.8
    m = clinical_metrics(y, proba, ["a", "b", "c"], bootstrap=1000, seed=3)
    low, high = m.interval("balanced_accuracy")
    assert m.overall["balanced_accuracy"] == pytest.approx(2 / 3)
    assert high - low > 0.2 and low <= 2 / 3 <= high
    assert m.interval("macro_f1")[1] > m.interval("macro_f1")[0]
    assert m.interval("sensitivity", "a") == pytest.approx(REFERENCE[3, 3], abs=5e-4)


def test_bootstrap_scores_agree_with_the_point_estimates_at_unit_weights() -> None:
    rng = np.random.default_rng(1)
    for k in (2, 4):
        y = rng.integers(0, k, 200)
        logits = np.round(rng.normal(size=(200, k)), 1)  # rounded: ties in the scores
        logits[np.arange(200), y] += 1.0
        proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        reference = (roc_auc_score(y, proba[:, 1]) if k == 2
                     else roc_auc_score(y, proba, multi_class="ovr", average="macro"))  # fmt: skip
        assert weighted_roc_auc(y, proba, np.ones((1, 200)))[0] == pytest.approx(reference)
        drawn = rng.integers(0, 200, 200)  # a resample as weights = the resample itself
        weights = np.bincount(drawn, minlength=200)[None].astype(float)
        resampled = (roc_auc_score(y[drawn], proba[drawn, 1]) if k == 2 else roc_auc_score(
            y[drawn], proba[drawn], multi_class="ovr", average="macro"))  # fmt: skip
        assert weighted_roc_auc(y, proba, weights)[0] == pytest.approx(resampled)
        m = clinical_metrics(y, proba, [str(c) for c in range(k)], bootstrap=300)
        for name in ("balanced_accuracy", "macro_f1", "roc_auc_ovr_macro"):
            low, high = m.interval(name)
            assert low <= m.overall[name] <= high, name
        assert m.overall["expected_calibration_error"] == expected_calibration_error(y, proba)


def test_operating_point_rates_get_exact_intervals() -> None:
    """4 positives, all found at the threshold: sensitivity 1.0 with 0.398-1.000, not 1-1."""
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.3, 0.2, 0.1, 0.05, 0.01])
    positive = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    rates = exact_at_threshold(p, positive, 0.55)
    assert rates["sensitivity"] == 1.0 and rates["ppv"] == 1.0 and rates["specificity"] == 1.0
    assert rates["sensitivity_ci95"] == pytest.approx(REFERENCE[4, 4], abs=5e-4)
    assert rates["ppv_ci95"] == pytest.approx(REFERENCE[4, 4], abs=5e-4)
    assert rates["too_few_to_judge"] == ["sensitivity", "specificity", "ppv"]
    assert rates["counts"] == {"tp": 4, "fn": 0, "tn": 6, "fp": 0}
    assert exact_at_threshold(p, positive, 0.55, min_support=5)["too_few_to_judge"] == [
        "sensitivity", "ppv"]  # fmt: skip


def test_the_binary_operating_point_file_carries_exact_intervals() -> None:
    recipe = load_recipe("chest-xray")  # positive class PNEUMONIA (index 1)
    oof_y = np.array([0] * 6 + [1] * 6)
    oof_p = np.linspace(0.05, 0.95, 12)
    oof_proba = np.stack([1 - oof_p, oof_p], axis=1)
    oof = Scored(oof_y, oof_proba, oof_proba)
    y_true = np.array([0, 0, 0, 1, 1, 1, 1])
    calibrated = np.stack([1 - np.array([0.1, 0.2, 0.3, 0.9, 0.9, 0.95, 0.99]),
                           [0.1, 0.2, 0.3, 0.9, 0.9, 0.95, 0.99]], axis=1)  # fmt: skip
    point = operating_point(recipe, oof, None, Scored(y_true, calibrated, calibrated))
    held = point["holdout"]
    assert held["sensitivity"] == 1.0
    assert held["sensitivity_ci95"] == pytest.approx(REFERENCE[4, 4], abs=5e-4)
    assert held["specificity_ci95"] == pytest.approx(REFERENCE[3, 3], abs=5e-4)
    assert "sensitivity" in held["too_few_to_judge"]
    assert point["oof"]["sensitivity_ci95"][0] is not None
    # 6 out-of-fold positives (fewer than 20) chose the threshold: provisional, and said so
    assert point["positives"] == 6
    assert point["warning"].startswith("chosen on only 6 out-of-fold PNEUMONIA images")


def test_the_summary_and_the_review_flag_classes_too_few_to_judge() -> None:
    from medml.metrics import registered_metrics
    from medml.report import _per_class_table
    from medml.review import Side, _per_class, _table

    y = np.array([0] * 25 + [1] * 3)
    proba = np.tile([0.7, 0.3], (28, 1))
    proba[-3:] = [0.2, 0.8]  # b: 3/3 found
    m = clinical_metrics(y, proba, ["a", "b"], bootstrap=100)
    table = _per_class_table(m)
    assert "sensitivity 95% CI" in table[0]
    assert table[2].endswith("0.292-1.000       too few to judge")  # b's row
    assert "too few" not in table[1] and table[1].endswith("0.863-1.000")  # a: 25/25
    assert any(line.startswith("  too few to judge: fewer than 20 images") for line in table)
    sensitivity = next(
        s for s in registered_metrics(per_class=True) if s.short_name == "sensitivity"
    )
    side = Side("3", {}, m, {})
    assert _per_class(side, sensitivity, "b") == "1.000 [0.29-1.00] (too few to judge)"
    assert _per_class(side, sensitivity, "a") == "1.000 [0.86-1.00]"
    lines = _table("x", side, None).splitlines()
    row = next(line for line in lines if line.startswith("sensitivity b "))
    assert row.split()[-1] == "-" and "(too few to judge)" in row
    assert len({line.rindex("-") for line in lines if line.startswith(("sensitivity", "f1"))}) == 1


def test_the_operating_point_is_chosen_on_the_calibration_cut_when_it_has_enough_positives() -> (
    None
):
    recipe = load_recipe("chest-xray")  # PNEUMONIA (index 1); min_class_support 20
    rng = np.random.default_rng(0)

    def scored(n_pos: int, n_neg: int, shift: float) -> Scored:
        p = np.clip(np.r_[rng.normal(0.7 + shift, 0.15, n_pos), rng.normal(0.3, 0.15, n_neg)],
                    0, 1)  # fmt: skip
        proba = np.stack([1 - p, p], axis=1)
        return Scored(np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)], proba, proba)

    oof, holdout = scored(2000, 2000, 0.0), scored(50, 50, 0.1)
    # 400 positives on the cut: 20 (min_class_support) may be missed at sensitivity 0.95, so
    # the threshold, a quantile of their scores, rests on 20 of them
    cut = scored(400, 400, 0.1)  # the ensemble is surer of its positives than single models
    point = operating_point(recipe, oof, cut, holdout)
    assert point["chosen_on"].startswith("the fold ensemble's output on the calibration cut")
    assert point["positives"] == 400 and "warning" not in point
    assert point["calibration_cut"]["sensitivity"] >= 0.95
    assert point["in_sample"] == "calibration_cut"  # met there by construction
    assert set(point) >= {"oof", "calibration_cut", "holdout"}
    few = scored(399, 400, 0.1)  # one positive short: out-of-fold's 2000 choose instead
    point = operating_point(recipe, oof, few, holdout)
    assert point["chosen_on"].startswith("out-of-fold") and point["positives"] == 2000
    assert point["in_sample"] == "oof"
    assert point["oof"]["sensitivity"] >= 0.95
