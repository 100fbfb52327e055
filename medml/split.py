"""Holdout + k-fold splitting, group-aware, with a leakage audit.

The holdout test set is cut first and never touched again until evaluation; the k folds are
cut from the rest. When rows carry a group (patient, video) that repeats, every split keeps a
group on one side (StratifiedGroupKFold); otherwise StratifiedKFold. The assignment is seeded
and written to ``splits.parquet`` so every runner (CLI, DVC, Airflow, a Kubernetes pod) trains
on exactly the same folds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from medml.config import Recipe
from medml.errors import MedmlError
from medml.io import atomic_path, write_json
from medml.layout import split_report_path

TEST = "test"
TRAIN = "train"


class LeakageError(MedmlError):
    """The same image (by content hash) lands on both sides of the holdout split."""


@dataclass(frozen=True)
class SplitResult:
    """What :func:`split` wrote."""

    splits: Path
    report: Path
    grouped: bool
    test_size: int
    fold_sizes: list[int]


def has_groups(groups: pd.Series) -> bool:
    """True when at least one group holds more than one row (so grouping matters)."""
    return bool(groups.notna().all() and groups.duplicated().any())


def assign_splits(table: pd.DataFrame, recipe: Recipe) -> pd.DataFrame:
    """Add ``label_index``, ``split`` (train/test) and ``fold`` (-1 for test) columns.

    Args:
        table: manifest rows with ``label`` and ``group`` columns.
        recipe: class order, test size, number of folds and seed.

    Returns:
        A copy of ``table`` with the three columns added.

    Raises:
        ValueError: a class has too few rows (or groups) for the requested folds.
    """
    cfg = recipe.split
    out = table.reset_index(drop=True).copy()
    out["label_index"] = out["label"].map({c: i for i, c in enumerate(recipe.data.classes)})
    if out["label_index"].isna().any():
        unknown = sorted(set(out.loc[out["label_index"].isna(), "label"]))
        raise ValueError(f"labels {unknown} are not in the recipe's classes; validate first")
    y = out["label_index"].to_numpy(dtype=np.int64)
    grouped = has_groups(out["group"])
    groups = out["group"].to_numpy() if grouped else None

    unit = "patients/groups" if grouped else "images"
    units = out.groupby("label")["group"].nunique() if grouped else out["label"].value_counts()
    if units.min() < cfg.folds + 1:
        short = {str(k): int(v) for k, v in units.items() if v < cfg.folds + 1}
        raise ValueError(
            f"too few {unit} per class for a holdout plus split.folds={cfg.folds}: {short}; "
            f"need at least {cfg.folds + 1} per class; add data or lower split.folds"
        )
    given_test = (
        out["source_split"].eq("test").to_numpy()
        if "source_split" in out.columns
        else np.zeros(len(out), bool)
    )
    if given_test.any():  # the dataset's own test split is the holdout
        test_idx = np.flatnonzero(given_test)
    else:
        n_holdout_splits = max(2, int(round(1.0 / cfg.test_size)))
        holdout_cv = _make_cv(grouped, n_holdout_splits, cfg.seed)
        try:
            _, test_idx = next(iter(holdout_cv.split(np.zeros(len(y)), y, groups)))
        except ValueError as err:
            raise ValueError(
                f"cannot cut a stratified holdout of test_size={cfg.test_size}: {err}"
            ) from None
    out["split"] = TRAIN
    out.loc[test_idx, "split"] = TEST
    out["fold"] = -1

    train_idx = np.flatnonzero(out["split"].to_numpy() == TRAIN)
    per_class = np.bincount(y[train_idx], minlength=len(recipe.data.classes))
    if per_class.min() < cfg.folds:
        short = {recipe.data.classes[i]: int(n) for i, n in enumerate(per_class) if n < cfg.folds}
        raise ValueError(
            f"too few training images for split.folds={cfg.folds}: {short}; "
            "add data or lower split.folds"
        )
    fold_cv = _make_cv(grouped, cfg.folds, cfg.seed + 1)
    train_groups = groups[train_idx] if grouped else None
    for fold, (_, val_local) in enumerate(
        fold_cv.split(np.zeros(len(train_idx)), y[train_idx], train_groups)
    ):
        out.loc[train_idx[val_local], "fold"] = fold
    return out


def audit_leakage(splits: pd.DataFrame, *, max_hamming_bits: int = 4) -> dict[str, object]:
    """Report identical (sha256) and near-identical (dHash) images across the holdout boundary.

    Exact duplicates across folds are counted too. Only exact duplicates across the holdout
    fail the split; near-duplicates are reported for a person to judge (neighbouring CT slices
    of different patients can look alike).
    """
    train = splits[splits["split"] == TRAIN]
    test = splits[splits["split"] == TEST]
    cross = sorted(set(train["sha256"]) & set(test["sha256"]))
    cross_paths = splits.loc[splits["sha256"].isin(cross), "path"].tolist()
    folds_per_hash = train.groupby("sha256")["fold"].nunique()
    cross_fold = int((folds_per_hash > 1).sum())
    group_overlap = sorted(set(train["group"]) & set(test["group"]))
    audit: dict[str, object] = {
        "exact_duplicates_across_holdout": len(cross),
        "exact_duplicate_paths": cross_paths[:50],
        "exact_duplicates_across_folds": cross_fold,
        "groups_across_holdout": len(group_overlap),
    }
    if "dhash" in splits.columns:
        pairs = near_duplicate_pairs(train, test, max_bits=max_hamming_bits)
        audit["near_duplicates_across_holdout"] = len(pairs)
        audit["near_duplicate_examples"] = pairs[:20]
        audit["near_duplicate_max_bits"] = max_hamming_bits
    return audit


def near_duplicate_pairs(
    left: pd.DataFrame, right: pd.DataFrame, *, max_bits: int
) -> list[tuple[str, str, int]]:
    """Pairs (left path, right path, differing bits) whose dHashes differ by <= ``max_bits``."""

    def as_ints(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        valid = frame[frame["dhash"].astype(bool)]
        return valid["dhash"].map(lambda h: int(h, 16)).to_numpy(np.uint64), valid[
            "path"
        ].to_numpy()

    a, a_paths = as_ints(left)
    b, b_paths = as_ints(right)
    pairs: list[tuple[str, str, int]] = []
    for start in range(0, len(a), 2048):  # bounded memory: 2048 x len(b) at a time
        bits = np.bitwise_count(a[start : start + 2048, None] ^ b[None, :])
        for i, j in zip(*np.nonzero(bits <= max_bits), strict=True):
            pairs.append((str(a_paths[start + i]), str(b_paths[j]), int(bits[i, j])))
    return sorted(pairs, key=lambda p: p[2])


def split(manifest_path: Path, splits_path: Path, recipe: Recipe) -> SplitResult:
    """Assign holdout and folds, audit leakage and write ``splits.parquet`` + ``split_report.json``.

    Raises:
        LeakageError: identical images fall on both sides of the holdout split.
        ValueError: too few images per class for the folds.
    """
    table = pd.read_parquet(manifest_path)
    splits = assign_splits(table, recipe)
    audit = audit_leakage(splits)
    grouped = has_groups(splits["group"])
    fold_sizes = [int((splits["fold"] == k).sum()) for k in range(recipe.split.folds)]
    report = {
        "holdout": "dataset's own test split"
        if splits.get("source_split", pd.Series(dtype=str)).eq("test").any()
        else f"stratified {recipe.split.test_size:.0%}",
        "grouped": grouped,
        "strategy": "StratifiedGroupKFold" if grouped else "StratifiedKFold",
        "test_size": int((splits["split"] == TEST).sum()),
        "fold_sizes": fold_sizes,
        "class_counts": {
            name: {str(k): int(v) for k, v in part["label"].value_counts().sort_index().items()}
            for name, part in [
                ("train", splits[splits["split"] == TRAIN]),
                ("test", splits[splits["split"] == TEST]),
            ]
        },
        "leakage": audit,
    }
    report_path = write_json(split_report_path(splits_path), report)
    if audit["exact_duplicates_across_holdout"]:
        raise LeakageError(
            f"{audit['exact_duplicates_across_holdout']} identical images are in both the training "
            f"data and the holdout (e.g. {audit['exact_duplicate_paths'][:3]}); remove the copies "
            f"or give them the same group. Report: {report_path}"
        )
    with atomic_path(Path(splits_path)) as tmp:
        splits.to_parquet(tmp, index=False)
    return SplitResult(Path(splits_path), report_path, grouped, report["test_size"], fold_sizes)


def _make_cv(grouped: bool, n_splits: int, seed: int) -> StratifiedKFold | StratifiedGroupKFold:
    if grouped:
        return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
