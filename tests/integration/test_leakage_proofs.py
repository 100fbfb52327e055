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


def _three_splits(root: Path, truth: pd.DataFrame, work: Path) -> tuple[
    tuple[pd.DataFrame, dict], tuple[pd.DataFrame, dict], pd.DataFrame
]:  # fmt: skip
    """medml's split by image (``report``), by pseudo-patient groups (the default), and by the
    true patients (the same steps, given them as a ``groups.csv``)."""
    by_image = _medml_split(root, work / "report", ["split.near_duplicates=report"])
    pseudo = _medml_split(root, work / "group", [])
    truth.to_csv(root / "groups.csv", index=False)
    try:
        patient, _ = _medml_split(root, work / "truth", [])
    finally:
        (root / "groups.csv").unlink()
    return by_image, pseudo, patient


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
    (by_image, _), (pseudo, report), patient = _three_splits(root, truth, tmp_path)

    estimates = {name: _out_of_fold_1nn(root, splits) for name, splits in
                 [("random", by_image), ("pseudo", pseudo), ("patient", patient)]}  # fmt: skip
    clusters = report["near_duplicates"]
    print(f"1-NN out-of-fold balanced accuracy: {estimates}; clusters: {clusters}")
    assert estimates["random"] > estimates["patient"] + 0.3  # a random split inflates
    assert abs(estimates["pseudo"] - estimates["patient"]) <= 0.02
    assert clusters["policy"] == "group" and clusters["similarity"] == 0.95
    # coarser than patients (look-alike patients of one class share a cluster), never finer
    # where a 1-NN would see it; the cap holds
    assert clusters["clusters"] > 50 and clusters["largest"] <= clusters["max_group"]
    assert pseudo["group_source"].eq("near-duplicates").mean() > 0.9
    sides = pseudo.merge(truth, on="path", suffixes=("", "_true"))
    straddling = sides.groupby("group_true")["split"].nunique().gt(1).mean()
    print(f"patients with slices on both sides of the holdout: {straddling:.1%}")
    assert straddling <= 0.02


@pytest.fixture(scope="module")
def shifted_digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """Data no one here wrote: scikit-learn's handwritten digits as 64-pixel "slices", each
    "patient" one digit seen five times — translated 1-3 px, rotated up to 3 degrees, scaled up
    to 3 %, with another brightness and noise, as sibling CT slices are — and no groups.csv."""
    import cv2
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("digits") / "ct"
    classes = ["Normal", "Cyst", "Stone", "Tumor"]
    rows = []
    for index in range(400):
        big = cv2.resize((digits.images[index] * 15).astype(np.float32), (64, 64),
                         interpolation=cv2.INTER_CUBIC)  # fmt: skip
        label = classes[index % 4]  # unrelated to the digit: only memory can score above chance
        (root / label).mkdir(parents=True, exist_ok=True)
        for copy in range(5):
            dx, dy = rng.choice([-3, -2, -1, 1, 2, 3], 2)
            matrix = cv2.getRotationMatrix2D((32, 32), rng.uniform(-3, 3), rng.uniform(0.97, 1.03))
            matrix[:, 2] += (dx, dy)
            moved = cv2.warpAffine(big, matrix, (64, 64), borderMode=cv2.BORDER_CONSTANT)
            moved = moved * rng.uniform(0.85, 1.15) + rng.normal(0, 3, moved.shape)
            path = f"{label}/p{index}_{copy}.png"
            cv2.imwrite(str(root / path), np.clip(moved + 20, 0, 255).astype(np.uint8))
            rows.append({"path": path, "group": f"p{index}"})
    return root, pd.DataFrame(rows)


def _leaks_visible_to_1nn(root: Path, splits: pd.DataFrame, truth: pd.DataFrame) -> int:
    """Holdout images whose nearest training image (pixels) is one of their own patient's: what
    a memorising model sees, found with the true patients, independently of medml."""
    table = splits.merge(truth.rename(columns={"group": "patient"}), on="path")
    load = LoadImage(28, 1)
    pixels = {p: load(root / p).ravel().astype(np.float32) for p in table["path"]}
    train, test = table[table["split"] == "train"], table[table["split"] == "test"]
    model = KNeighborsClassifier(n_neighbors=1).fit(
        np.stack([pixels[p] for p in train["path"]]), train["patient"]
    )
    nearest = model.predict(np.stack([pixels[p] for p in test["path"]]))
    return int((nearest == test["patient"].to_numpy()).sum())


def test_shifted_copies_are_grouped_and_the_audit_sees_what_a_1nn_sees(
    shifted_digits, tmp_path
) -> None:
    root, truth = shifted_digits
    (by_image, image_report), (pseudo, report), patient = _three_splits(root, truth, tmp_path)
    estimates = {name: _out_of_fold_1nn(root, splits) for name, splits in
                 [("random", by_image), ("pseudo", pseudo), ("patient", patient)]}  # fmt: skip
    leaks = {name: _leaks_visible_to_1nn(root, splits, truth) for name, splits in
             [("random", by_image), ("pseudo", pseudo)]}  # fmt: skip
    audited = image_report["leakage"]["near_duplicates_across_holdout"]
    print(
        f"1-NN out-of-fold: {estimates}; holdout images whose 1-NN is a sibling: {leaks}; "
        f"the split report's count on the image split: {audited}"
    )
    assert estimates["random"] > estimates["patient"] + 0.05  # shifted copies inflate
    assert abs(estimates["pseudo"] - estimates["patient"]) <= 0.02
    assert leaks["pseudo"] <= 0.02 * (pseudo["split"] == "test").sum()
    # the audit's detector is at least as sensitive as a memorising 1-NN: no false "0 leaks"
    assert audited >= 0.9 * leaks["random"] > 0
