"""Proofs on phantom data that medml's honest path is not the inflated one.

1. Seed 000's mistake: SMOTE on the whole dataset, then split. Synthetic minority images are
   interpolated from images that end up in the test set, so a classifier "recognises" the test
   set. The same data, split first and SMOTE'd inside the training part only, scores lower.
2. Several slices per patient: a split that ignores patients puts sibling slices on both sides;
   the score rises relative to the patient-grouped split, which is what medml uses.
3. The same without any patient ids: medml's near-duplicate pseudo-patient groups bring the
   estimate back to within 2 points of the true patient split.

A 1-nearest-neighbour classifier on pixels makes both effects plain and runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from imblearn.over_sampling import SMOTE
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split
from sklearn.neighbors import KNeighborsClassifier

from medml.balance import PixelSMOTE
from medml.config import load_recipe
from medml.data.synthetic import synth_kidney_ct
from medml.layout import split_report_path
from medml.preprocess import LoadImage
from medml.runs import init_run
from medml.split import assign_splits, has_groups
from medml.steps import STEPS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pixels(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seed 000's representation: 28x28 images as flat pixel vectors, labels, patient ids."""
    root = synth_kidney_ct(tmp_path_factory.mktemp("leak") / "ct", n=900, seed=5).root
    groups = pd.read_csv(root / "groups.csv")
    load = LoadImage(28, 1)
    x = np.stack([load(root / p).ravel() for p in groups["path"]]).astype(np.float32)
    classes = ["Normal", "Cyst", "Stone", "Tumor"]
    y = np.array([classes.index(Path(p).parent.name) for p in groups["path"]])
    return x, y, groups["group"].to_numpy()


def _score(x_train, y_train, x_test, y_test) -> float:
    model = KNeighborsClassifier(n_neighbors=1).fit(x_train, y_train)
    return balanced_accuracy_score(y_test, model.predict(x_test))


def test_smote_before_split_inflates_the_score(pixels) -> None:
    x, y, _ = pixels
    # Seed 000: SMOTE on everything, then split.
    x_all, y_all = SMOTE(random_state=0).fit_resample(x, y)
    xa, xb, ya, yb = train_test_split(x_all, y_all, test_size=0.2, stratify=y_all, random_state=0)
    leaky = _score(xa, ya, xb, yb)
    # Honest: split first; SMOTE (medml's PixelSMOTE) on the training part only.
    xa, xb, ya, yb = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    images = xa.reshape(-1, 28, 28, 1).astype(np.uint8)
    x_res, y_res = PixelSMOTE(random_state=0).fit_resample(images, ya)
    honest = _score(x_res.reshape(len(x_res), -1).astype(np.float32), y_res, xb, yb)
    print(
        f"SMOTE before split: {leaky:.3f}  honest (split, then SMOTE the train part): {honest:.3f}"
    )
    assert leaky > honest + 0.05


def test_random_split_of_patients_inflates_the_score(pixels) -> None:
    x, y, groups = pixels

    def cv_score(cv, use_groups: bool) -> float:
        scores = [
            _score(x[tr], y[tr], x[te], y[te])
            for tr, te in cv.split(x, y, groups if use_groups else None)
        ]
        return float(np.mean(scores))

    random_split = cv_score(StratifiedKFold(5, shuffle=True, random_state=0), False)
    grouped = cv_score(StratifiedGroupKFold(5, shuffle=True, random_state=0), True)
    print(f"random split: {random_split:.3f}  patient-grouped split: {grouped:.3f}")
    assert random_split > grouped + 0.05

    table = pd.DataFrame(
        {
            "path": [f"{i}" for i in range(len(y))],
            "group": groups,
            "label": np.array(["Normal", "Cyst", "Stone", "Tumor"])[y],
            "sha256": [f"{i}" for i in range(len(y))],
        }
    )
    assert has_groups(table["group"])
    out = assign_splits(table, load_recipe("kidney-ct"))
    assert out.groupby("group")["split"].nunique().max() == 1  # medml keeps patients together
    assert out.groupby("group")["fold"].nunique().max() == 1


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """Scan-like phantom patients (each patient's slices look alike), without ``groups.csv``."""
    root = synth_kidney_ct(tmp_path_factory.mktemp("scans") / "ct", n=4000, seed=21,
                           image_size=64, slices_per_patient=(4, 12), series=True).root  # fmt: skip
    truth = pd.read_csv(root / "groups.csv")
    (root / "groups.csv").unlink()  # what users bring: no patient ids at all
    return root, truth


def _medml_split(root: Path, work: Path, overrides: list[str]) -> tuple[pd.DataFrame, dict]:
    """medml's own ingest, validate and split steps; the splits and the split report."""
    ctx = init_run(work, root, "kidney-ct", overrides=["split.folds=5", *overrides])
    for step in (STEPS["ingest"], STEPS["validate"], STEPS["split"]):
        step(ctx.layout.root)
    report = json.loads(split_report_path(ctx.layout.splits).read_text())
    return pd.read_parquet(ctx.layout.splits), report


def _out_of_fold_1nn(root: Path, splits: pd.DataFrame) -> float:
    """Balanced accuracy of a memorising 1-NN over the training part's folds."""
    train = splits[splits["split"] == "train"].reset_index(drop=True)
    load = LoadImage(28, 1)
    x = np.stack([load(root / p).ravel() for p in train["path"]]).astype(np.float32)
    y, fold = train["label_index"].to_numpy(), train["fold"].to_numpy()
    scores = [_score(x[fold != k], y[fold != k], x[fold == k], y[fold == k])
              for k in sorted(set(fold))]  # fmt: skip
    return float(np.mean(scores))


def test_pseudo_patient_groups_bring_the_estimate_to_the_patient_split(scans, tmp_path) -> None:
    root, truth = scans
    by_image, _ = _medml_split(root, tmp_path / "report", ["split.near_duplicates=report"])
    pseudo, report = _medml_split(root, tmp_path / "group", [])  # the default
    # The patient split: the same steps, given the true patients as a groups.csv.
    truth.to_csv(root / "groups.csv", index=False)
    try:
        patient, _ = _medml_split(root, tmp_path / "truth", [])
    finally:
        (root / "groups.csv").unlink()

    estimates = {name: _out_of_fold_1nn(root, splits) for name, splits in
                 [("random", by_image), ("pseudo", pseudo), ("patient", patient)]}  # fmt: skip
    clusters = report["near_duplicates"]
    print(f"1-NN out-of-fold balanced accuracy: {estimates}; clusters: {clusters}")
    assert estimates["random"] > estimates["patient"] + 0.3  # a random split inflates
    assert abs(estimates["pseudo"] - estimates["patient"]) <= 0.02
    assert clusters["policy"] == "group" and clusters["similarity"] == 0.98
    assert clusters["clusters"] > 100 and clusters["largest"] <= clusters["max_group"]
    assert pseudo["group_source"].eq("near-duplicates").mean() > 0.9
    sides = pseudo.merge(truth, on="path", suffixes=("", "_true"))
    straddling = sides.groupby("group_true")["split"].nunique().gt(1).mean()
    print(f"patients with slices on both sides of the holdout: {straddling:.1%}")
    assert straddling <= 0.02
