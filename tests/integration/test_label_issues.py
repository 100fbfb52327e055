"""Issue 30's label-error proof: flip 5% of the training labels at random; the suspects that
confident learning ranks from medml's out-of-fold probabilities find them.

Data no one here wrote: scikit-learn's handwritten digits (all ten classes, 32x32). The cut-off
is cleanlab's own (:data:`medml.label_issues.CUT_OFF`): for each given class, as many images as
the out-of-fold confident joint estimates are mislabelled. Precision and recall are counted on
the images that have out-of-fold probabilities (the training images: flips that land in the
holdout or the calibration cut are not candidates).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import run_user_recipe, write_digit

pytestmark = pytest.mark.integration

NAMES = "zero one two three four five six seven eight nine".split()
RECIPE = f"""\
name: digits-noisy
description: scikit-learn's digits at 32x32 with 5% of the labels flipped
data:
  layout: class_folders
  classes: [{", ".join(NAMES)}]
image:
  size: 32
  channels: 1
split:
  folds: 2
  near_duplicates: report
train:
  model: small_cnn
  epochs: 30
  min_epochs: 5
registry:
  model_name: digits-noisy
  experiment: medml-digits-noisy
"""


def test_suspects_find_flipped_labels_and_nothing_is_removed(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    flipped = rng.random(len(digits.target)) < 0.05
    root = tmp_path / "digits"
    truth = {}
    for i, (image, digit) in enumerate(zip(digits.images, digits.target, strict=True)):
        label = int(rng.choice([c for c in range(10) if c != digit])) if flipped[i] else digit
        path = f"{NAMES[label]}/d{i}.png"
        write_digit(image, root / path)
        truth[path] = bool(flipped[i])
    run = tmp_path / "run"
    result = run_user_recipe(RECIPE, "digits-noisy", root, run)
    assert result.exit_code == 0, result.output
    evaluation = run / "evaluation"
    suspects = pd.read_csv(evaluation / "label_issues.csv")
    candidates = pd.read_parquet(evaluation / "oof_predictions.parquet")["path"]
    wrong = {p for p in candidates if truth[p]}
    found = set(suspects["path"])
    precision, recall = len(found & wrong) / len(found), len(found & wrong) / len(wrong)
    print(
        f"{len(wrong)} flipped among {len(candidates)} training images; {len(found)} "
        f"suspects: precision {precision:.3f}, recall {recall:.3f}"
    )
    assert precision >= 0.7 and recall >= 0.7
    assert suspects["rank"].tolist() == list(range(1, len(suspects) + 1))
    assert (suspects["p_label"].diff().dropna() >= 0).all()  # least likely under its label first
    summary = json.loads((evaluation / "label_issues.json").read_text())
    assert summary["suspects"] == len(suspects) and summary["removed"] == 0
    assert (evaluation / "label_issues.png").stat().st_size > 10_000
    assert f"suspected label errors: {len(suspects)} of {len(candidates)}" in result.output
    assert sum(1 for _ in root.rglob("*.png")) == len(digits.target)  # nothing removed
