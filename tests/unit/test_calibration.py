"""Temperature scaling and the operating point, on data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from medml.calibration import apply_temperature, at_threshold, fit_temperature, operating_threshold
from medml.evaluate import expected_calibration_error


def _overconfident(n: int = 4000, true_temperature: float = 2.5, seed: int = 0):
    """Labels drawn from softmax(z), predictions softmax(z * T): over-confident by T."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, 3))
    truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=p) for p in truth])
    sharp = np.exp(logits * true_temperature)
    return sharp / sharp.sum(axis=1, keepdims=True), y


def test_fit_temperature_recovers_the_overconfidence_and_lowers_ece() -> None:
    proba, y = _overconfident()
    temperature = fit_temperature(proba, y)
    assert temperature == pytest.approx(2.5, rel=0.1)
    calibrated = apply_temperature(proba, temperature)
    assert expected_calibration_error(y, calibrated) < expected_calibration_error(y, proba) / 3
    np.testing.assert_array_equal(calibrated.argmax(axis=1), proba.argmax(axis=1))  # no label moves
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)


def test_operating_threshold_reaches_the_target_sensitivity() -> None:
    rng = np.random.default_rng(1)
    positive = rng.random(1000) < 0.3
    p = np.clip(np.where(positive, rng.normal(0.7, 0.15, 1000), rng.normal(0.3, 0.15, 1000)), 0, 1)
    for target in (0.8, 0.95, 1.0):
        threshold = operating_threshold(p, positive, target)
        point = at_threshold(p, positive, threshold, bootstrap=200)
        assert point["sensitivity"] >= target
        assert operating_threshold(p, positive, target) == threshold  # deterministic
        low, high = point["specificity_ci95"]
        assert low <= point["specificity"] <= high
    strict, lenient = operating_threshold(p, positive, 0.99), operating_threshold(p, positive, 0.8)
    assert strict < lenient  # a higher target sensitivity needs a lower threshold
    with pytest.raises(ValueError, match="no positive"):
        operating_threshold(p, np.zeros(1000, bool), 0.9)


def _fold_models(n: int, seed: int, members: int = 3, noise: float = 1.5):
    """Labels drawn from softmax(z); each fold model outputs softmax(z + its own noise): on its
    own over-confident, and their average less confident than each one."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (n, 3))
    truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = (rng.random((n, 1)) > truth.cumsum(axis=1)).sum(axis=1)
    noisy = logits[None] + rng.normal(0, noise, (members, n, 3))
    outputs = np.exp(noisy) / np.exp(noisy).sum(axis=2, keepdims=True)
    return outputs, y


def test_the_temperature_is_fitted_on_the_ensembles_average_over_the_calibration_cut() -> None:
    import pandas as pd

    from medml.config import load_recipe
    from medml.evaluate import FoldPredictions, OutOfFold, calibrate

    recipe = load_recipe("chest-xray")
    oof_outputs, oof_y = _fold_models(3000, seed=1)
    folds = np.arange(3000) % 3  # each image scored by the one model that did not train on it
    oof = OutOfFold(pd.DataFrame({"fold": folds}), oof_y, oof_outputs[folds, np.arange(3000)])
    cut_outputs, cut_y = _fold_models(600, seed=2)
    holdout_outputs, holdout_y = _fold_models(3000, seed=3)
    index = pd.DataFrame({"split": ["calibration"] * 600, "label_index": cut_y})
    with_cut = FoldPredictions(oof, holdout_outputs, cut_outputs)
    temperature, cut = calibrate(with_cut, index, recipe)
    assert temperature == pytest.approx(fit_temperature(cut_outputs.mean(axis=0), cut_y))
    assert cut is not None and cut.calibrated.shape == (600, 3)
    no_cut = FoldPredictions(oof, holdout_outputs, np.zeros((3, 0, 3)))
    single, none = calibrate(no_cut, index.iloc[:0], recipe)
    assert none is None and single == pytest.approx(fit_temperature(oof.proba, oof.y))
    averaged = holdout_outputs.mean(axis=0)  # what the registered ensemble outputs
    on_cut = expected_calibration_error(holdout_y, apply_temperature(averaged, temperature))
    on_singles = expected_calibration_error(holdout_y, apply_temperature(averaged, single))
    print(
        f"holdout ECE of the average: T from the cut {on_cut:.3f}, from single models "
        f"{on_singles:.3f}"
    )
    assert single > temperature  # single models need cooling that their average does not
    assert on_cut < 0.04 and on_singles > 3 * on_cut
