"""Calibrated probabilities and the clinical operating point, both fitted out-of-fold.

Neither ever looks at the holdout: each training image's out-of-fold prediction comes from the
one fold model that did not train on it, so these predictions are honest estimates of how the
models behave on new images, and the holdout stays an untouched test of the result.

- **Temperature scaling** (Guo et al., 2017): one scalar ``T`` divides the log-probabilities
  before the softmax; fitted by minimising the negative log-likelihood of the out-of-fold
  predictions. It changes no argmax (so no label), only how confident the probabilities are.
  The registered model applies it (:mod:`medml.serving`).
- **Operating point** (binary recipes): the decision threshold on the positive class's
  calibrated probability that reaches the recipe's target sensitivity out-of-fold; the holdout
  then reports sensitivity, specificity and PPV at that threshold with bootstrap intervals, and
  the served model returns its decision as well as the probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from medml.evaluation_facts import EvaluationFacts

_EPS = 1e-12


@dataclass(frozen=True)
class ServingCalibration:
    """What the registered model applies: the temperature, a binary recipe's operating point
    (``{"positive_class", "threshold"}``) or ``None``, and the class-conditional prediction
    sets' rule (:meth:`medml.conformal.ClassConditionalSets.serving`) or ``None``."""

    temperature: float = 1.0
    operating_point: dict[str, Any] | None = None
    prediction_sets: dict[str, Any] | None = None

    @classmethod
    def from_evaluation(cls, facts: EvaluationFacts) -> ServingCalibration:
        """From an evaluation's temperature, (binary) operating point and prediction sets."""
        point = facts.operating_point
        sets = facts.conformal.get("rule") if facts.conformal else None
        return cls(facts.calibration.temperature, point.serving() if point else None, sets)


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(proba) / T)``, row by row."""
    if temperature == 1.0:
        return proba
    logits = np.log(np.clip(proba, _EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


TEMPERATURE_BOUNDS = (0.05, 20.0)


def at_bound(temperature: float) -> bool:
    """Whether a fitted temperature sits at a bound of its search: the likelihood kept
    improving past it (e.g. a small set the model gets all right, where sharpening without
    limit always helps), so the value is not an estimate."""
    return any(abs(np.log(temperature / bound)) < 1e-3 for bound in TEMPERATURE_BOUNDS)


def fit_temperature(proba: np.ndarray, y_true: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``y_true``
    (searched over ``T`` in :data:`TEMPERATURE_BOUNDS` on a log scale)."""
    from scipy.optimize import minimize_scalar

    y_true = np.asarray(y_true, dtype=np.int64)

    def nll(log_t: float) -> float:
        scaled = apply_temperature(proba, float(np.exp(log_t)))
        return float(-np.log(np.clip(scaled[np.arange(len(y_true)), y_true], _EPS, 1.0)).mean())

    low, high = TEMPERATURE_BOUNDS
    found = minimize_scalar(nll, bounds=(np.log(low), np.log(high)), method="bounded")
    return float(np.exp(found.x))


def operating_threshold(p_positive: np.ndarray, positive: np.ndarray, target: float) -> float:
    """The highest threshold on ``p_positive`` whose sensitivity is at least ``target``
    (decide positive when ``p >= threshold``).

    Raises:
        ValueError: there are no positive examples to choose it on.
    """
    scores = np.sort(np.asarray(p_positive)[np.asarray(positive, dtype=bool)])
    if not len(scores):
        raise ValueError("no positive out-of-fold examples to choose the operating point on")
    misses_allowed = int(np.floor((1.0 - target) * len(scores) + 1e-9))
    return float(scores[misses_allowed])


def at_threshold(
    p_positive: np.ndarray, positive: np.ndarray, threshold: float, *, bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Sensitivity, specificity and PPV of deciding ``p >= threshold``, with bootstrap 95%
    intervals."""
    positive = np.asarray(positive, dtype=bool)
    decided = np.asarray(p_positive) >= threshold

    def rates(truth: np.ndarray, guess: np.ndarray) -> tuple[float, float, float]:
        tp = np.sum(truth & guess, axis=-1)
        fn = np.sum(truth & ~guess, axis=-1)
        tn = np.sum(~truth & ~guess, axis=-1)
        fp = np.sum(~truth & guess, axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return tp / (tp + fn), tn / (tn + fp), tp / (tp + fp)

    point = rates(positive, decided)
    result: dict[str, Any] = {"threshold": float(threshold), "n": int(len(positive))}
    names = ("sensitivity", "specificity", "ppv")
    for name, value in zip(names, point, strict=True):
        result[name] = None if np.isnan(value) else float(value)
    if bootstrap:
        draws = np.random.default_rng(seed).integers(0, len(positive), (bootstrap, len(positive)))
        for name, values in zip(names, rates(positive[draws], decided[draws]), strict=True):
            values = values[~np.isnan(values)]
            low, high = np.percentile(values, [2.5, 97.5]) if len(values) else (None, None)
            result[f"{name}_ci95"] = [None if low is None else float(low),
                                      None if high is None else float(high)]  # fmt: skip
    return result
