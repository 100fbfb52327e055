"""Prediction sets with a coverage guarantee for every class: class-conditional ("Mondrian")
split conformal prediction, calibrated where the registered model has not trained.

A probability is not a guarantee. For a target coverage ``1 - alpha`` (``evaluate.conformal_
alpha``, default 0.1), each image gets the *set* of classes whose probability is not too low
for that class; the set holds the true class with probability at least ``1 - alpha`` **for
images of every class separately** (Vovk's Mondrian guarantee), provided the calibration
images of that class and the new ones are exchangeable. One threshold for all classes (plain
conformal, or thresholding the softmax) guarantees it only on average, and the rare class —
the one that matters — then gets the worst coverage. A set with more than one class (or none)
is an image to refer.

The calibration is crepes' (:class:`crepes.ConformalClassifier`, a well-kept implementation by
the method's authors' group, BSD-3): non-conformity score ``1 - p_y`` ("hinge"), the true class
as the Mondrian category, non-smoothed p-values (so a set is a deterministic function of the
probabilities). Chosen over MAPIE because MAPIE's class-conditional mode wraps a scikit-learn
estimator, while crepes takes the scores medml already has. The served model does not import
crepes: its rule — class ``y`` is in the set when ``1 - p_y`` is at most the ``K``-th largest
calibration score of class ``y``, for the smallest ``K >= 0`` with ``(K + 1) / (n_y + 1) >
alpha`` (``K = 0``: always in; fewer than ``1 / alpha - 1`` calibration units of it) — is the
p-value rule ``p_y > alpha`` on crepes' p-values solved for the score, and evaluation checks
the two agree on every holdout image. Images of one patient are not exchangeable units; with
patient groups, each patient gives one calibration score (:func:`fit_sets`).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

SET_SEPARATOR = "|"


def library() -> str:
    """Which conformal implementation calibrated the sets, for reports."""
    return (f"crepes {importlib.metadata.version('crepes')} (Mondrian ConformalClassifier: "
            "class-conditional, hinge scores 1 - p, non-smoothed p-values)")  # fmt: skip


@dataclass(frozen=True)
class ClassConditionalSets:
    """The fitted rule: for each class the largest score ``1 - p`` that keeps it in the set
    (``None``: always in the set — too few calibration images of it for a finite bound)."""

    classes: list[str]
    alpha: float
    score_thresholds: list[float | None]

    def contains(self, proba: np.ndarray) -> np.ndarray:
        """Which classes are in each image's set, shape ``(n, k)`` (bool)."""
        scores = 1.0 - np.asarray(proba, dtype=np.float64)
        bounds = np.array([np.inf if t is None else t for t in self.score_thresholds])
        return scores <= bounds[None, :]

    def labels(self, proba: np.ndarray) -> list[str]:
        """Each image's set as class names joined by ``|`` (empty: no class qualifies)."""
        inside = self.contains(proba)
        return [SET_SEPARATOR.join(c for c, keep in zip(self.classes, row, strict=True) if keep)
                for row in inside]  # fmt: skip

    def serving(self) -> dict[str, Any]:
        """What the served model needs (JSON)."""
        return {"alpha": self.alpha, "classes": self.classes,
                "score_thresholds": self.score_thresholds}  # fmt: skip

    @classmethod
    def from_serving(cls, data: dict[str, Any]) -> ClassConditionalSets:
        """From :meth:`serving`'s JSON."""
        return cls(list(data["classes"]), float(data["alpha"]), list(data["score_thresholds"]))


def fit_sets(
    proba: np.ndarray, y: np.ndarray, classes: Sequence[str], alpha: float,
    groups: np.ndarray | None = None,
) -> tuple[ClassConditionalSets, Any]:  # fmt: skip
    """Calibrate class-conditional sets on ``proba`` (calibrated probabilities, ``(n, k)``) of
    images whose classes are ``y``.

    With ``groups`` (patients) that repeat, the exchangeable units are patients, not images
    (the slices of one scan are alike): each patient of a class contributes one score, its
    worst image's (:func:`unit_scores`). A new patient's worst image is then covered with
    probability >= 1 - alpha, so each of their images is.

    Returns:
        The rule the served model applies, and crepes' fitted ``ConformalClassifier``.
    """
    from crepes import ConformalClassifier

    scores, y = unit_scores(proba, y, groups)
    fitted = ConformalClassifier().fit(scores, bins=y)
    thresholds: list[float | None] = []
    for k in range(len(classes)):
        own = np.sort(scores[y == k])[::-1]  # largest first
        n = len(own)  # fewest calibration scores >= a new one's for a p-value > alpha:
        needed = next(c for c in range(n + 1) if (c + 1) / (n + 1) > alpha)
        thresholds.append(float(own[needed - 1]) if needed >= 1 else None)
    return ClassConditionalSets(list(classes), float(alpha), thresholds), fitted


def unit_scores(
    proba: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The calibration scores ``1 - p_true`` and their classes: one per image, or with
    ``groups`` that repeat one per (patient, class) — the largest of its images'."""
    y = np.asarray(y, dtype=np.int64)
    scores = 1.0 - np.asarray(proba, dtype=np.float64)[np.arange(len(y)), y]
    if groups is None or not pd.Series(groups).duplicated().any():
        return scores, y
    units = pd.DataFrame({"group": np.asarray(groups), "y": y, "score": scores})
    worst = units.groupby(["group", "y"], sort=True)["score"].max().reset_index()
    return worst["score"].to_numpy(), worst["y"].to_numpy(dtype=np.int64)


def crepes_sets(fitted: Any, proba: np.ndarray, alpha: float) -> np.ndarray:
    """The class-conditional sets from crepes' p-values for ``proba``, shape ``(n, k)``
    (bool): class ``c`` is in when its p-value, against the calibration scores of class ``c``,
    exceeds ``alpha`` (split conformal's rule; crepes' own ``predict_set`` keeps ``p = alpha``
    too, which at ``n = 1 / alpha - 1`` puts a class in every set)."""
    scores = 1.0 - np.asarray(proba, dtype=np.float64)
    n, k = scores.shape
    return np.stack([
        fitted.predict_p(scores, bins=np.full(n, c), smoothing=False)[:, c] > alpha
        for c in range(k)
    ], axis=1)  # fmt: skip


def marginal_sets(calibration_proba: np.ndarray, y: np.ndarray, proba: np.ndarray,
                  alpha: float) -> np.ndarray:  # fmt: skip
    """Plain (not class-conditional) conformal sets: one threshold on ``1 - p`` for every
    class, from all calibration images together (crepes without Mondrian categories) — the
    comparison that shows what the class-conditional guarantee buys the rare classes."""
    from crepes import ConformalClassifier

    y = np.asarray(y, dtype=np.int64)
    fitted = ConformalClassifier().fit(1.0 - calibration_proba[np.arange(len(y)), y])
    scores = 1.0 - np.asarray(proba, dtype=np.float64)
    return fitted.predict_set(scores, confidence=1 - alpha, smoothing=False).astype(bool)


def set_metrics(
    inside: np.ndarray, y: np.ndarray, classes: Sequence[str], min_support: int,
    target: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Coverage per class (with its exact 95% interval, ``too_few_to_judge`` and, given the
    ``target``, ``below_target``: the whole interval under it), mean set size, and the share
    of singleton sets, of empty sets and the accuracy on singletons."""
    from medml.metrics import exact_interval

    y = np.asarray(y, dtype=np.int64)
    covered = inside[np.arange(len(y)), y]
    sizes = inside.sum(axis=1)
    singles = sizes == 1
    per_class = {}
    for k, name in enumerate(classes):
        hits, n = int(covered[y == k].sum()), int((y == k).sum())
        interval = exact_interval(hits, n)
        per_class[name] = {"coverage": hits / n if n else None, "n": n, "ci95": interval,
                           "too_few_to_judge": n < min_support,
                           "below_target": bool(target is not None and n
                                                and interval[1] < target)}  # fmt: skip
    return {
        "per_class": per_class,
        "coverage": float(covered.mean()) if len(y) else None,
        "mean_set_size": float(sizes.mean()) if len(y) else None,
        "singletons": float(singles.mean()) if len(y) else None,
        "singleton_accuracy": float(covered[singles].mean()) if singles.any() else None,
        "empty": float((sizes == 0).mean()) if len(y) else None,
        "refer": float((~singles).mean()) if len(y) else None,
    }


def sentence(conformal: dict[str, Any]) -> str:
    """One line on the holdout's prediction sets: the worst class's coverage against the
    target, set sizes, and what one threshold for all classes would have covered."""
    held, one = conformal["holdout"], conformal.get("one_threshold") or {}

    def worst(scores: dict[str, Any]) -> tuple[str, float]:
        judged = {c: v["coverage"] for c, v in scores["per_class"].items()
                  if v["coverage"] is not None}  # fmt: skip
        name = min(judged, key=judged.__getitem__)
        return name, judged[name]

    name, lowest = worst(held)
    text = (
        f"target coverage {conformal['target_coverage']:.2f} for every class (calibrated on "
        f"{conformal['calibrated_on']}): lowest class coverage {lowest:.3f} ({name}, n="
        f"{held['per_class'][name]['n']}) | mean "
        f"set size {held['mean_set_size']:.2f} | one class {held['singletons']:.0%}"
    )
    if held.get("singleton_accuracy") is not None:
        text += f" (accuracy {held['singleton_accuracy']:.3f})"
    text += f" | refer {held['refer']:.0%}"
    if conformal.get("always_in_set"):
        unit = conformal.get("calibration_unit") or "image"
        text += (f"; in every set, too few calibration {unit}s to bound them: "
                 f"{', '.join(conformal['always_in_set'])}")  # fmt: skip
    below = [c for c, v in held["per_class"].items() if v.get("below_target")]
    if below:
        text += (f"; WARNING: coverage of {', '.join(below)} is below the target beyond its "
                 "95% interval (new images unlike the calibration ones, or a few patients "
                 "with many images each)")  # fmt: skip
    if one:
        one_name, one_lowest = worst(one)
        text += (f"; one threshold for all classes: {one_name} covered {one_lowest:.3f} (n="
                 f"{one['per_class'][one_name]['n']})")  # fmt: skip
    return text
