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
