"""A picture of the dataset in every run: class counts (and how balancing changed them in each
fold's training part), samples per class, augmented samples.

Written by the evaluate step (TensorFlow is loaded there already; the augmented copies need it)
from the shards — the pixels exactly as the model sees them — into ``<run>/overview/``, and
logged to the pipeline's MLflow run under ``overview/``; the summary points at them. The
write-ups show the same three figures before training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medml.balance import strategy_capabilities
from medml.config import Recipe
from medml.figures import pyplot, save_figure
from medml.layout import plot_file
from medml.preprocess import ShardRows, load_index
from medml.split import CALIBRATION, TEST, TRAIN

SAMPLES_PER_CLASS = 6
AUGMENTED_COPIES = 5


def write_overview(
    shards_dir: Path, out_dir: Path, recipe: Recipe, fold_histories: Sequence[Path] = ()
) -> list[Path]:
    """Write ``class_counts.png``, ``samples.png`` and ``augmented.png`` into ``out_dir``, and
    ``balancing.png`` from the folds' ``history.json`` (class counts before and after
    balancing) when they record them.

    Returns:
        The files written.
    """
    index = load_index(shards_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(recipe.split.seed)
    training = index[index["split"] == TRAIN]
    picks = {
        name: rows.iloc[np.sort(rng.permutation(len(rows))[:SAMPLES_PER_CLASS])]
        for name in recipe.data.classes
        if len(rows := training[training["label"] == name])
    }
    images = {name: ShardRows(shards_dir, rows).gather(np.arange(len(rows)))
              for name, rows in picks.items()}  # fmt: skip
    counts = [c for c in (_class_counts(path) for path in fold_histories) if c is not None]
    balancing = [plot_balancing(counts, recipe, out_dir / plot_file("balancing"))] if counts else []
    return [
        *balancing,
        plot_class_counts(index, recipe.data.classes, out_dir / plot_file("class_counts")),
        plot_grid(images, out_dir / plot_file("samples"), title="training images per class"),
        plot_grid(augmented_copies(images, recipe), out_dir / plot_file("augmented"),
                  title=f"augmented copies (first column: original; {_augment_label(recipe)})"),
    ]  # fmt: skip


def augmented_copies(images: dict[str, np.ndarray], recipe: Recipe) -> dict[str, np.ndarray]:
    """Each class's first sample, then :data:`AUGMENTED_COPIES` augmentations of it."""
    from medml.augment import RandAugment

    augment = RandAugment(recipe.train.augment, seed=recipe.train.seed)
    out = {}
    for name, batch in images.items():
        repeated = np.repeat(batch[:1], AUGMENTED_COPIES, axis=0)
        changed = np.rint(np.asarray(augment(repeated))).astype(np.uint8)
        out[name] = np.concatenate([batch[:1], changed])
    return out


def plot_class_counts(index: pd.DataFrame, classes: list[str], path: Path) -> Path:
    """Images per class: the folds' training part, the calibration cut and the holdout,
    stacked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(classes) + 2), 3.6))
    bottom = np.zeros(len(classes))
    for part, label in ((TRAIN, "training (folds)"), (CALIBRATION, "calibration cut"),
                        (TEST, "holdout")):  # fmt: skip
        rows = index[index["split"] == part]
        if part != TRAIN and not len(rows):
            continue
        counts = rows["label"].value_counts().reindex(classes, fill_value=0).to_numpy()
        ax.bar(classes, counts, bottom=bottom, label=label)
        bottom = bottom + counts
    for k, total in enumerate(bottom):
        ax.annotate(str(int(total)), (k, total), ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="images", title="images per class")
    ax.tick_params(axis="x", labelrotation=30 if len(classes) > 4 else 0)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _class_counts(history: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(history).read_text()).get("class_counts")
    except (OSError, ValueError):
        return None


def plot_balancing(counts: Sequence[dict[str, Any]], recipe: Recipe, path: Path) -> Path:
    """Images per class in the folds' training parts before and after ``train.balance`` (the
    mean over the folds), and with class weights the weighted count the loss sees."""
    plt = pyplot()
    classes = recipe.data.classes
    before = np.mean([c["before"] for c in counts], axis=0)
    after = np.mean([c["after"] for c in counts], axis=0)
    bars = {"before balancing": before, f"after {recipe.train.balance}": after}
    weights = [c["class_weight"] for c in counts if c.get("class_weight")]
    if weights:
        bars["weighted by the loss (count x class weight)"] = after * np.mean(weights, axis=0)
    fig, ax = plt.subplots(figsize=(max(5.5, 0.9 * len(classes) + 2), 3.8))
    width = 0.8 / len(bars)
    positions = np.arange(len(classes))
    for k, (label, values) in enumerate(bars.items()):
        drawn = ax.bar(positions + k * width, values, width=width, label=label)
        ax.bar_label(drawn, fmt="%.0f", fontsize=7, padding=1)
    ax.set_xticks(positions + width * (len(bars) - 1) / 2, classes)
    ax.tick_params(axis="x", labelrotation=30 if len(classes) > 4 else 0)
    folds = f"mean over {len(counts)} folds" if len(counts) > 1 else "the fold"
    ax.set(ylabel="training images", title=f"class counts before and after balancing ({folds})")
    ax.set_ylim(0, 1.3 * max(float(np.max(v)) for v in bars.values()))
    ax.legend(fontsize=8, loc="upper center", ncol=len(bars))
    return save_figure(fig, path)


def plot_grid(images: dict[str, np.ndarray], path: Path, *, title: str) -> Path:
    """One row per class, its images left to right."""
    plt = pyplot()
    columns = max((len(batch) for batch in images.values()), default=1)
    rows = max(1, len(images))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns + 1.2, 1.6 * rows + 0.4),
                             squeeze=False)  # fmt: skip
    for row, (name, batch) in enumerate(images.items()):
        for column in range(columns):
            ax = axes[row][column]
            ax.set_xticks([])
            ax.set_yticks([])
            if column < len(batch):
                image = batch[column]
                if image.shape[-1] == 1:
                    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
                else:
                    ax.imshow(image[..., ::-1])  # OpenCV order (BGR) to RGB
            else:
                ax.axis("off")
        axes[row][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def _augment_label(recipe: Recipe) -> str:
    """Where the recipe uses the augmentation policy: every training batch, the balancing
    strategy's copies only (as its capabilities declare), or nowhere."""
    cfg = recipe.train.augment
    copies = strategy_capabilities(recipe.train.balance).augments_copies_per_batch
    used = "every training batch" if recipe.train.augment_in_training else "oversampling only"
    if not copies and not recipe.train.augment_in_training:
        used = "not used by this recipe"
    return f"policy {cfg.policy}, {used}"
