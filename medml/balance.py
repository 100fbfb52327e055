"""Class balancing, applied only to the training part of a fold.

Two kinds of strategy:

- loss weighting (``class_weight``): the data stays as it is and each class's loss is scaled;
- resampling (``undersample``, ``oversample``): samplers with imbalanced-learn's
  ``fit_resample(X, y)`` contract. They resample *row indices*, so the images are gathered
  once, after resampling, and never copied per strategy.

:func:`balance_training_rows` is the only entry point the trainer uses, and it receives only
the fold's training rows: the validation fold and the holdout cannot be resampled by
construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("none", "class_weight", "undersample", "oversample")


def inverse_frequency_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Class weights ``N / (k * n_c)``: every class contributes equally to the loss.

    For two classes this is proportional to the X-ray write-up's ``w_c = 1 - n_c / N``
    (``w_pos = n_neg / N``); the k-class form keeps the mean weight at 1 so the learning rate
    means the same with and without weighting.

    Raises:
        ValueError: a class in ``range(n_classes)`` has no samples.
    """
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"classes {missing} have no training samples; cannot weight them")
    total = counts.sum()
    return {c: float(total / (n_classes * counts[c])) for c in range(n_classes)}


@dataclass
class Balanced:
    """Training rows after balancing and the loss weights to use with them."""

    indices: np.ndarray
    class_weight: dict[int, float] | None


def make_sampler(strategy: str, *, seed: int):  # noqa: ANN201 - an imblearn sampler
    """Build the imbalanced-learn sampler for a resampling strategy, or ``None``.

    Raises:
        ValueError: unknown strategy name.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown balance strategy {strategy!r}; choose one of {STRATEGIES}")
    if strategy == "undersample":
        from imblearn.under_sampling import RandomUnderSampler

        return RandomUnderSampler(random_state=seed)
    if strategy == "oversample":
        from imblearn.over_sampling import RandomOverSampler

        return RandomOverSampler(random_state=seed)
    return None


def balance_training_rows(
    y_train: np.ndarray, n_classes: int, strategy: str, *, seed: int
) -> Balanced:
    """Balance a fold's training rows.

    Args:
        y_train: class indices of the fold's training rows (never validation or holdout).
        n_classes: number of classes.
        strategy: one of :data:`STRATEGIES`.
        seed: random seed for samplers.

    Returns:
        Positions into ``y_train`` to train on (possibly repeated or dropped) and the class
        weights for the loss (``None`` unless ``class_weight``).
    """
    y_train = np.asarray(y_train, dtype=np.int64)
    positions = np.arange(len(y_train))
    sampler = make_sampler(strategy, seed=seed)
    if sampler is not None:
        resampled, _ = sampler.fit_resample(positions.reshape(-1, 1), y_train)
        positions = resampled.ravel()
    weights = inverse_frequency_weights(y_train, n_classes) if strategy == "class_weight" else None
    return Balanced(indices=positions, class_weight=weights)
