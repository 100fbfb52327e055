"""Class-conditional prediction sets: the served rule is crepes' rule, and the guarantee holds
for every class where one threshold for all classes fails the rare one."""

from __future__ import annotations

import numpy as np
import pytest

from medml.conformal import (
    ClassConditionalSets,
    crepes_sets,
    fit_sets,
    marginal_sets,
    sentence,
    set_metrics,
)


def test_the_served_rule_gives_crepes_sets_exactly_with_ties_and_small_classes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        k, n = int(rng.integers(2, 6)), int(rng.integers(3, 300))
        proba = np.round(rng.dirichlet(np.ones(k), n), int(rng.integers(1, 4)))  # many ties
        y = rng.integers(0, k, n)
        alpha = float(rng.choice([0.05, 0.1, 0.2, 0.5]))
        sets, fitted = fit_sets(proba, y, [f"c{i}" for i in range(k)], alpha)
        new = np.round(rng.dirichlet(np.ones(k), 300), 2)
        np.testing.assert_array_equal(sets.contains(new), crepes_sets(fitted, new, alpha))


def _model_outputs(counts: list[int], hardness: list[float], seed: int):
    """A classifier's calibrated-looking outputs: the true class's logit raised by a class's
    ease, so a rare, hard class gets lower scores on its own images."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(counts)), counts)
    logits = rng.normal(0, 1, (len(y), len(counts)))
    logits[np.arange(len(y)), y] += np.array(hardness)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return proba, y


def test_every_class_is_covered_where_one_threshold_misses_the_rare_class() -> None:
    counts, ease = [3000, 3000, 3000, 300], [3.0, 3.0, 3.0, 1.2]  # 10:1, the rare one harder
    classes = ["Normal", "Cyst", "Stone", "Tumor"]
    cal_p, cal_y = _model_outputs(counts, ease, seed=1)
    test_p, test_y = _model_outputs([c // 2 for c in counts], ease, seed=2)
    sets, _ = fit_sets(cal_p, cal_y, classes, alpha=0.1)
    mondrian = set_metrics(sets.contains(test_p), test_y, classes, min_support=20)
    plain = set_metrics(marginal_sets(cal_p, cal_y, test_p, 0.1), test_y, classes, 20)
    for name in classes:  # >= 150 holdout images each
        print(
            f"{name}: class-conditional {mondrian['per_class'][name]['coverage']:.3f}, "
            f"one threshold {plain['per_class'][name]['coverage']:.3f}"
        )
        assert abs(mondrian["per_class"][name]["coverage"] - 0.9) <= 0.05
    assert plain["per_class"]["Tumor"]["coverage"] < 0.85  # the rare class pays for the rest
    assert plain["coverage"] >= 0.88  # though on average it looks fine


def test_a_class_too_small_to_bound_is_in_every_set_and_the_output_reads_plainly() -> None:
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]] + [[0.95, 0.05]] * 20)
    y = np.array([0, 0, 1] + [0] * 20)  # one image of B: no finite bound at alpha 0.1
    sets, _ = fit_sets(proba, y, ["A", "B"], alpha=0.1)
    assert sets.score_thresholds[1] is None and sets.score_thresholds[0] is not None
    assert sets.labels(np.array([[0.99, 0.01], [0.2, 0.8]])) == ["A|B", "B"]
    again = ClassConditionalSets.from_serving(sets.serving())
    assert again == sets
    inside = np.array([[True, False], [True, True], [False, False], [False, True]])
    scores = set_metrics(inside, np.array([0, 1, 0, 1]), ["A", "B"], min_support=20)
    assert scores["per_class"]["A"]["coverage"] == 0.5 and scores["per_class"]["B"]["n"] == 2
    assert scores["per_class"]["A"]["ci95"] == pytest.approx([0.0126, 0.9874], abs=1e-3)
    assert scores["mean_set_size"] == 1.0 and scores["singletons"] == 0.5
    assert scores["singleton_accuracy"] == 1.0 and scores["empty"] == 0.25
    assert scores["refer"] == 0.5
    report = {"target_coverage": 0.9, "calibrated_on": "the cut", "holdout": scores,
              "one_threshold": scores}  # fmt: skip
    assert "lowest class coverage 0.500 (A, n=2)" in sentence(report)


def test_the_bound_is_split_conformals_quantile_at_the_edge_cases() -> None:
    """Class y is in when 1 - p_y <= the ceil((n + 1)(1 - alpha))-th smallest calibration
    score (Vovk; Angelopoulos & Bates): at n = 1 / alpha - 1 that is the largest, not 'always'."""
    rng = np.random.default_rng(3)
    for alpha, n in ((0.1, 9), (0.1, 19), (0.2, 4), (0.05, 19), (0.1, 8), (0.25, 3)):
        proba = rng.dirichlet(np.ones(2), n)
        sets, _ = fit_sets(proba, np.zeros(n, int), ["A", "B"], alpha)
        k = int(np.ceil((n + 1) * (1 - alpha) - 1e-9))
        expected = None if k > n else float(np.sort(1 - proba[:, 0])[k - 1])
        assert sets.score_thresholds[0] == expected, (alpha, n)


def test_patients_are_the_units_when_their_images_are_alike() -> None:
    """Four alike images per patient: calibrating on images treats them as four draws and
    under-covers new patients' images; one score per patient (its worst image) keeps the
    guarantee."""
    rng = np.random.default_rng(5)

    def patients(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        shift = np.repeat(rng.normal(0, 1.5, n), 4)  # how hard the patient is, shared
        margin = 1.5 + shift + rng.normal(0, 0.3, 4 * n)
        p = 1 / (1 + np.exp(-margin))
        return np.stack([p, 1 - p], axis=1), np.zeros(4 * n, int), np.repeat(np.arange(n), 4)

    by_image, by_patient = [], []
    for _ in range(300):  # six calibration patients of the class, 80% wanted
        cal_p, cal_y, cal_g = patients(6)
        new_p, _, _ = patients(40)
        for groups, out in ((None, by_image), (cal_g, by_patient)):
            sets, _ = fit_sets(cal_p, cal_y, ["A", "B"], 0.2, groups)
            out.append(sets.contains(new_p)[:, 0].mean())
    print(
        f"coverage of new patients' images (target 0.8): calibrated by image "
        f"{np.mean(by_image):.3f}, by patient {np.mean(by_patient):.3f}"
    )
    assert np.mean(by_patient) >= 0.8 > np.mean(by_image)


def test_refer_unless_the_set_is_exactly_the_call_made() -> None:
    from medml.serving import MedmlClassifier

    model = MedmlClassifier()
    model.classes = ["NORMAL", "PNEUMONIA"]
    model.prediction_sets = ClassConditionalSets(model.classes, 0.1, [0.5, 0.5])
    proba = np.array([[0.9, 0.1], [0.52, 0.48], [0.3, 0.7], [0.5, 0.5]])
    table = model.table(proba, ["", "", "", "unreadable"])
    assert table["prediction_set"].tolist() == ["NORMAL", "NORMAL", "PNEUMONIA", ""]
    assert table["refer"].tolist() == [False, False, False, None]
    model.operating_point = {"positive_class": "PNEUMONIA", "threshold": 0.4}
    table = model.table(proba, ["", "", "", "unreadable"])  # 0.48 >= 0.4: decided PNEUMONIA
    assert table["decision"].tolist() == ["NORMAL", "PNEUMONIA", "PNEUMONIA", ""]
    assert table["refer"].tolist() == [False, True, False, None]  # the set says NORMAL
