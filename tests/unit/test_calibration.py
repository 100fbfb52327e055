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
    fitted = calibrate(with_cut, index, recipe)
    temperature, cut = fitted.temperature, fitted.cut
    assert temperature == pytest.approx(fit_temperature(cut_outputs.mean(axis=0), cut_y))
    assert cut is not None and cut.calibrated.shape == (600, 3) and not fitted.warning
    no_cut = FoldPredictions(oof, holdout_outputs, np.zeros((3, 0, 3)))
    fallback = calibrate(no_cut, index.iloc[:0], recipe)
    single = fallback.temperature
    assert fallback.cut is None and single == pytest.approx(fit_temperature(oof.proba, oof.y))
    assert fallback.fitted_on.endswith("no calibration cut")
    averaged = holdout_outputs.mean(axis=0)  # what the registered ensemble outputs
    on_cut = expected_calibration_error(holdout_y, apply_temperature(averaged, temperature))
    on_singles = expected_calibration_error(holdout_y, apply_temperature(averaged, single))
    print(
        f"holdout ECE of the average: T from the cut {on_cut:.3f}, from single models "
        f"{on_singles:.3f}"
    )
    assert single > temperature  # single models need cooling that their average does not
    assert on_cut < 0.04 and on_singles > 3 * on_cut


def test_a_cut_the_ensemble_gets_all_right_cannot_fit_the_temperature_and_says_so() -> None:
    """26 images all right with top probability 0.55-0.8: sharpening always lowers their
    NLL, so the fit runs to its bound; the temperature is then fitted out-of-fold."""
    import pandas as pd

    from medml.calibration import at_bound
    from medml.config import load_recipe
    from medml.evaluate import FoldPredictions, OutOfFold, calibrate

    rng = np.random.default_rng(0)
    top = rng.uniform(0.55, 0.8, 26)
    easy = np.stack([top, (1 - top) * 0.6, (1 - top) * 0.4], axis=1)
    assert at_bound(fit_temperature(easy, np.zeros(26, int)))
    oof_outputs, oof_y = _fold_models(900, seed=4)
    folds = np.arange(900) % 3
    oof = OutOfFold(pd.DataFrame({"fold": folds}), oof_y, oof_outputs[folds, np.arange(900)])
    index = pd.DataFrame({"split": ["calibration"] * 26, "label_index": np.zeros(26, int)})
    fitted = calibrate(FoldPredictions(oof, np.zeros((3, 0, 3)), np.stack([easy] * 3)), index,
                       load_recipe("kidney-ct"))  # fmt: skip
    assert "ran to its bound (0.050)" in fitted.warning and "all right" in fitted.warning
    assert fitted.temperature == pytest.approx(fit_temperature(oof.proba, oof.y))
    assert fitted.fitted_on.startswith("out-of-fold predictions of 900 training images")
    off = calibrate(FoldPredictions(oof, np.zeros((3, 0, 3)), np.stack([easy] * 3)), index,
                    load_recipe("kidney-ct", overrides=["evaluate.calibrate=false"]))  # fmt: skip
    assert off.temperature == 1.0 and off.fitted_on is None and not off.warning
