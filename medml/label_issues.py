"""Suspected label errors: training images whose label their out-of-fold output contradicts.

Medical labels are noisy. Each training image's out-of-fold probabilities come from the fold
model that did not train on it, which is what confident learning (Northcutt et al., 2021)
needs: cleanlab's :func:`cleanlab.filter.find_label_issues` estimates, from the out-of-fold
confident joint, how many images of each given class are truly of another, and flags that many
of them — those the model finds least likely under their label (``filter_by=
"prune_by_noise_rate"``, cleanlab's default). They are ranked by self-confidence (the
probability of the given label), lowest first.

Nothing is removed: ``evaluation/label_issues.csv`` and ``label_issues.png`` (thumbnails with
the given and the suggested class) are for a data engineer to check against the source.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CUT_OFF = (
    "cleanlab's confident learning (find_label_issues, filter_by='prune_by_noise_rate'): for "
    "each given class, as many images as the out-of-fold confident joint estimates are truly "
    "of another class, those least likely under their label; ranked by the out-of-fold "
    "probability of the given label, lowest first"
)
COLUMNS = ["rank", "path", "label", "suggested", "p_label", "p_suggested", "fold"]
SHOWN = 24


def suspects(rows: pd.DataFrame, proba: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """The suspected label errors among ``rows`` (``path``, ``label_index``, ``fold``) with
    out-of-fold probabilities ``proba``, most suspect first (:data:`COLUMNS`; the index is each
    suspect's position in ``rows``)."""
    from cleanlab.filter import find_label_issues

    labels = rows["label_index"].to_numpy(dtype=np.int64)
    present = np.bincount(labels, minlength=len(classes)) > 0
    if len(labels) == 0 or present.sum() < 2:
        return pd.DataFrame(columns=COLUMNS)  # one class: nothing to confuse it with
    flagged = find_label_issues(labels, np.asarray(proba, dtype=np.float64),
                                return_indices_ranked_by="self_confidence",
                                n_jobs=1)  # fmt: skip
    other = np.asarray(proba, dtype=np.float64).copy()
    other[np.arange(len(labels)), labels] = -1.0
    suggested = other.argmax(axis=1)
    return pd.DataFrame(index=flagged, data={
        "rank": np.arange(1, len(flagged) + 1),
        "path": rows["path"].to_numpy()[flagged],
        "label": [classes[i] for i in labels[flagged]],
        "suggested": [classes[i] for i in suggested[flagged]],
        "p_label": proba[flagged, labels[flagged]].astype(float),
        "p_suggested": proba[flagged, suggested[flagged]].astype(float),
        "fold": rows["fold"].to_numpy()[flagged],
    }, columns=COLUMNS)  # fmt: skip


def plot_suspects(table: pd.DataFrame, images: np.ndarray, path: Path) -> Path:
    """The first suspects' thumbnails, each titled with its given and suggested class."""
    from medml.figures import pyplot, save_figure

    plt = pyplot()
    shown = min(len(table), SHOWN)
    cols = min(shown, 8) or 1
    rows = max(1, -(-shown // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (_, row), image in zip(axes.ravel(), table.head(shown).iterrows(), images,
                                   strict=False):  # fmt: skip
        ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None)
        ax.set_title(f"#{row['rank']} {row['label']}\n→ {row['suggested']} "
                     f"({row['p_suggested']:.2f})", fontsize=7)  # fmt: skip
    fig.suptitle("suspected label errors: given → suggested (out-of-fold probability)",
                 fontsize=9)  # fmt: skip
    return save_figure(fig, path)


def summary(table: pd.DataFrame, checked: int) -> dict[str, Any]:
    """How many were flagged, of how many, and by which rule (``label_issues.json``)."""
    return {"suspects": int(len(table)), "checked": int(checked), "cut_off": CUT_OFF,
            "by_given_class": {str(k): int(v) for k, v in
                               table["label"].value_counts().sort_index().items()},
            "removed": 0}  # fmt: skip
