"""Compare named setting sets on the same folds, with out-of-fold scores.

An experiment is a name and a few settings (``{"train.augment.zoom": 0}``) applied to the
run's recipe. Every experiment trains the same k folds; each fold model scores its own
validation fold, and the out-of-fold predictions of all folds are scored together. The holdout
is not used here: choosing settings by their holdout score would leak the holdout into model
selection. Balancing strategies (``medml compare-balancing``) are one case: one experiment per
``train.balance``.

Experiments change training only: settings of ``data``, ``image`` or ``split`` would need other
shards or folds, so they are refused (run those as separate ``medml run``s).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from medml.config import Recipe, with_settings
from medml.errors import ConfigError
from medml.evaluate import clinical_metrics, predict_proba
from medml.extensions import BALANCERS
from medml.io import atomic_path
from medml.metrics import HoldoutMetrics
from medml.preprocess import load_images, load_index
from medml.runs import RunContext
from medml.tracking import KIND_TAG, RUN_KEY_TAG, Tracking
from medml.train import fold_rows, train_fold

SCORES = ("accuracy", "macro_f1", "balanced_accuracy", "min_class_sensitivity")
FIXED_SECTIONS = ("data", "image", "split")
Experiments = Mapping[str, Mapping[str, Any]]


def read_experiments(path: Path) -> dict[str, dict[str, Any]]:
    """The ``experiments:`` mapping of a YAML file (name → dotted settings).

    Raises:
        ConfigError: the file has no ``experiments`` mapping, or one is not a mapping.
    """
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read experiments from {path}: {err}") from None
    experiments = loaded.get("experiments") if isinstance(loaded, dict) else None
    if not isinstance(experiments, dict) or not experiments:
        raise ConfigError(f"{path} needs an 'experiments:' mapping of name -> settings")
    for name, settings in experiments.items():
        if not isinstance(settings, dict):
            raise ConfigError(f"{path}: experiment {name!r} must map settings to values")
    return {str(name): dict(settings) for name, settings in experiments.items()}


def grid_experiments(grid: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["train.balance=none,smote", "train.epochs=5,10"]`` → one experiment per combination,
    named ``train.balance=none, train.epochs=5`` and so on.

    Raises:
        ConfigError: an item is not ``key=v1,v2,...``.
    """
    import itertools

    if not grid:
        return {}
    axes = []
    for item in grid:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise ConfigError(
                f"--grid expects key=v1,v2,... (e.g. train.balance=none,smote), got {item!r}"
            )
        axes.append([(key.strip(), yaml.safe_load(v)) for v in raw.split(",")])
    return {
        ", ".join(f"{k}={v}" for k, v in combo): dict(combo) for combo in itertools.product(*axes)
    }


def experiment_recipe(recipe: Recipe, name: str, settings: Mapping[str, Any]) -> Recipe:
    """The run's recipe with one experiment's settings.

    Raises:
        ConfigError: a setting is unknown/invalid, or changes data, image or split.
    """
    fixed = sorted(k for k in settings if str(k).split(".")[0] in FIXED_SECTIONS)
    if fixed:
        raise ConfigError(
            f"experiment {name!r} changes {fixed}: experiments share the run's shards and folds, "
            "so only train/evaluate/registry settings may differ; compare those as separate runs"
        )
    return with_settings(recipe, settings, source=f"experiment {name!r}")


def compare(
    ctx: RunContext,
    experiments: Experiments,
    *,
    tracking: Tracking | None = None,
    echo: Callable[[str], Any] = print,
    kind: str = "compare",
    label: str = "experiment",
) -> pd.DataFrame:
    """Train every experiment on the run's folds and score out-of-fold predictions.

    Args:
        ctx: a run whose data steps (through preprocess) are done.
        experiments: name → dotted settings applied to the run's recipe.
        tracking: log one parent MLflow run with a child run per experiment.
        echo: progress output.
        kind: names the outputs (``compare/<kind>.csv``, ``.png``) and the parent run's kind.
        label: what an experiment is called in the table and the child runs' tags.

    Returns:
        One row per experiment: its settings, accuracy, macro-F1, balanced accuracy, minimum
        per-class sensitivity, training seconds (all folds), and a note when it was skipped.
        The learning curves of all experiments go in one figure
        (:meth:`~medml.layout.RunLayout.compare_curves`).

    Raises:
        ConfigError: an experiment's settings are invalid (checked before anything trains).
    """
    recipes = {name: experiment_recipe(ctx.recipe, name, settings)
               for name, settings in experiments.items()}  # fmt: skip
    table_path, plot_path = ctx.layout.compare_outputs(kind)
    curves_path = ctx.layout.compare_curves(kind)
    with _parent_run(tracking, ctx, kind) as parent:
        rows, histories = [], {}
        for name, recipe in recipes.items():
            row, histories[name] = compare_one(
                ctx, name, recipe, ctx.layout.compare / _folder(name), echo
            )
            row["settings"] = "; ".join(f"{k}={v}" for k, v in experiments[name].items())
            rows.append(row)
            if parent is not None and not row["note"]:
                _log_child(tracking, ctx, parent, row, experiments[name], label)
        columns = ["experiment", "settings", *SCORES, "train_seconds", "note"]
        table = pd.DataFrame(rows, columns=columns).rename(columns={"experiment": label})
        ctx.layout.compare.mkdir(parents=True, exist_ok=True)
        with atomic_path(table_path) as tmp:
            table.to_csv(tmp, index=False)
        plot_comparison(table, label, plot_path)
        plot_experiment_curves(histories, curves_path)
        if parent is not None:
            import mlflow

            for path in (table_path, plot_path, curves_path):
                mlflow.log_artifact(str(path))
    return table


def compare_balancing(
    ctx: RunContext,
    *,
    strategies: Sequence[str] | None = None,
    tracking: Tracking | None = None,
    echo: Callable[[str], Any] = print,
) -> pd.DataFrame:
    """:func:`compare` with one experiment per balancing strategy (default: every registered
    one).

    Raises:
        ConfigError: an unknown strategy name ("did you mean …").
    """
    chosen = [BALANCERS.check(s) for s in (strategies or BALANCERS.names())]
    return compare(ctx, {s: {"train.balance": s} for s in chosen}, tracking=tracking,
                   echo=echo, kind="compare_balancing", label="strategy")  # fmt: skip


def compare_one(
    ctx: RunContext, name: str, recipe: Recipe, out_dir: Path, echo: Callable[[str], Any]
) -> tuple[dict[str, Any], list[dict[str, list[float]]]]:
    """One experiment's row (its out-of-fold scores and training time) and each fold's
    training history."""
    started = time.perf_counter()
    scores, histories = out_of_fold_metrics(ctx, recipe, out_dir)
    seconds = time.perf_counter() - started
    row = {"experiment": name, "note": "", "train_seconds": round(seconds, 1)}
    row |= {key: float(scores.value(key)) for key in SCORES}
    echo(
        f"[{name}] accuracy {row['accuracy']:.3f}  macro-F1 {row['macro_f1']:.3f}  balanced "
        f"accuracy {row['balanced_accuracy']:.3f}  min sensitivity "
        f"{row['min_class_sensitivity']:.3f}  {seconds:.0f}s"
    )
    return row, histories


def plot_comparison(table: pd.DataFrame, label: str, path: Path) -> Path:
    """Grouped bars of the out-of-fold scores per experiment (skipped ones left out)."""
    from medml.evaluate import plot_scores

    trained = table[table["note"].fillna("").eq("")]
    return plot_scores(trained[label].tolist(), {key: trained[key].tolist() for key in SCORES},
                       path, title="out-of-fold scores, same folds")  # fmt: skip


def plot_experiment_curves(
    histories: Mapping[str, Sequence[Mapping[str, Sequence[float]]]], path: Path
) -> Path:
    """Loss and accuracy per epoch of every experiment in one figure: validation (solid) and
    training (dashed), each the mean over the folds that trained that epoch, one colour per
    experiment (the learning curves seed 002 drew for each of its experiments)."""
    from medml.figures import pyplot, save_figure

    plt = pyplot()
    rows = -(-len(histories) // 2)  # the legend below: two experiments a row
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4 + 0.45 * rows))
    for k, (name, folds) in enumerate(histories.items()):
        for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
            for prefix, style in (("val_", "-"), ("", "--")):
                mean = _mean_by_epoch([fold.get(prefix + metric, []) for fold in folds])
                label = f"{name} ({'validation' if prefix else 'training'})"
                ax.plot(range(1, len(mean) + 1), mean, style, color=f"C{k % 10}", label=label)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.set(xlabel="epoch", ylabel=metric, title=f"{metric}, mean over folds")
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    return save_figure(fig, path, bottom=0.03 + 0.04 * rows)


def _mean_by_epoch(curves: Sequence[Sequence[float]]) -> list[float]:
    """The mean of each epoch over the curves that reached it (early stopping ends folds at
    different epochs)."""
    longest = max((len(c) for c in curves), default=0)
    return [float(np.mean([c[e] for c in curves if len(c) > e])) for e in range(longest)]


def _folder(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]


def out_of_fold_metrics(
    ctx: RunContext, recipe: Recipe, out_dir: Path
) -> tuple[HoldoutMetrics, list[dict[str, list[float]]]]:
    """Train every fold with ``recipe``; score each fold model on its own validation rows and
    all folds' predictions together (the holdout is never touched). Also returns each fold's
    per-epoch history (loss, accuracy, their validation values)."""
    import json

    shards = ctx.layout.shards
    index = load_index(shards)
    truths, probas, histories = [], [], []
    for fold in ctx.folds:
        result = train_fold(shards, fold, out_dir / f"fold_{fold}", recipe)
        histories.append(json.loads(result.history_path.read_text())["history"])
        _, val_rows = fold_rows(index, fold)
        probas.append(predict_proba([result.model_path], load_images(shards, val_rows))[0])
        truths.append(val_rows["label_index"].to_numpy(dtype=np.int64))
    scores = clinical_metrics(
        np.concatenate(truths), np.concatenate(probas), recipe.data.classes, bootstrap=0,
        min_class_support=recipe.evaluate.min_class_support,
    )  # fmt: skip
    return scores, histories


def format_table(table: pd.DataFrame, label: str = "strategy") -> str:
    """Plain-text table, best macro-F1 first."""
    ordered = table.sort_values("macro_f1", ascending=False, na_position="last")
    width = max(20, *(len(str(name)) + 2 for name in ordered[label]))
    lines = [f"{label:<{width}}{'accuracy':>10}{'macro-F1':>10}{'bal. acc.':>11}"
             f"{'min sens.':>11}{'train s':>9}"]  # fmt: skip
    for row in ordered.to_dict("records"):
        if isinstance(row["note"], str) and row["note"]:
            lines.append(f"{row[label]:<{width}}{row['note']}")
            continue
        lines.append(
            f"{row[label]:<{width}}{row['accuracy']:>10.3f}{row['macro_f1']:>10.3f}"
            f"{row['balanced_accuracy']:>11.3f}"
            f"{row['min_class_sensitivity']:>11.3f}{row['train_seconds']:>9.1f}"
        )
    return "\n".join(lines)


@contextmanager
def _parent_run(tracking: Tracking | None, ctx: RunContext, kind: str) -> Iterator[str | None]:
    if tracking is None:
        yield None
        return
    kind = kind.replace("_", "-")
    tags = {RUN_KEY_TAG: ctx.run_key, KIND_TAG: kind}
    with tracking.run(ctx.recipe.registry.experiment, tags=tags,
                      run_name=f"{kind} {ctx.recipe.name}") as parent:  # fmt: skip
        yield parent


def _log_child(
    tracking: Tracking, ctx: RunContext, parent: str, row: dict[str, Any],
    settings: Mapping[str, Any], label: str,
) -> None:  # fmt: skip
    import mlflow

    name = row["experiment"]
    tags = {RUN_KEY_TAG: ctx.run_key, KIND_TAG: label, label: name}
    with tracking.run(ctx.recipe.registry.experiment, run_name=f"{label}={name}",
                      tags=tags, parent_run_id=parent):  # fmt: skip
        mlflow.log_params({str(k): str(v)[:500] for k, v in settings.items()})
        mlflow.log_metrics({f"oof_{key}": float(row[key]) for key in (*SCORES, "train_seconds")})
