from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from medml.config import Recipe, load_recipe
from medml.split import LeakageError, assign_splits, calibration_description, split
from medml.train import fold_rows
from tests.conftest import TINY as TINY_OVERRIDES


def _table(n_groups: int = 60, per_group: int = 3, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.choice(["Normal", "Cyst", "Stone", "Tumor"], size=n_groups, p=[0.4, 0.3, 0.1, 0.2])
    rows = []
    for g, label in enumerate(labels):
        for s in range(per_group):
            rows.append(
                {
                    "path": f"{label}/P{g}_{s}.jpg",
                    "label": label,
                    "group": f"P{g}",
                    "sha256": f"{g}-{s}",
                }
            )
    return pd.DataFrame(rows)


def test_groups_never_cross_splits_or_folds(tiny_recipe: Recipe) -> None:
    out = assign_splits(_table(), tiny_recipe)
    assert set(out["split"]) == {"train", "test", "calibration"}
    assert (out.loc[out["split"] != "train", "fold"] == -1).all()
    assert set(out.loc[out["split"] == "train", "fold"]) == {0, 1}
    assert out.groupby("group")["split"].nunique().max() == 1
    assert out.groupby("group")["fold"].nunique().max() == 1
    assert 0.1 < (out["split"] == "test").mean() < 0.3
    assert set(out.loc[out["split"] == "test", "label"]) == {"Normal", "Cyst", "Stone", "Tumor"}


def test_seeded_and_reproducible(tiny_recipe: Recipe) -> None:
    a = assign_splits(_table(), tiny_recipe)
    b = assign_splits(_table(), tiny_recipe)
    pd.testing.assert_frame_equal(a, b)


def test_ungrouped_rows_use_plain_stratified_folds(tiny_recipe: Recipe) -> None:
    table = _table(per_group=1)
    out = assign_splits(table, tiny_recipe)
    assert set(out.loc[out["split"] == "train", "fold"]) == {0, 1}


def test_exact_duplicates_across_holdout_fail(tiny_recipe: Recipe, tmp_path: Path) -> None:
    table = _table(per_group=1)
    table["sha256"] = "same-bytes"  # every file is a copy of one image
    table.to_parquet(tmp_path / "clean.parquet")
    with pytest.raises(LeakageError, match="identical images are in both"):
        split(tmp_path / "clean.parquet", tmp_path / "splits.parquet", tiny_recipe)
    assert not (tmp_path / "splits.parquet").exists()
    assert (tmp_path / "split_report.json").exists()


def test_too_few_images_for_folds(tiny_recipe: Recipe) -> None:
    table = _table(n_groups=12, per_group=1)
    recipe = tiny_recipe.model_copy(
        update={"split": tiny_recipe.split.model_copy(update={"folds": 8})}
    )
    with pytest.raises(
        ValueError, match=r"too few images per class for a holdout plus split.folds=8"
    ):
        assign_splits(table, recipe)


def test_near_duplicates_across_holdout_are_reported(tiny_recipe: Recipe) -> None:
    from medml.near_duplicates import thumbnail
    from medml.split import audit_leakage

    rng = np.random.default_rng(0)
    table = assign_splits(_table(per_group=1), tiny_recipe)
    images = [cv2.GaussianBlur(rng.random((64, 64)), (0, 0), 3) for _ in range(len(table))]
    test_row = int(table.index[table["split"] == "test"][0])
    train_row = int(table.index[table["split"] == "train"][0])
    images[test_row] = images[train_row] * 0.8 + 0.1  # the same picture, darker
    table["thumbnail"] = [thumbnail(image) for image in images]
    audit = audit_leakage(table, similarity=0.98)
    assert audit["near_duplicates_across_holdout"] == 1
    ((left, right, similarity),) = audit["near_duplicate_examples"]
    assert (left, right) == (table.loc[test_row, "path"], table.loc[train_row, "path"])
    assert similarity > 0.99


def test_the_datasets_validation_folder_validates_one_model(tiny_recipe: Recipe) -> None:
    from medml.errors import ConfigError
    from medml.split import FIT_ONLY

    table = _table(per_group=1, n_groups=90)
    table["source_split"] = ["validation" if i % 3 == 0 else "train" for i in range(len(table))]
    split_cfg = tiny_recipe.split.model_copy(update={"validation": "dataset", "folds": 1})
    recipe = tiny_recipe.model_copy(update={"split": split_cfg})
    out = assign_splits(table, recipe)
    from_val = out["source_split"].eq("validation")
    assert out.loc[from_val, "split"].eq("train").all() and out.loc[from_val, "fold"].eq(0).all()
    train_rows = out[~from_val & out["split"].eq("train")]
    assert train_rows["fold"].eq(FIT_ONLY).all() and out["split"].eq("test").sum() > 0

    with pytest.raises(ConfigError, match="set split.folds=1"):
        load_recipe("kidney-ct", overrides=["split.validation=dataset"])
    no_folder = table.assign(source_split="train")
    with pytest.raises(ValueError, match="has no val/ or validation/ folder"):
        assign_splits(no_folder, recipe)


@pytest.mark.filterwarnings("ignore:The least populated class")
def test_a_fixed_validation_cut_validates_one_model_and_keeps_patients_whole(
    tiny_recipe: Recipe,
) -> None:
    """Seed 002's protocol: one model, a fixed stratified cut of the non-holdout images."""
    from medml.errors import ConfigError
    from medml.split import FIT_ONLY

    table = _table(n_groups=120, per_group=3)
    table["source_split"] = ""
    split_cfg = tiny_recipe.split.model_copy(
        update={"validation": "cut", "folds": 1, "validation_size": 0.25}
    )
    recipe = tiny_recipe.model_copy(update={"split": split_cfg})
    out = assign_splits(table, recipe)
    training = out[out["split"].eq("train")]
    cut, fit = training[training["fold"].eq(0)], training[training["fold"].eq(FIT_ONLY)]
    assert len(cut) + len(fit) == len(training)
    assert abs(len(cut) / len(training) - 0.25) < 0.06  # a quarter, by patient
    assert not set(cut["group"]) & set(fit["group"])  # a patient on one side only
    assert set(cut["label"]) == set(fit["label"]) == set(table["label"])  # stratified
    assert assign_splits(table, recipe).equals(out)  # fixed: the same cut every time

    with pytest.raises(ConfigError, match="split.validation=cut trains one model"):
        load_recipe("kidney-ct", overrides=["split.validation=cut"])
    tiny = recipe.model_copy(update={"split": split_cfg.model_copy(update={"test_size": 0.0})})
    with pytest.raises(ValueError, match=r"for a validation cut: \{'Tumor': 1, 'Stone': 1\}"):
        assign_splits(_table(n_groups=12, per_group=1, seed=3), tiny)


@pytest.mark.filterwarnings("ignore:The least populated class")
@pytest.mark.parametrize("seed", range(12))
def test_fast_group_kfold_chooses_exactly_as_scikit_learn(seed: int) -> None:
    from sklearn.model_selection import StratifiedGroupKFold

    from medml.split import FastStratifiedGroupKFold

    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 15))
    n_groups = int(rng.integers(30, 400))
    sizes = rng.integers(1, 6, size=n_groups) if seed % 3 else np.ones(n_groups, int)
    groups = np.repeat(np.arange(n_groups), sizes)
    weights = rng.dirichlet(np.full(n_classes, 0.5))
    y = rng.choice(n_classes, size=len(groups), p=weights)
    y[:n_classes] = np.arange(n_classes)  # every class present
    # patients mostly of one class, some mixed: ties and near-ties between folds
    y = np.where(rng.random(len(y)) < 0.8, y[np.searchsorted(groups, groups)], y)
    n_splits = int(rng.integers(2, 6))
    ours = FastStratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    theirs = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    expected = [list(test) for _, test in theirs.split(y, y, groups)]
    got = [list(test) for _, test in ours.split(y, y, groups)]
    assert got == expected


def _with_split(recipe: Recipe, **update: object) -> Recipe:
    return recipe.model_copy(update={"split": recipe.split.model_copy(update=update)})


def _unknown_label(table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(label=table["label"].where(table.index != 0, "Kidney"))


def _stone_mostly_in_the_given_test(table: pd.DataFrame) -> pd.DataFrame:
    stone = table.index[table["label"] == "Stone"]
    return table.assign(source_split=["test" if i in stone[1:] else "train" for i in table.index])


def _no_stone_in_the_validation_folder(table: pd.DataFrame) -> pd.DataFrame:
    val = [i % 3 == 0 and label != "Stone" for i, label in enumerate(table["label"])]
    return table.assign(source_split=["validation" if v else "train" for v in val])


@pytest.mark.filterwarnings("ignore:The least populated class")
@pytest.mark.parametrize(
    ("prepare", "split_update", "message"),
    [
        (_unknown_label, {}, r"labels \['Kidney'\] are not in the recipe's data.classes"),
        (lambda t: t, {"folds": 8}, r"too few images per class for a holdout plus split.folds=8: "
                                    r"\{'Stone': \d\}; need at least 9 per class; add data or "
                                    r"lower split.folds"),
        (lambda t: t, {"test_size": 0.02}, r"split.test_size=0.02 \(1 in 50 per class\): these "
                                           r"classes have fewer than 50 images: \{'Normal': \d+, "),
        (_stone_mostly_in_the_given_test, {}, r"too few training images for split.folds=2: "
                                              r"\{'Stone': 1\}"),
        (_no_stone_in_the_validation_folder, {"validation": "dataset", "folds": 1},
         r"the validation folder has no images of \['Stone'\]; .* use split.validation=folds"),
    ],
)  # fmt: skip
def test_split_errors_name_the_setting_and_the_fix(
    tiny_recipe: Recipe,
    prepare: Callable[[pd.DataFrame], pd.DataFrame],
    split_update: dict[str, object],
    message: str,
) -> None:
    """Every split error is one line (CLI exit code 3), and still a ValueError."""
    from medml.errors import MedmlError, SplitError

    table = prepare(_table(n_groups=60, per_group=1))
    with pytest.raises(SplitError, match=message) as caught:
        assign_splits(table, _with_split(tiny_recipe, **split_update))
    assert isinstance(caught.value, MedmlError) and isinstance(caught.value, ValueError)
    assert caught.value.exit_code == 3 and "\n" not in str(caught.value)


def test_the_fast_fold_choice_still_replaces_scikit_learns_private_hook() -> None:
    """``FastStratifiedGroupKFold`` overrides scikit-learn's private ``_find_best_fold``: a
    scikit-learn that renames it or changes its arguments must fail here, not silently fall
    back to the slow loop (the equivalence test above would still pass)."""
    import inspect

    from sklearn.model_selection import StratifiedGroupKFold

    from medml.split import FastStratifiedGroupKFold

    hook = getattr(StratifiedGroupKFold, "_find_best_fold", None)
    assert hook is not None, "scikit-learn no longer has StratifiedGroupKFold._find_best_fold"
    theirs = list(inspect.signature(hook).parameters)
    assert theirs == list(inspect.signature(FastStratifiedGroupKFold._find_best_fold).parameters)
    calls = []
    original = FastStratifiedGroupKFold._find_best_fold

    class Spy(FastStratifiedGroupKFold):
        def _find_best_fold(self, *args, **kwargs):
            calls.append(1)
            return original(self, *args, **kwargs)

    y = np.arange(40) % 2
    list(Spy(n_splits=2).split(y, y, np.arange(40) // 2))
    assert calls, "scikit-learn's split no longer calls _find_best_fold"


def test_the_validation_cut_takes_a_part_with_every_class_on_both_sides(
    tiny_recipe: Recipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Of the candidate parts a group-aware 1-in-n cut offers, the first may lack a class of
    few large groups (pseudo-patient clusters): the cut is the first part that has every class
    on both sides, and the clusters are bounded by the cut's parts, not by folds=1."""
    import medml.split as split_module

    rows = [{"path": f"Normal/P{g}.jpg", "label": "Normal", "group": f"P{g}",
             "sha256": f"n{g}"} for g in range(40)]  # fmt: skip
    rows += [{"path": f"Stone/S{g}.jpg", "label": "Stone", "group": "S", "sha256": f"s{g}"}
             for g in range(4)] + [{"path": "Stone/T.jpg", "label": "Stone", "group": "T",
                                    "sha256": "t"}]  # fmt: skip
    table = pd.DataFrame(rows).assign(source_split="")
    cfg = tiny_recipe.split.model_copy(update={
        "validation": "cut", "folds": 1, "validation_size": 0.25, "test_size": 0.0,
    })  # fmt: skip
    data = tiny_recipe.data.model_copy(update={"classes": ["Normal", "Stone"]})
    recipe = tiny_recipe.model_copy(update={"split": cfg, "data": data})
    normal_only = list(range(10))  # a first candidate without any Stone image

    class FirstPartLacksStone:
        def split(self, x: object, y: object, groups: object = None):
            yield None, np.array(normal_only)
            yield None, np.array([10, 11, 12, 40, 44])  # Normal and Stone (groups S and T)

    monkeypatch.setattr(split_module, "_make_cv", lambda *args: FirstPartLacksStone())
    out = assign_splits(table, recipe)
    cut = out[out["fold"].eq(0)]
    assert set(cut["label"]) == {"Normal", "Stone"} and len(cut) == 5
    assert cfg.parts == 4 and tiny_recipe.split.parts == tiny_recipe.split.folds


def test_the_calibration_cut_is_whole_patients_of_every_class_that_no_fold_trains_on(
    tiny_recipe: Recipe, tmp_path: Path
) -> None:
    table = _table(n_groups=200)
    table.to_parquet(tmp_path / "clean.parquet")
    split(tmp_path / "clean.parquet", tmp_path / "splits.parquet", tiny_recipe)
    out = pd.read_parquet(tmp_path / "splits.parquet")
    cut = out[out["split"] == "calibration"]
    pool = out[out["split"] != "test"]
    assert set(cut["label"]) == {"Normal", "Cyst", "Stone", "Tumor"}
    assert (cut["fold"] == -1).all()
    assert 0.05 < len(cut) / len(pool) < 0.15  # 1 in round(1 / 0.1) of the patients
    assert out.groupby("group")["split"].nunique().max() == 1  # a patient is on one side
    for fold in (0, 1):  # neither trained nor validated on by any fold model
        fitted, validated = fold_rows(out, fold)
        assert not set(cut["path"]) & (set(fitted["path"]) | set(validated["path"]))
    report = json.loads((tmp_path / "split_report.json").read_text())
    assert report["calibration_size"] == len(cut)
    assert report["calibration"].startswith("1 in 10 of the training patients/groups")
    assert report["class_counts"]["calibration"] == cut["label"].value_counts().to_dict()
    assert report["leakage"]["groups_across_calibration"] == 0


def test_no_calibration_cut_when_a_class_cannot_spare_an_image_and_the_report_says_why(
    tiny_recipe: Recipe,
) -> None:
    table = _table(n_groups=60, per_group=1)
    stone = table.index[table["label"] == "Stone"]
    table = table.drop(stone[3:])  # three Stone images: the holdout takes one, the folds two
    out = assign_splits(table, tiny_recipe)
    assert "calibration" not in set(out["split"])
    described = calibration_description(out, tiny_recipe)
    assert described.startswith("none: no stratified 1-in-10 cut of the training images held")
    assert "'Stone': 2" in described and "single fold models' out-of-fold outputs" in described
    off = load_recipe("kidney-ct", overrides=[*TINY_OVERRIDES, "split.calibration_size=0"])
    out = assign_splits(_table(), off)
    assert "calibration" not in set(out["split"])
    assert calibration_description(out, off).startswith("none (split.calibration_size=0)")
    one = load_recipe("kidney-ct", overrides=[*TINY_OVERRIDES, "split.validation=cut",
                                              "split.folds=1"])  # fmt: skip
    out = assign_splits(_table(), one)
    assert "calibration" not in set(out["split"])
    assert calibration_description(out, one).startswith("none: one model")


def test_copies_filed_under_two_patients_across_the_calibration_cut_fail(
    tmp_path: Path,
) -> None:
    """Cross-validation only, every image filed twice under two patient ids: the calibration
    cut is the one estimate of the registered ensemble, so copies across it fail the split."""
    table = _table(n_groups=200, per_group=1)
    twins = table.assign(path="twin/" + table["path"], group="Q" + table["group"])
    pd.concat([table, twins]).to_parquet(tmp_path / "clean.parquet")
    recipe = load_recipe("kidney-ct", overrides=[*TINY_OVERRIDES, "split.test_size=0"])
    with pytest.raises(LeakageError, match="identical images are in both the folds' training"):
        split(tmp_path / "clean.parquet", tmp_path / "splits.parquet", recipe)
    assert not (tmp_path / "splits.parquet").exists()
