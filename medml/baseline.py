"""A baseline to beat, every run: is the CNN measurably better than a cheap, well-known model?

The baseline is a class-balanced logistic regression (scikit-learn) on the image's pixels
shrunk to 16×16 grey — trained on exactly the training rows the fold models saw (every fold)
and scored on the same holdout. The comparison is paired: both models' balanced accuracy on the
same stratified bootstrap resamples of the holdout (each class kept at its own count), so the
interval of the difference accounts for the images both models find easy or hard. The verdict
is ``better`` when the whole 95 % interval of (CNN − baseline) is above zero, ``worse`` when
it is below, else ``not measurably better``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

BASELINE = "class-balanced logistic regression on 16x16 grey pixels"
FEATURE_SIDE = 16
ROUNDS = 2000
BETTER, WORSE, UNCLEAR = "better", "worse", "not measurably better"


def pixel_features(images: np.ndarray) -> np.ndarray:
    """Images ``(n, h, w, c)`` (any dtype) as ``(n, 256)`` float32 rows: grey, 16×16, area
    averaged."""
    rows = np.zeros((len(images), FEATURE_SIDE**2), np.float32)
    for i, image in enumerate(images):  # one image at a time: no float copy of the whole batch
        grey = image.astype(np.float32)
        grey = grey.mean(axis=2) if grey.ndim == 3 else grey
        rows[i] = cv2.resize(grey, (FEATURE_SIDE, FEATURE_SIDE),
                             interpolation=cv2.INTER_AREA).ravel()  # fmt: skip
    return rows


def fit_and_score(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, classes: int, seed: int
) -> np.ndarray:
    """The baseline's class probabilities ``(n_test, classes)``, fitted on the training rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(
        class_weight="balanced", max_iter=2000, random_state=seed))  # fmt: skip
    model.fit(x_train, y_train)
    proba = np.zeros((len(x_test), classes), np.float64)
    proba[:, model.classes_] = model.predict_proba(x_test)
    return proba


def compare(
    y_true: np.ndarray, model_proba: np.ndarray, baseline_proba: np.ndarray,
    classes: Sequence[str], *, seed: int, rounds: int = ROUNDS, min_class_support: int = 1,
) -> dict[str, Any]:  # fmt: skip
    """The paired comparison of balanced accuracy on the holdout (see the module docstring).

    A class with fewer than ``min_class_support`` holdout images is the same few images in
    every resample, so its share of the difference has no spread and the interval is too
    narrow: with such a class the verdict is never ``better`` or ``worse``, only ``not
    measurably better``, with the classes named in ``too_few_to_judge``."""
    from medml.metrics import stratified_weights

    k = len(classes)
    support = np.bincount(y_true, minlength=k)
    present = support > 0
    hits = {name: proba.argmax(axis=1) == y_true
            for name, proba in (("model", model_proba), ("baseline", baseline_proba))}  # fmt: skip

    def balanced(weights: np.ndarray, name: str) -> np.ndarray:
        """Mean per-class sensitivity under each resample (a class keeps its count)."""
        found = np.stack([np.bincount(y_true, weights=w * hits[name], minlength=k)
                          for w in weights])  # fmt: skip
        return (found[:, present] / support[present]).mean(axis=1)

    point = {name: float(balanced(np.ones((1, len(y_true))), name)[0]) for name in hits}
    resamples = stratified_weights(y_true, rounds, np.random.default_rng(seed))
    differences = np.concatenate([balanced(w, "model") - balanced(w, "baseline")
                                  for w in resamples])  # fmt: skip
    low, high = (float(v) for v in np.percentile(differences, [2.5, 97.5]))
    counts = np.bincount(y_true, minlength=k)
    too_few = [classes[c] for c in range(k) if 0 < counts[c] < min_class_support]
    verdict = UNCLEAR if too_few else BETTER if low > 0 else WORSE if high < 0 else UNCLEAR
    return {
        "baseline": BASELINE,
        "metric": "balanced_accuracy",
        "model": point["model"],
        "baseline_value": point["baseline"],
        "difference": point["model"] - point["baseline"],
        "difference_ci95": [low, high],
        "rounds": rounds,
        "verdict": verdict,
        "n": int(len(y_true)),
        "too_few_to_judge": too_few,
    }


def sentence(comparison: dict[str, Any]) -> str:
    """One line for the summary, the review and the model card."""
    low, high = comparison["difference_ci95"]
    verdicts = {BETTER: "better than", WORSE: "WORSE than", UNCLEAR: "NOT measurably better than"}
    too_few = comparison.get("too_few_to_judge") or []
    caveat = (f" Too few holdout images of {', '.join(too_few)} to judge the difference."
              if too_few else "")  # fmt: skip
    return (
        f"The model is {verdicts[comparison['verdict']]} the baseline ({comparison['baseline']}, "
        f"same training rows, same holdout): balanced accuracy {comparison['model']:.3f} vs "
        f"{comparison['baseline_value']:.3f}, difference {comparison['difference']:+.3f} "
        f"(paired 95% CI {low:+.3f} to {high:+.3f})." + caveat
    )
