"""Compare balancing strategies on the same folds, with out-of-fold scores.

Every strategy trains the same k folds; each fold model scores its own validation fold, and
the out-of-fold predictions of all folds are scored together. The holdout is not used here:
choosing a strategy by its holdout score would leak the holdout into model selection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from medml.balance import STRATEGIES, PixelSMOTE
from medml.evaluate import clinical_metrics, predict_proba
from medml.pipeline import RunContext
from medml.preprocess import load_images, load_index
from medml.tracking import KIND_TAG, RUN_KEY_TAG, Tracking
from medml.train import fold_rows, train_fold

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
    train_part = meta_index[meta_index["split"] == "train"]
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
    strategies: Sequence[str] = STRATEGIES,
    tracking: Tracking | None = None,
    echo: Callable[[str], Any] = print,
) -> pd.DataFrame:
    """Train every strategy on the run's folds and score out-of-fold predictions.

    Args:
        ctx: a run whose data steps (through preprocess) are done.
        strategies: which strategies to compare.
        tracking: log one parent MLflow run with a child run per strategy.
        echo: progress output.

    Returns:
        One row per strategy: macro-F1, balanced accuracy, minimum per-class sensitivity,
        training seconds (all folds), and a note when a strategy was skipped.

    Raises:
        ValueError: an unknown strategy name.
    """
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        raise ValueError(f"unknown strategies {sorted(unknown)}; choose from {STRATEGIES}")
    shards = ctx.layout.shards
    index = load_index(shards)
    classes = ctx.recipe.data.classes
    out_root = ctx.layout.root / "compare"
    parent = None
    if tracking is not None:
        client = tracking.activate()
        parent = client.create_run(
            tracking.experiment_id(ctx.recipe.registry.experiment),
            run_name=f"compare-balancing {ctx.recipe.name}",
            tags={RUN_KEY_TAG: ctx.run_key, KIND_TAG: "compare-balancing"},
        ).info.run_id
    rows = []
    for strategy in strategies:
        note = applicable(strategy, ctx)
        if note:
            echo(f"[{strategy}] {note}")
            rows.append({"strategy": strategy, "note": note})
            continue
        recipe = ctx.recipe.model_copy(
            update={"train": ctx.recipe.train.model_copy(update={"balance": strategy})}
        )
        started = time.perf_counter()
        truths, probas = [], []
        for fold in ctx.folds:
            result = train_fold(shards, fold, out_root / strategy / f"fold_{fold}", recipe)
            _, val_rows = fold_rows(index, fold)
            probas.append(predict_proba([result.model_path], load_images(shards, val_rows))[0])
            truths.append(val_rows["label_index"].to_numpy(dtype=np.int64))
        seconds = time.perf_counter() - started
        scores = clinical_metrics(
            np.concatenate(truths), np.concatenate(probas), classes, bootstrap=0
        )["overall"]
        row = {
            "strategy": strategy,
            "macro_f1": scores["macro_f1"],
            "balanced_accuracy": scores["balanced_accuracy"],
            "min_class_sensitivity": scores["min_class_sensitivity"],
            "train_seconds": round(seconds, 1),
            "note": "",
        }
        echo(
            f"[{strategy}] macro-F1 {row['macro_f1']:.3f}  balanced accuracy "
            f"{row['balanced_accuracy']:.3f}  min sensitivity {row['min_class_sensitivity']:.3f}"
            f"  {seconds:.0f}s"
        )
        rows.append(row)
        if tracking is not None and parent is not None:
            _log_child(tracking, ctx, parent, strategy, row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    out_root.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_root / "compare_balancing.csv", index=False)
    if tracking is not None and parent is not None:
        tracking.activate().log_artifact(parent, str(out_root / "compare_balancing.csv"))
        tracking.activate().set_terminated(parent)
    return table


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


def _log_child(
    tracking: Tracking, ctx: RunContext, parent: str, strategy: str, row: dict[str, Any]
) -> None:
    client = tracking.activate()
    child = client.create_run(
        tracking.experiment_id(ctx.recipe.registry.experiment),
        run_name=f"balance={strategy}",
        tags={
            "mlflow.parentRunId": parent,
            RUN_KEY_TAG: ctx.run_key,
            KIND_TAG: "strategy",
            "strategy": strategy,
        },
    ).info.run_id
    client.log_param(child, "train.balance", strategy)
    for key in ("macro_f1", "balanced_accuracy", "min_class_sensitivity", "train_seconds"):
        client.log_metric(child, f"oof_{key}", float(row[key]))
    client.set_terminated(child)
