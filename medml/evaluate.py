"""Evaluate the fold ensemble on the untouched holdout with clinical metrics.

The ensemble's prediction is the mean of the fold models' softmax outputs (seed 001), then
temperature-scaled. The holdout is scored once by the ensemble and once per fold model (to
show fold variance). The temperature is fitted on that same averaged output on the calibration
cut (images no fold model trained or validated on, :mod:`medml.split`), which also gives an
estimate of the registered ensemble itself before the holdout is looked at; without a cut, on
the single fold models' out-of-fold outputs.
Reported per class: sensitivity (recall), specificity, PPV (precision), NPV, F1, support;
overall: accuracy, balanced accuracy, macro-F1, one-vs-rest macro ROC AUC, Cohen's kappa,
expected calibration error.

95% intervals, right at any n:

- each class's sensitivity, specificity, PPV and NPV (and the binary operating point's
  sensitivity, specificity and PPV at its threshold): exact (Clopper-Pearson) intervals of the
  counts (:func:`medml.metrics.exact_interval`, which says why exact and not Wilson);
- the composite scores (balanced accuracy, macro-F1, ROC AUC, ECE): a stratified percentile
  bootstrap. Each resample draws, within each true class, as many images as the class has
  (with replacement), so every resample keeps every class at its own count: no class drops
  out of a small holdout's resample (which made balanced accuracy average over fewer classes)
  and each class's own variability enters. A set where every class's images are all scored
  alike (e.g. all right) has nothing to resample: its composite intervals are then the point,
  and the per-class exact intervals carry the uncertainty. Not BCa: its acceleration and bias
  terms are themselves unstable at the small n this is for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medml.calibration import (
    apply_temperature,
    at_bound,
    at_threshold,
    fit_temperature,
    operating_threshold,
)
from medml.config import Recipe
from medml.errors import RunError
from medml.figures import pyplot, save_figure
from medml.io import atomic_path, publish_dir, read_json, write_json
from medml.layout import ARTIFACTS, EvaluationFiles, FoldFiles
from medml.metrics import (
    CALIBRATION_CUT,
    MIN_CLASS_SUPPORT,
    OUT_OF_FOLD,
    HoldoutMetrics,
    exact_interval,
    scalar_metrics,
    stratified_weights,
)
from medml.preprocess import load_index
from medml.split import CALIBRATION, TEST, TRAIN
from medml.tracking import Tracking


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate` wrote."""

    metrics_path: Path
    metrics: HoldoutMetrics


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix, rows = true class, columns = predicted class."""
    flat = np.asarray(y_true, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _rates(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class rates from one confusion matrix (or a stack of them, last two axes).

    Not ``sklearn.metrics`` (``precision_recall_fscore_support``, ``confusion_matrix``): those
    score one prediction vector per call, and the bootstrap scores thousands of resampled
    confusion matrices in one array operation here (the tests check both agree)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(float)
    support = cm.sum(axis=-1).astype(float)
    predicted = cm.sum(axis=-2).astype(float)
    total = cm.sum(axis=(-2, -1))[..., None].astype(float)
    fn = support - tp
    fp = predicted - tp
    tn = total - tp - fn - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        sensitivity = np.where(support > 0, tp / support, np.nan)
        specificity = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        ppv = np.where(predicted > 0, tp / predicted, 0.0)
        npv = np.where(tn + fn > 0, tn / (tn + fn), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return {
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": ppv,
        "npv": npv,
        "f1": f1,
        "support": support,
    }


def _confidence_bins(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Each confidence's equal-width bin, ``0 .. bins - 1``."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int = 10) -> float:
    """ECE of the top-class confidence over equal-width bins."""
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(float)
    which = _confidence_bins(confidence, bins)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def clinical_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    min_class_support: int = MIN_CLASS_SUPPORT,
) -> HoldoutMetrics:
    """Clinical metrics of class probabilities against true class indices.

    Args:
        y_true: true class indices, shape ``(n,)``.
        proba: class probabilities, shape ``(n, k)``.
        classes: class names, in index order.
        bootstrap: stratified resamples for the composite scores' 95% intervals (0: none; the
            per-class rates' exact intervals are always given).
        seed: bootstrap seed.
        min_class_support: fewer images of a class make it too few to judge.

    Returns:
        Overall and per-class scores, the confusion matrix and the 95% intervals.
    """
    from sklearn.metrics import cohen_kappa_score

    y_true = np.asarray(y_true, dtype=np.int64)
    k = len(classes)
    y_pred = proba.argmax(axis=1)
    cm = confusion(y_true, y_pred, k)
    rates = _rates(cm)
    present = rates["support"] > 0
    auc = _roc_auc(y_true, proba)
    overall = {
        "accuracy": float(np.trace(cm) / max(1, cm.sum())),
        "balanced_accuracy": float(np.nanmean(rates["sensitivity"][present])),
        "macro_f1": float(rates["f1"][present].mean()),
        "roc_auc_ovr_macro": auc,
        "cohen_kappa": float(cohen_kappa_score(y_true, y_pred, labels=list(range(k)))),
        "expected_calibration_error": expected_calibration_error(y_true, proba),
        "n": int(len(y_true)),
    }
    per_class = _per_class_scores(rates, classes)
    ci95: dict[str, Any] = {**rate_intervals(cm, classes),
                            "method": dict.fromkeys(_RATES_WITH_INTERVALS, EXACT)}  # fmt: skip
    if bootstrap and len(y_true):
        ci95 |= _bootstrap_ci(y_true, proba, bootstrap, seed)
        ci95["method"] |= dict.fromkeys(_COMPOSITES, STRATIFIED)
        if not np.isfinite(auc):
            ci95["roc_auc_ovr_macro"] = [None, None]
    return HoldoutMetrics(list(classes), overall, per_class, cm.tolist(), ci95,
                          min_class_support=min_class_support)  # fmt: skip


def _roc_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """One-vs-rest macro ROC AUC (binary: of class 1's probability); NaN when a class is
    missing."""
    from sklearn.metrics import roc_auc_score

    k = proba.shape[1]
    try:
        if k > 2:
            return float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro",
                                       labels=list(range(k))))  # fmt: skip
        return float(roc_auc_score(y_true, proba[:, 1]))
    except ValueError:  # a class is missing from the holdout
        return float("nan")


EXACT = "exact (Clopper-Pearson) 95% interval of the counts"
STRATIFIED = "stratified percentile bootstrap (each true class resampled to its own count)"
_RATES_WITH_INTERVALS = ("sensitivity", "specificity", "ppv", "npv")
_COMPOSITES = ("balanced_accuracy", "macro_f1", "roc_auc_ovr_macro", "expected_calibration_error")


def rate_intervals(cm: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Exact (Clopper-Pearson) 95% intervals of each class's sensitivity, specificity, PPV and
    NPV from the confusion matrix's counts (``[None, None]`` where a rate has no denominator).
    """
    cm = np.asarray(cm, dtype=np.int64)
    tp, support, predicted = np.diagonal(cm), cm.sum(axis=1), cm.sum(axis=0)
    tn = cm.sum() - support - predicted + tp
    counts = {
        "sensitivity": (tp, support),
        "specificity": (tn, tn + predicted - tp),
        "ppv": (tp, predicted),
        "npv": (tn, tn + support - tp),
    }
    return {
        rate: {name: exact_interval(hits[i], trials[i]) for i, name in enumerate(classes)}
        for rate, (hits, trials) in counts.items()
    }


def _per_class_scores(
    rates: dict[str, np.ndarray], classes: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Each class's rates as plain floats (``None`` where undefined) and its integer support."""
    per_class = {
        name: {
            metric: (float(values[i]) if not np.isnan(values[i]) else None)
            for metric, values in rates.items()
        }
        for i, name in enumerate(classes)
    }
    for name in per_class:
        per_class[name]["support"] = int(per_class[name]["support"] or 0)
    return per_class


def _bootstrap_ci(y_true: np.ndarray, proba: np.ndarray, rounds: int, seed: int) -> dict[str, Any]:
    """Stratified percentile bootstrap 95% intervals of balanced accuracy, macro-F1, ROC AUC
    and ECE (the module's docstring says why stratified)."""
    k = proba.shape[1]
    cells = y_true * k + proba.argmax(axis=1)  # each image's confusion-matrix cell
    present = np.bincount(y_true, minlength=k) > 0
    gaps, levels = _calibration_gaps(y_true, proba), _score_levels(proba)
    draws: dict[str, list[np.ndarray]] = {name: [] for name in _COMPOSITES}
    for weights in stratified_weights(y_true, rounds, np.random.default_rng(seed)):
        rates = _rates(np.stack([np.bincount(cells, weights=w, minlength=k * k)
                                 for w in weights]).reshape(-1, k, k))  # fmt: skip
        draws["balanced_accuracy"].append(rates["sensitivity"][:, present].mean(axis=1))
        draws["macro_f1"].append(rates["f1"][:, present].mean(axis=1))
        draws["roc_auc_ovr_macro"].append(weighted_roc_auc(y_true, proba, weights, levels))
        draws["expected_calibration_error"].append(
            np.abs(weights @ gaps).sum(axis=1) / weights.sum(axis=1))  # fmt: skip
    return {name: _percentile_interval(np.concatenate(values)) for name, values in draws.items()
            } | {"rounds": rounds}  # fmt: skip


def _percentile_interval(values: np.ndarray) -> list[float | None]:
    values = values[np.isfinite(values)]
    if not len(values):
        return [None, None]
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]


def _calibration_gaps(y_true: np.ndarray, proba: np.ndarray, bins: int = 10) -> np.ndarray:
    """Per image, ``correct - confidence`` in its confidence bin's column, shape ``(n, bins)``:
    the ECE of weights ``w`` is ``|w @ gaps|.sum() / w.sum()``."""
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(float)
    gaps = np.zeros((len(y_true), bins))
    gaps[np.arange(len(y_true)), _confidence_bins(confidence, bins)] = correct - confidence
    return gaps


def weighted_roc_auc(
    y_true: np.ndarray, proba: np.ndarray, weights: np.ndarray,
    levels: list[tuple[int, np.ndarray]] | None = None,
) -> np.ndarray:  # fmt: skip
    """One-vs-rest macro ROC AUC (binary: of class 1's probability) per row of ``weights``,
    each image counted as often as its weight: what :func:`_roc_auc` gives on the resample.
    ``levels``: :func:`_score_levels` of ``proba``, when already computed."""
    levels = _score_levels(proba) if levels is None else levels
    return np.mean([_weighted_auc(rank, y_true == c, weights) for c, rank in levels], axis=0)


def _score_levels(proba: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Each one-vs-rest column AUC scores (binary: class 1 only), with each image's level:
    the rank of its score among the distinct scores (tied scores share one)."""
    columns = [1] if proba.shape[1] == 2 else range(proba.shape[1])
    return [(c, np.unique(proba[:, c], return_inverse=True)[1].ravel()) for c in columns]


def _weighted_auc(levels: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """P(score of a positive > score of a negative), ties counting half, per row of weights
    (NaN where a row has no positive or no negative); scores given as their ``levels``."""
    rows, count = len(weights), int(levels.max(initial=0)) + 1
    flat = (np.arange(rows)[:, None] * count + levels).ravel()

    def per_level(mask: np.ndarray) -> np.ndarray:  # weight of the masked images per level
        summed = np.bincount(flat, weights=(weights * mask).ravel(), minlength=rows * count)
        return summed.reshape(rows, count)

    pos, neg = per_level(positive), per_level(~positive)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + neg / 2)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))


def plot_confusion_matrix(cm: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """Save counts and row-normalised confusion matrices side by side as a PNG (scikit-learn's
    ``ConfusionMatrixDisplay``)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = pyplot()
    cm = np.asarray(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    panels = [(axes[0], cm, "counts", "d"),
              (axes[1], normalised, "row-normalised (sensitivity on diagonal)", ".2f")]  # fmt: skip
    for ax, data, title, fmt in panels:
        ConfusionMatrixDisplay(data, display_labels=list(classes)).plot(
            ax=ax, cmap="Blues", values_format=fmt, colorbar=False, xticks_rotation=45
        )
        ax.set(title=title, xlabel="predicted", ylabel="true")
    return save_figure(fig, path)


def plot_roc_curves(
    y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str], path: Path
) -> Path:
    """One-vs-rest ROC curve per class, with its AUC in the legend (scikit-learn's
    ``RocCurveDisplay``)."""
    from sklearn.metrics import RocCurveDisplay

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for i, name in enumerate(classes):
        positives = y_true == i
        if positives.all() or not positives.any():
            continue
        RocCurveDisplay.from_predictions(positives, proba[:, i], name=name, ax=ax,
                                         plot_chance_level=i == 0)  # fmt: skip
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, one vs rest")
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def plot_reliability(
    y_true: np.ndarray, proba: np.ndarray, path: Path, bins: int = 10, *, title: str = ""
) -> Path:
    """Reliability diagram: accuracy vs confidence of the top class, per confidence bin.

    Not scikit-learn's ``CalibrationDisplay``: that one plots one binary class's probability;
    this is the top-label view of a k-class model, the one its ECE summarises."""
    plt = pyplot()
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    which = _confidence_bins(confidence, bins)
    centres = (edges[:-1] + edges[1:]) / 2
    accuracy = [correct[which == b].mean() if (which == b).any() else np.nan for b in range(bins)]
    counts = np.bincount(which, minlength=bins)
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6), height_ratios=[3, 1], sharex=True)
    ax.bar(centres, accuracy, width=1 / bins, edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="perfect calibration")
    ece = expected_calibration_error(y_true, proba, bins)
    label = f"Reliability{' ' + title if title else ''} (ECE {ece:.3f})"
    ax.set(ylabel="accuracy", title=label, ylim=(0, 1))
    ax.legend(loc="upper left")
    hist.bar(centres, counts, width=1 / bins, edgecolor="black")
    hist.set(xlabel="confidence", ylabel="images")
    return save_figure(fig, path)


def plot_scores(
    names: Sequence[str], scores: dict[str, Sequence[float]], path: Path, *, title: str = ""
) -> Path:
    """Grouped horizontal bars: one group per name, one bar per score (0-1)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.55 * max(1, len(names)) * max(1, len(scores)) / 2))
    height = 0.8 / max(1, len(scores))
    rows = np.arange(len(names))
    for k, (score, values) in enumerate(scores.items()):
        bars = ax.barh(rows + k * height, values, height=height, label=score.replace("_", " "))
        ax.bar_label(bars, fmt="%.3f", padding=2, fontsize=7)
    ax.set_yticks(rows + height * (len(scores) - 1) / 2, list(names))
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.08), xlabel="score", title=title)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def plot_learning_curves(histories: Sequence[dict[str, Any]], path: Path) -> Path:
    """Loss and accuracy per epoch, train (solid) vs validation (dashed), one colour per fold."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for fold, history in enumerate(histories):
        colour = f"C{fold}"
        for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
            values = history.get(metric, [])
            epochs = range(1, len(values) + 1)
            ax.plot(epochs, values, color=colour, label=f"fold {fold} train")
            ax.plot(
                epochs,
                history.get(f"val_{metric}", []),
                color=colour,
                linestyle="--",
                label=f"fold {fold} validation",
            )
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
    axes[0].legend(fontsize=7)
    return save_figure(fig, path)


def predict_proba(
    model_paths: Sequence[Path], images: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Softmax outputs of each model, shape ``(n_models, n, k)``."""
    import keras

    from medml.models import one_trace_per_model_is_expected

    with one_trace_per_model_is_expected():
        return np.stack([
            keras.models.load_model(path, compile=False).predict(
                images, batch_size=batch_size, verbose=0
            )
            for path in model_paths
        ])  # fmt: skip


@dataclass(frozen=True)
class OutOfFold:
    """Each training image scored by the fold model that did not train on it."""

    rows: pd.DataFrame
    y: np.ndarray
    proba: np.ndarray  # uncalibrated softmax outputs


@dataclass(frozen=True)
class FoldPredictions:
    """Every fold model's uncalibrated outputs: out-of-fold, and on the rows no fold model
    trained on (``holdout``, ``calibration``: shape ``(n_models, n, k)``)."""

    oof: OutOfFold
    holdout: np.ndarray
    calibration: np.ndarray


@dataclass(frozen=True)
class Scored:
    """Images' true classes with an output before (``raw``) and after calibration."""

    y: np.ndarray
    raw: np.ndarray
    calibrated: np.ndarray


_PREDICT_ROWS = 2048  # images gathered from the shards per prediction batch (bounded memory)


def fold_predictions(
    shards_dir: Path, index: pd.DataFrame, model_paths: Sequence[Path]
) -> FoldPredictions:
    """Load each fold model once and score its own validation fold (out-of-fold), the holdout
    and the calibration cut; ``model_paths[k]`` is fold ``k``'s model."""
    import keras

    from medml.models import one_trace_per_model_is_expected
    from medml.preprocess import ShardRows

    unseen = {part: ShardRows(shards_dir, index[index["split"] == part])
              for part in (TEST, CALIBRATION)}  # fmt: skip
    train = index[~index["split"].isin([TEST, CALIBRATION])]
    parts, oof, scored = [], [], {part: [] for part in unseen}
    with one_trace_per_model_is_expected():
        for fold, path in enumerate(model_paths):
            model = keras.models.load_model(path, compile=False)
            for part, rows in unseen.items():
                scored[part].append(_predict_rows(model, rows))
            part = train[train["fold"] == fold]
            oof.append(_predict_rows(model, ShardRows(shards_dir, part)))
            parts.append(part)
    rows = pd.concat(parts)
    classes = scored[TEST][0].shape[1]
    proba = np.concatenate(oof) if oof else np.empty((0, classes))
    out_of_fold = OutOfFold(rows, rows["label_index"].to_numpy(dtype=np.int64), proba)
    return FoldPredictions(out_of_fold, np.stack(scored[TEST]), np.stack(scored[CALIBRATION]))


def _predict_rows(model: Any, rows: Any, batch_size: int = 256) -> np.ndarray:
    """``model``'s softmax outputs for every row, read :data:`_PREDICT_ROWS` at a time.

    One graph function per model, traced once for any batch size (``predict_on_batch``
    traces again for each new batch shape: the last, partial batch of the holdout and of the
    fold; a DenseNet121 trace costs seconds). ``model.predict`` in a loop builds an input
    pipeline per call, and its memory grew with the number of calls (0.9 GB more at the
    capsule size than at 6,000 images).
    """
    import tensorflow as tf

    predict = None
    out = []
    for start in range(0, len(rows), _PREDICT_ROWS):
        images = rows.gather(np.arange(start, min(start + _PREDICT_ROWS, len(rows))))
        if predict is None:
            spec = tf.TensorSpec((None, *images.shape[1:]), tf.as_dtype(images.dtype))
            predict = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        out += [np.asarray(predict(images[k : k + batch_size]))
                for k in range(0, len(images), batch_size)]  # fmt: skip
    return np.concatenate(out) if out else np.empty((0, int(model.output_shape[-1])), np.float32)


def evaluate(
    shards_dir: Path,
    model_paths: Sequence[Path],
    out_dir: Path,
    recipe: Recipe,
    *,
    tracking: Tracking | None = None,
    parent_run_id: str | None = None,
) -> EvaluationResult:
    """Score the fold ensemble (and each fold) on the holdout, on the calibration cut, and
    every training image out-of-fold; fit the temperature (and, for binary recipes, the
    operating point) on the calibration cut's ensemble output or else out-of-fold, never on the
    holdout; write metrics, plots and predictions.

    Raises:
        RunError: no fold models were given.
    """
    if not model_paths:
        raise RunError("no fold models to evaluate; run the train step for every fold first")
    classes = recipe.data.classes
    index = load_index(shards_dir)
    predictions = fold_predictions(shards_dir, index, model_paths)
    oof = predictions.oof
    calibration = calibrate(predictions, index, recipe)
    temperature, cut = calibration.temperature, calibration.cut
    oof_calibrated = apply_temperature(oof.proba, temperature)
    minimum = recipe.evaluate.min_class_support
    oof_metrics = clinical_metrics(oof.y, oof_calibrated, classes, seed=recipe.split.seed,
                                   min_class_support=minimum)  # fmt: skip
    out_of_fold = Scored(oof.y, oof.proba, oof_calibrated)
    holdout = index[index["split"] == TEST]
    if len(holdout):
        scored, metrics = _holdout_estimate(predictions.holdout, holdout, temperature,
                                            model_paths, recipe)  # fmt: skip
    else:  # cross-validation only: the out-of-fold predictions are the estimate
        holdout, scored = oof.rows, None
        metrics = _out_of_fold_estimate(oof_metrics, out_of_fold, oof.rows, model_paths, classes)
    shown = scored or out_of_fold
    extras = {
        "calibration": calibration_report(calibration, out_of_fold, scored, recipe),
        "operating_point": operating_point(recipe, out_of_fold, cut, scored),
        "conformal": conformal_report(
            recipe, out_of_fold, cut, scored, oof.rows, index[index["split"] == CALIBRATION]
        ),
        "baseline": (
            baseline_comparison(shards_dir, index, shown.y, shown.calibrated, recipe)
            if scored is not None
            else None
        ),
    }
    files = EvaluationFiles(Path(out_dir))
    with publish_dir(files.root) as staging:
        written = write_evaluation(EvaluationFiles(staging), metrics, oof_metrics, extras)
        plots = write_plots(EvaluationFiles(staging), metrics, shown.y, shown.calibrated,
                            model_paths, uncalibrated=shown.raw)  # fmt: skip
        write_predictions(EvaluationFiles(staging).predictions, holdout, shown.calibrated,
                          classes)  # fmt: skip
        write_predictions(EvaluationFiles(staging).oof_predictions, oof.rows, oof_calibrated,
                          classes)  # fmt: skip
        written += write_label_issues(EvaluationFiles(staging), shards_dir, oof, oof_calibrated,
                                      classes)  # fmt: skip
    if tracking is not None and parent_run_id is not None:
        artifacts = [files.root / p.name for p in [*written, *plots]]
        keep_registered_evidence(tracking, parent_run_id, files)
        log_evaluation(tracking, parent_run_id, metrics, oof_metrics, temperature, artifacts)
    return EvaluationResult(files.metrics, metrics)


_GATE_EVIDENCE = (ARTIFACTS.metrics, ARTIFACTS.baseline, ARTIFACTS.operating_point)
"""What evaluation logs that a registered version's gate was judged on (and its registration
pinned, :data:`medml.promotion.EVIDENCE`)."""


def keep_registered_evidence(tracking: Tracking, run_id: str, files: EvaluationFiles) -> None:
    """Refuse to overwrite the evidence of a version registered from pipeline run ``run_id``
    with a different evaluation (other data or other fold models under the same run: a DVC run
    directory re-run on refreshed data, folds trained again after registration). An identical
    evaluation (a step re-run on the same inputs) passes.

    Raises:
        RunError: a version was registered from this run and this evaluation's evidence
            differs from what it holds.
    """
    import tempfile

    from mlflow.exceptions import MlflowException

    client = tracking.activate()
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    if not versions:
        return
    local = {artifact: files.root / Path(artifact).name for artifact in _GATE_EVIDENCE}
    changed = []
    with tempfile.TemporaryDirectory() as tmp:
        for artifact, path in local.items():
            try:
                logged = Path(client.download_artifacts(run_id, artifact, tmp)).read_bytes()
            except (MlflowException, OSError):  # absent (or unreadable): nothing to keep equal
                logged = None
            mine = path.read_bytes() if path.is_file() else None
            if logged != mine:
                changed.append(artifact)
    if changed:
        version = versions[0]
        raise RunError(
            f"pipeline run {run_id} already registered {version.name} v{version.version}, and "
            f"this evaluation's {', '.join(changed)} differ from the evidence it was registered "
            "on (other data or other fold models in the same run); a registered version's "
            "evidence is never overwritten: start a new run (a new --run-dir; for DVC, a new "
            "source or params, or `medml init --run-dir R --run-key dvc/<new>`)"
        )


def _holdout_estimate(
    per_model: np.ndarray, holdout: pd.DataFrame, temperature: float,
    model_paths: Sequence[Path], recipe: Recipe,
) -> tuple[Scored, HoldoutMetrics]:  # fmt: skip
    """The registered ensemble on the holdout (the fold models' average, calibrated), with
    each fold model's scores."""
    classes = recipe.data.classes
    y = holdout["label_index"].to_numpy(dtype=np.int64)
    averaged = per_model.mean(axis=0)
    scored = Scored(y, averaged, apply_temperature(averaged, temperature))
    metrics = clinical_metrics(
        y,
        scored.calibrated,
        classes,
        seed=recipe.split.seed,
        min_class_support=recipe.evaluate.min_class_support,
    )
    return scored, metrics.with_folds([
        {"model": str(path), **clinical_metrics(
            y, apply_temperature(raw, temperature), classes, bootstrap=0).overall}
        for path, raw in zip(model_paths, per_model, strict=True)
    ])  # fmt: skip


def _out_of_fold_estimate(
    oof_metrics: HoldoutMetrics, oof: Scored, rows: pd.DataFrame, model_paths: Sequence[Path],
    classes: Sequence[str],
) -> HoldoutMetrics:  # fmt: skip
    """Cross-validation only: the out-of-fold metrics as the estimate, with each fold's."""
    folds = rows["fold"].to_numpy()
    return dataclasses.replace(oof_metrics, estimate=OUT_OF_FOLD).with_folds([
        {"model": str(path), **clinical_metrics(
            oof.y[folds == k], oof.calibrated[folds == k], classes, bootstrap=0).overall}
        for k, path in enumerate(model_paths)
    ])  # fmt: skip


@dataclass(frozen=True)
class Calibration:
    """The temperature, where it was fitted (``fitted_on``; ``None``: not fitted), why not
    where it should have been (``warning``), and the calibration cut scored by the ensemble
    (``None`` without a cut)."""

    temperature: float
    fitted_on: str | None
    warning: str
    cut: Scored | None


def calibrate(predictions: FoldPredictions, index: pd.DataFrame, recipe: Recipe) -> Calibration:
    """Fit the temperature (1 with ``evaluate.calibrate`` off).

    It is fitted where what the registered model outputs — the fold models' average — can be
    seen on images none of them trained on: the calibration cut. Without one, or when the cut
    cannot identify it (the fit ran to a bound: a small cut the ensemble gets all right), on
    the single fold models' out-of-fold outputs (an average of models is less confident than
    each of them, so that temperature tends to leave it under-confident).
    """
    oof = predictions.oof
    y = index.loc[index["split"] == CALIBRATION, "label_index"].to_numpy(dtype=np.int64)
    averaged = predictions.calibration.mean(axis=0)
    single = (f"out-of-fold predictions of {len(oof.y)} training images (single fold models, "
              "not the holdout)")  # fmt: skip
    temperature, fitted_on, warning = 1.0, None, ""
    if recipe.evaluate.calibrate and len(y):
        temperature = fit_temperature(averaged, y)
        fitted_on = (f"the fold ensemble's averaged output on {len(y)} calibration-cut images "
                     "no fold model trained or validated on (not the holdout)")  # fmt: skip
        if at_bound(temperature):
            why = ("the ensemble gets them (nearly) all right, which cannot say how confident "
                   "it should be" if temperature < 1 else "the ensemble does no better than "
                   "chance on them, so any confidence is too much")  # fmt: skip
            warning = (f"the temperature fitted on the {len(y)} calibration-cut images ran to "
                       f"its bound ({temperature:.3f}): {why}; fitted out-of-fold instead "
                       "(raise split.calibration_size, or add data)")  # fmt: skip
    if recipe.evaluate.calibrate and (not len(y) or warning):
        temperature, fitted_on = fit_temperature(oof.proba, oof.y), single
        if not len(y):
            fitted_on += ": no calibration cut"
    cut = Scored(y, averaged, apply_temperature(averaged, temperature)) if len(y) else None
    return Calibration(temperature, fitted_on, warning, cut)


def calibration_report(
    calibration: Calibration, oof: Scored, holdout: Scored | None, recipe: Recipe
) -> dict[str, Any]:
    """The temperature, where it was fitted, the expected calibration error before/after it
    out-of-fold (single fold models), on the calibration cut and on the holdout (the
    registered ensemble; ``None`` where there is none), and the calibration cut's metrics:
    the registered ensemble scored where no fold model trained (``ensemble_estimate``)."""

    def ece(scored: Scored | None, which: str) -> float | None:
        return (
            None if scored is None else expected_calibration_error(scored.y, getattr(scored, which))
        )

    cut = calibration.cut
    estimate = None
    if cut is not None:
        scores = clinical_metrics(
            cut.y,
            cut.calibrated,
            recipe.data.classes,
            seed=recipe.split.seed,
            min_class_support=recipe.evaluate.min_class_support,
        )
        estimate = dataclasses.replace(scores, estimate=CALIBRATION_CUT).to_dict()
    return {
        "temperature": calibration.temperature,
        "fitted_on": calibration.fitted_on or "not fitted (evaluate.calibrate: false)",
        "fitted": calibration.fitted_on is not None,
        "warning": calibration.warning or None,
        "oof_ece_before": ece(oof, "raw"),
        "oof_ece_after": ece(oof, "calibrated"),
        "cut_ece_before": ece(cut, "raw"),
        "cut_ece_after": ece(cut, "calibrated"),
        "holdout_ece_before": ece(holdout, "raw"),
        "holdout_ece_after": ece(holdout, "calibrated"),
        "ensemble_estimate": estimate,
    }


def operating_point(
    recipe: Recipe,
    oof: Scored,
    cut: Scored | None,
    holdout: Scored | None,
) -> dict[str, Any] | None:
    """Binary recipes with ``evaluate.positive_class``: the threshold reaching the target
    sensitivity on the calibration cut's ensemble output (the output the served model
    thresholds) when the cut holds enough positives that at least ``evaluate.min_class_support``
    of them may be missed at the target (the threshold is then a quantile estimated from that
    many), else out-of-fold (more positives, single fold models); and the rates at it
    out-of-fold, on the cut and on the holdout, with exact 95% intervals
    (:func:`exact_at_threshold`; those where it was chosen are in-sample, ``in_sample``)."""
    positive = recipe.evaluate.positive_class
    if positive is None:
        return None
    k = recipe.data.classes.index(positive)
    target = recipe.evaluate.target_sensitivity
    minimum = recipe.evaluate.min_class_support
    on_cut = cut is not None and (cut.y == k).sum() * (1 - target) >= minimum
    chosen = cut if on_cut and cut is not None else oof
    threshold = operating_threshold(chosen.calibrated[:, k], chosen.y == k, target)

    def rates(scored: Scored | None) -> dict[str, Any] | None:
        if scored is None:
            return None
        return exact_at_threshold(scored.calibrated[:, k], scored.y == k, threshold, minimum)

    point = {
        "positive_class": positive,
        "target_sensitivity": target,
        "threshold": threshold,
        "chosen_on": (
            "the fold ensemble's output on the calibration cut (not the holdout)"
            if on_cut
            else "out-of-fold predictions (not the holdout)"
        ),  # fmt: skip
        "oof": rates(oof),
        "calibration_cut": rates(cut),
        "holdout": rates(holdout),
        "positives": int((chosen.y == k).sum()),
        "in_sample": "calibration_cut" if on_cut else "oof",
    }
    if point["positives"] < minimum:  # a handful of images set the threshold: say so
        where = "calibration-cut" if on_cut else "out-of-fold"
        point["warning"] = (
            f"chosen on only {point['positives']} {where} {positive} images (fewer than "
            f"evaluate.min_class_support={minimum}): one or two of them set the threshold; "
            "treat it as provisional"
        )
    return point


def exact_at_threshold(
    p_positive: np.ndarray, positive: np.ndarray, threshold: float,
    min_support: int = MIN_CLASS_SUPPORT,
) -> dict[str, Any]:  # fmt: skip
    """Sensitivity, specificity and PPV of deciding ``p >= threshold``
    (:func:`medml.calibration.at_threshold`), each with the exact (Clopper-Pearson) 95%
    interval of its counts (``<rate>_ci95``), the counts, and ``too_few_to_judge``: the rates
    whose denominator has fewer than ``min_support`` images."""
    rates = at_threshold(p_positive, positive, threshold, bootstrap=0)
    positive = np.asarray(positive, dtype=bool)
    decided = np.asarray(p_positive) >= threshold
    tp, fn = int(np.sum(positive & decided)), int(np.sum(positive & ~decided))
    tn, fp = int(np.sum(~positive & ~decided)), int(np.sum(~positive & decided))
    counts = {"sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp), "ppv": (tp, tp + fp)}
    for name, (hits, trials) in counts.items():
        rates[f"{name}_ci95"] = exact_interval(hits, trials)
    rates["interval"] = "exact (Clopper-Pearson) 95%"
    rates["counts"] = {"tp": tp, "fn": fn, "tn": tn, "fp": fp}
    rates["too_few_to_judge"] = [name for name, (_, n) in counts.items() if n < min_support]
    return rates


def conformal_report(
    recipe: Recipe, oof: Scored, cut: Scored | None, holdout: Scored | None,
    oof_rows: pd.DataFrame, cut_rows: pd.DataFrame,
) -> dict[str, Any]:  # fmt: skip
    """Class-conditional prediction sets (:mod:`medml.conformal`): calibrated on the
    calibration cut's ensemble output (exchangeable with what the served model outputs; a
    class with too few images there for a bound is in every set), or without a cut on the
    out-of-fold outputs (single fold models: an approximation the holdout coverage tests);
    scored on the holdout — per-class coverage with exact intervals, set sizes — next to one
    threshold for all classes.

    Raises:
        RunError: the served rule and crepes' sets disagree on a holdout image.
    """
    from medml.conformal import (
        crepes_sets,
        fit_sets,
        library,
        marginal_sets,
        set_metrics,
    )

    classes, alpha = recipe.data.classes, recipe.evaluate.conformal_alpha
    minimum = recipe.evaluate.min_class_support
    source, rows = (cut, cut_rows) if cut is not None else (oof, oof_rows)
    groups = rows["group"].to_numpy() if "group" in rows.columns else None
    sets, fitted = fit_sets(source.calibrated, source.y, classes, alpha, groups)
    units = len(fitted.alphas)  # one calibration score per unit (image, or patient)
    report: dict[str, Any] = {
        "alpha": alpha, "target_coverage": 1 - alpha, "library": library(),
        "calibrated_on": ("the fold ensemble's output on the calibration cut" if cut is not None
                          else "out-of-fold outputs of single fold models, an approximation of "
                          "the ensemble's (no calibration cut)") + ", not the holdout",
        "calibration_images": dict(zip(classes, np.bincount(source.y, minlength=len(classes))
                                       .tolist(), strict=True)),
        "calibration_unit": "patient" if units < len(source.y) else "image",
        "calibration_units": units,
        "always_in_set": [c for c, t in zip(classes, sets.score_thresholds, strict=True)
                          if t is None],
        "rule": sets.serving(), "holdout": None, "one_threshold": None,
    }  # fmt: skip
    if holdout is not None:
        inside = sets.contains(holdout.calibrated)
        if not (inside == crepes_sets(fitted, holdout.calibrated, alpha)).all():
            raise RunError("the served prediction-set rule and crepes' sets disagree on the "
                           "holdout; report this as a medml bug")  # fmt: skip
        report["holdout"] = set_metrics(inside, holdout.y, classes, minimum, 1 - alpha)
        one = marginal_sets(source.calibrated, source.y, holdout.calibrated, alpha)
        report["one_threshold"] = set_metrics(one, holdout.y, classes, minimum)
    return report


def write_evaluation(
    files: EvaluationFiles, metrics: HoldoutMetrics, oof_metrics: HoldoutMetrics,
    extras: dict[str, Any],
) -> list[Path]:  # fmt: skip
    """The holdout and OOF metrics, the calibration and (binary) operating point files."""
    written = [metrics.write(files.metrics), oof_metrics.write(files.oof_metrics),
               write_json(files.calibration, extras["calibration"]),
               write_json(files.conformal, extras["conformal"]),
               write_json(files.scores, headline_scores(metrics))]  # fmt: skip
    for path, content in ((files.operating_point, extras["operating_point"]),
                          (files.baseline, extras.get("baseline"))):  # fmt: skip
        if content is not None:
            written.append(write_json(path, content))
        else:  # an earlier evaluation's file must not pass for this one's (register logs it)
            path.unlink(missing_ok=True)
    return written


def headline_scores(metrics: HoldoutMetrics) -> dict[str, Any]:
    """Every registered scalar metric and each class's sensitivity: one screen of columns
    (``metrics.json`` holds the rest: every per-class rate, the intervals, the confusion)."""
    sensitivity = {cls: rates.get("sensitivity") for cls, rates in metrics.per_class.items()}
    return {**scalar_metrics(metrics), "sensitivity": sensitivity}


def baseline_comparison(
    shards_dir: Path, index: pd.DataFrame, y_true: np.ndarray, proba: np.ndarray, recipe: Recipe
) -> dict[str, Any] | None:
    """The ensemble against the baseline (:mod:`medml.baseline`), both on this holdout, the
    baseline trained on every row the folds trained on (``None``: one class to train on)."""
    from medml.baseline import compare, fit_and_score, pixel_features
    from medml.preprocess import ShardRows

    def features(rows: pd.DataFrame) -> np.ndarray:
        shard_rows = ShardRows(shards_dir, rows)
        return np.concatenate([pixel_features(shard_rows.gather(np.arange(
            start, min(start + _PREDICT_ROWS, len(shard_rows)))))
            for start in range(0, len(shard_rows), _PREDICT_ROWS)])  # fmt: skip

    train = index[index["split"] == TRAIN]
    labels = train["label_index"].to_numpy(dtype=np.int64)
    if len(np.unique(labels)) < 2:
        return None  # one class to learn from: no baseline to compare with
    baseline = fit_and_score(features(train), labels, features(index[index["split"] == TEST]),
                             len(recipe.data.classes), recipe.split.seed)  # fmt: skip
    return compare(y_true, proba, baseline, recipe.data.classes, seed=recipe.split.seed,
                   min_class_support=recipe.evaluate.min_class_support)  # fmt: skip


def log_evaluation(
    tracking: Tracking, parent_run_id: str, metrics: HoldoutMetrics, oof_metrics: HoldoutMetrics,
    temperature: float, artifacts: Sequence[Path],
) -> None:  # fmt: skip
    """Holdout (``test_*``) and out-of-fold (``oof_*``) scores and the files, to the run."""
    import mlflow

    with tracking.run(run_id=parent_run_id):
        mlflow.log_metrics({**metrics.loggable("test_"), **oof_metrics.loggable("oof_"),
                            "calibration_temperature": temperature})  # fmt: skip
        for artifact in artifacts:
            mlflow.log_artifact(str(artifact), artifact_path=ARTIFACTS.evaluation)


def write_plots(
    files: EvaluationFiles,
    metrics: HoldoutMetrics,
    y_true: np.ndarray,
    proba: np.ndarray,
    model_paths: Sequence[Path],
    *,
    uncalibrated: np.ndarray | None = None,
) -> list[Path]:
    """Confusion matrix, ROC curves, reliability (after, and before calibration) and (when
    histories exist) learning curves."""
    classes = metrics.classes
    plots = [
        plot_confusion_matrix(
            np.array(metrics.confusion_matrix), classes, files.plot("confusion_matrix")
        ),
        plot_roc_curves(y_true, proba, classes, files.plot("roc_curves")),
        plot_reliability(y_true, proba, files.plot("reliability")),
    ]
    if uncalibrated is not None:
        plots.append(plot_reliability(y_true, uncalibrated, files.plot("reliability_uncalibrated"),
                                      title="before calibration"))  # fmt: skip
    histories = [FoldFiles(Path(p).parent).history for p in model_paths]
    if all(h.is_file() for h in histories):
        curves = [read_json(h)["history"] for h in histories]
        plots.append(plot_learning_curves(curves, files.plot("learning_curves")))
    return plots


def write_label_issues(
    files: EvaluationFiles, shards_dir: Path, oof: OutOfFold, proba: np.ndarray,
    classes: Sequence[str],
) -> list[Path]:  # fmt: skip
    """The suspected label errors among the training images (:mod:`medml.label_issues`): the
    ranked CSV, its summary, and (when there are any) the first suspects' thumbnails."""
    from medml.label_issues import SHOWN, plot_suspects, summary, suspects
    from medml.preprocess import ShardRows

    table = suspects(oof.rows, proba, classes)
    with atomic_path(files.label_issues) as tmp:
        table.to_csv(tmp, index=False)
    written = [files.label_issues,
               write_json(files.label_issues_summary, summary(table, len(oof.y)))]  # fmt: skip
    picture = files.plot("label_issues")
    if len(table):
        shown = ShardRows(shards_dir, oof.rows.iloc[table.index[:SHOWN]])
        written.append(plot_suspects(table, shown.gather(np.arange(len(shown))), picture))
    else:
        picture.unlink(missing_ok=True)
    return written


def write_predictions(
    path: Path, rows: pd.DataFrame, proba: np.ndarray, classes: Sequence[str]
) -> Path:
    """Per image: path, true label, predicted class and class probabilities (parquet)."""
    predictions = pd.DataFrame(proba, columns=[f"p_{c}" for c in classes])
    predictions.insert(0, "path", rows["path"].to_numpy())
    predictions.insert(1, "label", rows["label"].to_numpy())
    predictions.insert(2, "predicted", [classes[i] for i in proba.argmax(axis=1)])
    with atomic_path(path) as tmp:
        predictions.to_parquet(tmp, index=False)
    return path
