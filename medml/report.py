"""The run summary a person reads: holdout metrics per class, calibration, the operating
point and the registered version (``summary.txt``, ``medml summary``, the DAG's report task)."""

from __future__ import annotations

from pathlib import Path

from medml.config import Recipe
from medml.evaluation_facts import EvaluationFacts
from medml.io import atomic_path, read_json
from medml.layout import RELATIVE, EvaluationFiles, StepFiles
from medml.metrics import (
    OUT_OF_FOLD,
    HoldoutMetrics,
    estimates_disagree,
    registered_metrics,
    scalar_metrics,
)
from medml.runs import RunContext, opened_run

_READS = (RELATIVE.run_json, RELATIVE.snapshot_json, RELATIVE.splits, RELATIVE.split_report,
          RELATIVE.validation.root, RELATIVE.evaluation.root, RELATIVE.root / "folds")  # fmt: skip
_OPTIONAL = (RELATIVE.registry.root, RELATIVE.overview)
SUMMARY_FILES = StepFiles(
    needs=tuple(path.as_posix() for path in (*_READS, *_OPTIONAL)),
    produces=(RELATIVE.summary.as_posix(),),
    optional=tuple(path.as_posix() for path in _OPTIONAL),
)
"""What the summary reads and writes (for an S3 run directory's mirror)."""


def _scored_by(recipe: Recipe, metrics: HoldoutMetrics) -> str:
    """Which model scored the images of the estimate."""
    one = recipe.split.folds == 1
    if metrics.estimate == OUT_OF_FOLD:
        if one:
            return "each validation image scored by the one model, trained on the other images:"
        return "each image scored by the fold model that did not train on it:"
    return "one model:" if one else f"fold ensemble of {recipe.split.folds} models:"


def _validation_chose_lines(recipe: Recipe, metrics: HoldoutMetrics) -> list[str]:
    """A warning when the estimate is scored on images that chose the model's epoch (one
    model, no holdout, best epoch kept or early stopping on)."""
    cfg = recipe.train
    chose = cfg.epochs > 1 and (cfg.keep_best_epoch or cfg.patience < cfg.epochs)
    if metrics.estimate != OUT_OF_FOLD or recipe.split.folds != 1 or not chose:
        return []
    return [
        "  warning: these images also chose the model's epoch (train.keep_best_epoch, early "
        "stopping), so the estimate is optimistic; set train.keep_best_epoch: false and "
        "train.patience >= train.epochs, or keep a holdout (split.test_size)"
    ]


def summary(run_dir: Path | str) -> str:
    """Human-readable summary: holdout metrics per class and the registered version."""
    with opened_run(run_dir, SUMMARY_FILES) as ctx:
        return summary_text(ctx)


def write_run_summary(run_dir: Path | str) -> Path:
    """Write :func:`summary` to ``summary.txt`` in the run directory (on its mirror, and
    uploaded, for an S3 run directory); return the local file."""
    with opened_run(run_dir, SUMMARY_FILES) as ctx:
        with atomic_path(ctx.layout.summary) as tmp:
            tmp.write_text(summary_text(ctx) + "\n")
    return ctx.layout.summary


def summary_text(ctx: RunContext) -> str:
    """The summary of an opened run.

    Raises:
        RunError: the run has not been evaluated yet.
    """
    from medml.io import require_complete

    require_complete(ctx.layout.evaluation.root, "evaluate")
    metrics = HoldoutMetrics.read(ctx.layout.evaluation.metrics)
    lines = [
        f"medml run {ctx.run_key}  recipe={ctx.recipe.name}  logical date={ctx.logical_date}",
        f"run directory: {ctx.location}",
        "",
        f"{metrics.label}, " + _scored_by(ctx.recipe, metrics),
        *_per_class_table(metrics),
        *_validation_chose_lines(ctx.recipe, metrics),
        "",
        _overall_line(metrics, ctx.recipe.chance_balanced_accuracy),
        *_evaluation_lines(ctx.layout.evaluation),
    ]
    if ctx.layout.overview.is_dir():
        drawn = ", ".join(sorted(p.stem for p in ctx.layout.overview.glob("*.png")))
        lines.append(f"  dataset overview: {ctx.layout.overview}/ ({drawn} .png)")
    lines += _registration_lines(ctx.layout.registry.registration)
    return "\n".join(lines)


def _per_class_table(metrics: HoldoutMetrics) -> list[str]:
    """One row per class, one column per registered per-class metric, the support and the
    sensitivity's exact 95% interval; a class with too few images says so on its row and
    under the table."""
    columns = [(spec, _heading(spec.short_name)) for spec in registered_metrics(per_class=True)]
    widths = [max(8, len(heading) + 1) for _, heading in columns]
    header = "".join(f"{heading:>{w}}" for (_, heading), w in zip(columns, widths, strict=True))
    lines = [f"  {'class':<14}{header}{'support':>9}  sensitivity 95% CI"]
    values = [spec.read(metrics) for spec, _ in columns]
    too_few = metrics.too_few_to_judge
    for name in metrics.classes:
        cells = "".join(f"{_fmt(value.get(name)):>{w}}"  # type: ignore[union-attr]
                        for value, w in zip(values, widths, strict=True))  # fmt: skip
        interval = _bounds(metrics.interval("sensitivity", name))
        flag = TOO_FEW if name in too_few else ""
        lines.append(f"  {name:<14}{cells}{metrics.per_class[name]['support']:>9}  "
                     f"{interval:<18}{flag}".rstrip())  # fmt: skip
    if too_few:
        lines.append(
            f"  {TOO_FEW}: fewer than {metrics.min_class_support} images "
            "(evaluate.min_class_support); their numbers support no conclusion"
        )
    if metrics.ci95.get("method"):
        lines.append("  95% CI: exact (Clopper-Pearson) per class, stratified bootstrap overall")
    return lines


TOO_FEW = "too few to judge"


def _heading(name: str) -> str:
    return name.upper() if len(name) <= 3 else name


def _overall_line(metrics: HoldoutMetrics, chance: float) -> str:
    """The headline scores with their intervals, then every other registered scalar metric."""
    overall = metrics.overall
    headline = (
        f"  accuracy {overall['accuracy']:.3f}"
        f" | balanced accuracy {overall['balanced_accuracy']:.3f}"
        f" {_ci(metrics.interval('balanced_accuracy'))} | macro-F1 {overall['macro_f1']:.3f}"
        f" {_ci(metrics.interval('macro_f1'))} | AUC {overall['roc_auc_ovr_macro']:.3f}"
        f" {_ci(metrics.interval('roc_auc_ovr_macro'))} | chance {chance:.3f}"
    )
    shown = {"accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr_macro"}
    others = [f"{name.replace('_', ' ')} {value:.3f}"
              for name, value in scalar_metrics(metrics).items() if name not in shown]  # fmt: skip
    return headline + ("\n  " + " | ".join(others) if others else "")


def _evaluation_lines(files: EvaluationFiles) -> list[str]:
    if not files.calibration.is_file():
        return []
    facts = EvaluationFacts.read(files)
    lines = _estimate_lines(facts)
    point = facts.operating_point
    if point:
        where = "holdout" if facts.calibration.held_out else "out-of-fold"
        rates = point.rates
        shown = " ".join(f"{label} {_fmt(rates[name])} {_ci(rates.get(f'{name}_ci95'))}".rstrip()
                         for name, label in _POINT_RATES)  # fmt: skip
        too_few = rates.get("too_few_to_judge") or []
        chosen = "calibration-cut" if "calibration cut" in point.chosen_on else "OOF"
        lines.append(f"  operating point {point.positive_class} >= {point.threshold:.3f} "
                     f"({chosen} sensitivity >= {point.target_sensitivity:.2f}): {where} {shown}"
                     + (f" | {TOO_FEW}: {', '.join(too_few)}" if too_few else ""))  # fmt: skip
        if point.warning:
            lines.append(f"  WARNING operating point: {point.warning}")
    holdout = HoldoutMetrics.read(files.metrics)
    for estimate in (facts.calibration.ensemble_metrics(), facts.oof_metrics):
        disagreement = estimates_disagree(estimate, holdout) if estimate is not None else ""
        if disagreement:
            lines.append(f"  WARNING estimates: {disagreement}")
    if facts.conformal and facts.conformal.get("holdout"):
        from medml.conformal import sentence as sets_sentence

        lines.append(f"  prediction sets: {sets_sentence(facts.conformal)}")
    if facts.baseline:
        from medml.baseline import sentence

        lines.append(f"  baseline: {sentence(facts.baseline)}")
    if files.label_issues_summary.is_file():
        found = read_json(files.label_issues_summary)
        lines.append(f"  suspected label errors: {found['suspects']} of {found['checked']} "
                     f"training images ({files.label_issues.name}, "
                     f"{files.plot('label_issues').name}); none removed: check them against "
                     "the source")  # fmt: skip
    return lines


def _estimate_lines(facts: EvaluationFacts) -> list[str]:
    """The calibration cut's and the out-of-fold estimates, and the calibration line."""
    oof, calibration = facts.oof_metrics.overall, facts.calibration
    eces = [f"out-of-fold ECE {calibration.oof_ece_before:.3f} -> "
            f"{calibration.oof_ece_after:.3f} (single fold models)"]  # fmt: skip
    if calibration.on_cut:
        eces.insert(0, f"calibration cut ECE {calibration.cut_ece_before:.3f} -> "
                       f"{calibration.cut_ece_after:.3f} (fitted there)")  # fmt: skip
    if calibration.held_out:  # the registered ensemble's, next to the single fold models'
        eces.insert(
            0,
            f"holdout ECE {calibration.holdout_ece_before:.3f} -> "
            f"{calibration.holdout_ece_after:.3f} (the registered ensemble)",
        )
    fitted = ("fitted on the ensemble's output on the calibration cut"
              if calibration.fitted_on.startswith("the fold ensemble")
              else "fitted out-of-fold, on single fold models")  # fmt: skip
    if not calibration.fitted:
        fitted = "not fitted: evaluate.calibrate is off"
    lines = []
    ensemble = calibration.ensemble_metrics()
    if ensemble is not None:
        cut = ensemble.overall
        lines.append(
            f"  calibration cut (n={cut['n']}, the registered ensemble on images no fold model "
            f"trained on): balanced accuracy {cut['balanced_accuracy']:.3f} "
            f"{_ci(ensemble.interval('balanced_accuracy'))} | macro-F1 {cut['macro_f1']:.3f}"
        )
    if calibration.held_out:
        lines.append(
            f"  out-of-fold (n={oof['n']}, training images): balanced accuracy "
            f"{oof['balanced_accuracy']:.3f} | macro-F1 {oof['macro_f1']:.3f}"
        )
    lines.append(f"  calibration: T={calibration.temperature:.3f} ({fitted}) | "
                 + " | ".join(eces))  # fmt: skip
    if calibration.warning:
        lines.append(f"  WARNING calibration: {calibration.warning}")
    return lines


_POINT_RATES = (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("ppv", "PPV"))


def _registration_lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    reg = read_json(path)
    if reg["alias"]:
        return [f"\nRegistered model: {reg['model_name']}  {reg['alias']} -> version "
                f"{reg['version']}"]  # fmt: skip
    if reg.get("kept_challenger"):
        return [f"\nRegistered model: {reg['model_name']} version {reg['version']} (gate passed; "
                f"{reg['kept_challenger']})"]  # fmt: skip
    return [f"\nRegistered model: {reg['model_name']} version {reg['version']} "
            f"(gate failed: {'; '.join(reg['gate_reasons'])}; no alias moved)"]  # fmt: skip


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _bounds(interval: list[float | None] | None) -> str:
    return "" if not interval or interval[0] is None else f"{interval[0]:.3f}-{interval[1]:.3f}"


def _ci(interval: list[float | None] | None) -> str:
    if not interval or interval[0] is None:
        return ""
    return f"[95% CI {interval[0]:.3f}-{interval[1]:.3f}]"
