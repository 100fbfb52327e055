"""Compare balancing strategies on the same folds, with out-of-fold scores.

Every strategy trains the same k folds; each fold model scores its own validation fold, and
the out-of-fold predictions of all folds are scored together. The holdout is not used here:
choosing a strategy by its holdout score would leak the holdout into model selection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medml.balance import PixelSMOTE
from medml.config import Recipe
from medml.evaluate import clinical_metrics, predict_proba
from medml.extensions import BALANCERS
from medml.io import atomic_path
from medml.metrics import HoldoutMetrics
from medml.pipeline import RunContext
from medml.preprocess import load_images, load_index
from medml.split import TRAIN
from medml.tracking import KIND_TAG, RUN_KEY_TAG, Tracking
from medml.train import fold_rows, train_fold

SCORES = ("macro_f1", "balanced_accuracy", "min_class_sensitivity")
COLUMNS = [
    "strategy",
    "macro_f1",
    "balanced_accuracy",
    "min_class_sensitivity",
    "train_seconds",
    "note",
]


def applicable(strategy: str, ctx: RunContext) -> str | None:
    """``None`` if the strategy can run on this data, else why not."""
    if strategy != "smote":
        return None
    meta_index = load_index(ctx.layout.shards)
    train_part = meta_index[meta_index["split"] == TRAIN]
    size, channels = ctx.recipe.image.size, ctx.recipe.image.channels
    budget = ctx.recipe.train.smote_memory_mb
    needed = PixelSMOTE(memory_budget_mb=budget).estimate_mb(
        train_part["label_index"].to_numpy(), size * size * channels
    )
    if needed > budget:
        return f"skipped: needs ~{needed:.0f} MiB > train.smote_memory_mb={budget}"
    return None


def compare_balancing(
    ctx: RunContext,
    *,
    strategies: Sequence[str] | None = None,
    tracking: Tracking | None = None,
    echo: Callable[[str], Any] = print,
) -> pd.DataFrame:
    """Train every strategy on the run's folds and score out-of-fold predictions.

    Args:
        ctx: a run whose data steps (through preprocess) are done.
        strategies: which strategies to compare (default: every registered one).
        tracking: log one parent MLflow run with a child run per strategy.
        echo: progress output.

    Returns:
        One row per strategy: macro-F1, balanced accuracy, minimum per-class sensitivity,
        training seconds (all folds), and a note when a strategy was skipped.

    Raises:
        ConfigError: an unknown strategy name ("did you mean …").
    """
    chosen = [BALANCERS.check(s) for s in (strategies or BALANCERS.names())]
    out_root = ctx.layout.compare
    with _parent_run(tracking, ctx) as parent:
        rows = []
        for strategy in chosen:
            row = compare_one(ctx, strategy, out_root / strategy, echo)
            rows.append(row)
            if parent is not None and not row["note"]:
                _log_child(tracking, ctx, parent, row)
        table = pd.DataFrame(rows, columns=COLUMNS)
        out_root.mkdir(parents=True, exist_ok=True)
        path = ctx.layout.compare_table
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
        if parent is not None:
            import mlflow

            mlflow.log_artifact(str(path))
    return table


def compare_one(
    ctx: RunContext, strategy: str, out_dir: Path, echo: Callable[[str], Any]
) -> dict[str, Any]:
    """One strategy's row: its out-of-fold scores and training time, or why it was skipped."""
    note = applicable(strategy, ctx)
    if note:
        echo(f"[{strategy}] {note}")
        return {"strategy": strategy, "note": note}
    train = ctx.recipe.train.model_copy(update={"balance": strategy})
    started = time.perf_counter()
    scores = out_of_fold_metrics(ctx, ctx.recipe.model_copy(update={"train": train}), out_dir)
    seconds = time.perf_counter() - started
    row = {"strategy": strategy, "note": "", "train_seconds": round(seconds, 1)}
    row |= {key: float(scores.value(key)) for key in SCORES}
    echo(
        f"[{strategy}] macro-F1 {row['macro_f1']:.3f}  balanced accuracy "
        f"{row['balanced_accuracy']:.3f}  min sensitivity {row['min_class_sensitivity']:.3f}"
        f"  {seconds:.0f}s"
    )
    return row


def out_of_fold_metrics(ctx: RunContext, recipe: Recipe, out_dir: Path) -> HoldoutMetrics:
    """Train every fold with ``recipe``; score each fold model on its own validation rows and
    all folds' predictions together (the holdout is never touched)."""
    shards = ctx.layout.shards
    index = load_index(shards)
    truths, probas = [], []
    for fold in ctx.folds:
        result = train_fold(shards, fold, out_dir / f"fold_{fold}", recipe)
        _, val_rows = fold_rows(index, fold)
        probas.append(predict_proba([result.model_path], load_images(shards, val_rows))[0])
        truths.append(val_rows["label_index"].to_numpy(dtype=np.int64))
    return clinical_metrics(
        np.concatenate(truths), np.concatenate(probas), recipe.data.classes, bootstrap=0
    )


def format_table(table: pd.DataFrame) -> str:
    """Plain-text table, best macro-F1 first."""
    ordered = table.sort_values("macro_f1", ascending=False, na_position="last")
    lines = [f"{'strategy':<20}{'macro-F1':>10}{'bal. acc.':>11}{'min sens.':>11}{'train s':>9}"]
    for row in ordered.itertuples():
        if isinstance(row.note, str) and row.note:
            lines.append(f"{row.strategy:<20}{row.note}")
            continue
        lines.append(
            f"{row.strategy:<20}{row.macro_f1:>10.3f}{row.balanced_accuracy:>11.3f}"
            f"{row.min_class_sensitivity:>11.3f}{row.train_seconds:>9.1f}"
        )
    return "\n".join(lines)


@contextmanager
def _parent_run(tracking: Tracking | None, ctx: RunContext) -> Iterator[str | None]:
    if tracking is None:
        yield None
        return
    tags = {RUN_KEY_TAG: ctx.run_key, KIND_TAG: "compare-balancing"}
    with tracking.run(ctx.recipe.registry.experiment, tags=tags,
                      run_name=f"compare-balancing {ctx.recipe.name}") as parent:  # fmt: skip
        yield parent


def _log_child(tracking: Tracking, ctx: RunContext, parent: str, row: dict[str, Any]) -> None:
    import mlflow

    strategy = row["strategy"]
    tags = {RUN_KEY_TAG: ctx.run_key, KIND_TAG: "strategy", "strategy": strategy}
    with tracking.run(ctx.recipe.registry.experiment, run_name=f"balance={strategy}",
                      tags=tags, parent_run_id=parent):  # fmt: skip
        mlflow.log_param("train.balance", strategy)
        mlflow.log_metrics({f"oof_{key}": float(row[key]) for key in (*SCORES, "train_seconds")})
