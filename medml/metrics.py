"""Typed holdout metrics, the metric registry, and the declarative registration gate.

:class:`HoldoutMetrics` is the one reader and writer of ``metrics.json``: everything else
(the gate, the summary, the review, the model card, MLflow logging) asks it for values by
metric name. Metric names live in :data:`medml.extensions.METRICS`; each is a small function
of a :class:`HoldoutMetrics` registered with :func:`metric`. A recipe's gate is data keyed by
those names, in the spirit of MLflow's ``MetricThreshold`` dict::

    registry:
      gate:
        thresholds:                      # absolute bounds
          balanced_accuracy: {min: 0.5}
          class_sensitivity: {min: 0.3}  # a per-class metric: every class must pass
          expected_calibration_error: {max: 0.2}
        non_inferiority:                 # largest allowed drop vs the champion, same holdout
          class_sensitivity: 0.05
          macro_f1: 0.0

Adding a gate metric = compute it (in :func:`medml.evaluate.clinical_metrics` if it is new),
register a function here, and name it in a recipe.

Intervals (``ci95`` in ``metrics.json``): each class's sensitivity, specificity, PPV and NPV
get the exact (Clopper-Pearson) 95% interval of its counts (:func:`exact_interval`), right at
any n; the composite scores (balanced accuracy, macro-F1, ROC AUC, ECE) a stratified bootstrap
(:func:`medml.evaluate.clinical_metrics`). A class with fewer than ``min_class_support``
images (``evaluate.min_class_support``, default 20) is *too few to judge*: every report shows
its numbers flagged so.

Better than chance, with confidence (:func:`chance_reasons`, ``require_better_than_chance``),
chance being 1/k for k classes:

- the lower bound of balanced accuracy's bootstrap 95% interval (the point estimate when there
  is none) must exceed chance;
- every class's sensitivity must exceed chance (the floor every class is held to);
- every class with at least ``min_class_support`` images must also have the lower bound of its
  sensitivity's exact 95% interval above chance: the data show it is detected better than by
  guessing, not only the point estimate;
- a class with fewer images cannot show that (3/3 has the interval 0.292-1.000): it is held to
  the floor only and named in the outcome's ``notes`` as too few to judge, which do not fail
  the gate by themselves.

The gate computes each class's exact interval from the confusion matrix, so a version
evaluated before these intervals existed is judged by the same rule.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medml.extensions import METRICS
from medml.io import read_json, write_json

HOLDOUT = "holdout"
OUT_OF_FOLD = "out-of-fold"
CALIBRATION_CUT = "calibration cut"
MIN_CLASS_SUPPORT = 20  # the default of evaluate.min_class_support (medml.config)
CONFIDENCE = 0.95

if TYPE_CHECKING:
    import numpy as np

    from medml.config import GateConfig

Value = float | dict[str, float]


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: how to read it and which direction is better."""

    name: str
    read: Callable[[HoldoutMetrics], Value]
    higher_is_better: bool = True
    per_class: bool = False

    @property
    def short_name(self) -> str:
        """The per-class rate's name without ``class_`` (``sensitivity``): its column in
        tables and, with the class, its MLflow metric name (``test_sensitivity_Tumor``)."""
        return self.name.removeprefix("class_")

    def flat(self, value: Value, prefix: str = "") -> dict[str, float]:
        """``value`` of this metric under flat names: ``<prefix><name>``, or for a per-class
        metric ``<prefix><short name>_<class>`` per class; non-finite values left out."""
        if isinstance(value, dict):
            named = {f"{prefix}{self.short_name}_{cls}": v for cls, v in value.items()}
        else:
            named = {f"{prefix}{self.name}": value}
        return {key: float(v) for key, v in named.items() if math.isfinite(float(v))}


def registered_metrics(*, per_class: bool | None = None) -> list[MetricSpec]:
    """Every registered metric (only the per-class or only the scalar ones when asked), in
    registration order: what is gated, logged, tagged and shown."""
    specs = [METRICS.get(name) for name in METRICS.names()]
    return [s for s in specs if per_class is None or s.per_class == per_class]


def scalar_metrics(m: HoldoutMetrics) -> dict[str, float]:
    """Every registered scalar metric's value of ``m``, by name."""
    return {spec.name: float(spec.read(m)) for spec in registered_metrics(per_class=False)}


def exact_interval(
    successes: int, trials: int, confidence: float = CONFIDENCE
) -> list[float | None]:
    """The exact (Clopper-Pearson) interval of the rate ``successes / trials``.

    Chosen over Wilson's because its coverage is at least ``confidence`` for every true rate
    and every ``trials`` (Wilson's dips below it for some rates at small n): a clinician can
    take it at face value, at the price of being a little wide. It is a function of the counts
    alone and never collapses at 0 or ``trials`` successes, as a bootstrap does (3/3:
    0.292-1.000; 0/4: 0.000-0.602). The bounds are quantiles of beta distributions
    (``scipy.stats.beta``).

    Args:
        successes: events counted (e.g. true positives).
        trials: chances for one (e.g. the class's images).
        confidence: the interval's coverage.

    Returns:
        ``[low, high]``; ``[None, None]`` without trials.
    """
    successes, trials = int(successes), int(trials)
    if trials <= 0:
        return [None, None]
    from scipy.stats import beta

    tail, failures = (1.0 - confidence) / 2, trials - successes
    low = float(beta.ppf(tail, successes, failures + 1)) if successes > 0 else 0.0
    high = float(beta.ppf(1 - tail, successes + 1, failures)) if failures > 0 else 1.0
    return [low, high]


def metric(
    name: str, *, higher_is_better: bool = True, per_class: bool = False
) -> Callable[[Callable[[HoldoutMetrics], Value]], Callable[[HoldoutMetrics], Value]]:
    """Decorator: register a function of :class:`HoldoutMetrics` as metric ``name``."""

    def add(read: Callable[[HoldoutMetrics], Value]) -> Callable[[HoldoutMetrics], Value]:
        METRICS.register(name)(MetricSpec(name, read, higher_is_better, per_class))
        return read

    return add


@dataclass(frozen=True)
class HoldoutMetrics:
    """A model's clinical metrics on one set of images (the holdout, or out-of-fold).

    Attributes:
        classes: class names in index order.
        overall: whole-set scores (accuracy, balanced accuracy, macro-F1, AUC, kappa, ECE, n, …).
        per_class: per class: sensitivity, specificity, ppv, npv, f1, support (``None`` where
            undefined, e.g. no positives).
        confusion_matrix: rows = true class, columns = predicted class.
        ci95: 95% intervals: exact (Clopper-Pearson) per class for ``sensitivity``,
            ``specificity``, ``ppv`` and ``npv`` (``{class: [low, high]}``); stratified
            bootstrap for ``balanced_accuracy``, ``macro_f1``, ``roc_auc_ovr_macro`` and
            ``expected_calibration_error``; ``method`` names both.
        per_fold: each fold model's overall scores on the same images.
        estimate: what the scores estimate from: ``holdout`` (the untouched test set),
            ``out-of-fold`` (cross-validation only, ``split.test_size: 0``: every image scored
            by the fold model that did not train on it) or ``calibration cut`` (the fold
            ensemble on the images no fold model trained on, where its temperature was fitted).
        min_class_support: fewer images of a class than this make it too few to judge
            (``evaluate.min_class_support``).
    """

    classes: list[str]
    overall: dict[str, Any]
    per_class: dict[str, dict[str, Any]]
    confusion_matrix: list[list[int]]
    ci95: dict[str, Any] = field(default_factory=dict)
    per_fold: list[dict[str, Any]] = field(default_factory=list)
    estimate: str = HOLDOUT
    min_class_support: int = MIN_CLASS_SUPPORT

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HoldoutMetrics:
        """From the JSON form (``metrics.json`` or an MLflow artifact)."""
        return cls(
            classes=list(data["classes"]),
            overall=dict(data["overall"]),
            per_class={k: dict(v) for k, v in data["per_class"].items()},
            confusion_matrix=[list(row) for row in data["confusion_matrix"]],
            ci95=dict(data.get("ci95") or {}),
            per_fold=list(data.get("per_fold") or []),
            estimate=str(data.get("estimate", HOLDOUT)),
            min_class_support=int(data.get("min_class_support", MIN_CLASS_SUPPORT)),
        )

    @classmethod
    def read(cls, path: Path) -> HoldoutMetrics:
        """Read ``metrics.json``."""
        return cls.from_dict(read_json(path))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "classes": self.classes,
            "overall": self.overall,
            "per_class": self.per_class,
            "confusion_matrix": self.confusion_matrix,
            "ci95": self.ci95,
            "per_fold": self.per_fold,
            "estimate": self.estimate,
            "min_class_support": self.min_class_support,
            "too_few_to_judge": self.too_few_to_judge,
        }

    def write(self, path: Path) -> Path:
        """Write ``metrics.json`` atomically."""
        return write_json(path, self.to_dict())

    def with_folds(self, per_fold: list[dict[str, Any]]) -> HoldoutMetrics:
        """A copy with each fold model's overall scores."""
        return dataclasses.replace(self, per_fold=per_fold)

    @property
    def label(self) -> str:
        """What the scores were measured on, for reports."""
        n = self.overall.get("n", "?")
        if self.estimate == OUT_OF_FOLD:
            return f"Out-of-fold estimate (cross-validation only, no holdout; n={n})"
        if self.estimate == CALIBRATION_CUT:
            return f"Calibration cut (the fold ensemble on images no fold model trained on; n={n})"
        return f"Holdout test set (n={n})"

    @property
    def too_few_to_judge(self) -> list[str]:
        """The classes with fewer than :attr:`min_class_support` images (from the confusion
        matrix): their rates and intervals are shown, flagged, but support no conclusion."""
        return [cls for cls, row in zip(self.classes, self.confusion_matrix, strict=True)
                if sum(row) < self.min_class_support]  # fmt: skip

    def value(self, name: str) -> Value:
        """The value of registered metric ``name`` (a dict per class for per-class metrics).

        Raises:
            ConfigError: unknown metric name ("did you mean …").
        """
        return METRICS.get(name).read(self)

    def interval(self, name: str, cls: str | None = None) -> list[float | None] | None:
        """The 95% interval of ``name``, of class ``cls`` for a per-class rate
        (``sensitivity``, ``specificity``, ``ppv``, ``npv``); ``None`` when there is none."""
        found = self.ci95.get(name)
        if cls is not None:
            found = (found or {}).get(cls)
        return found

    def loggable(self, prefix: str = "test_") -> dict[str, float]:
        """Every finite overall score, every registered metric (per-class ones per class) and
        the per-fold scores, as flat names."""
        flat = {f"{prefix}{k}": float(v) for k, v in self.overall.items()
                if isinstance(v, float) and math.isfinite(v)}  # fmt: skip
        for spec in registered_metrics():
            flat |= spec.flat(spec.read(self), prefix)
        for fold, scores in enumerate(self.per_fold):
            for key in ("balanced_accuracy", "macro_f1"):
                flat[f"{prefix}fold{fold}_{key}"] = float(scores[key])
        return flat


def _overall(key: str) -> Callable[[HoldoutMetrics], float]:
    return lambda m: float(m.overall[key])


def _per_class(key: str) -> Callable[[HoldoutMetrics], dict[str, float]]:
    return lambda m: {c: float(s[key]) for c, s in m.per_class.items() if s.get(key) is not None}


for _name in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr_macro", "cohen_kappa"):
    metric(_name)(_overall(_name))
metric("expected_calibration_error", higher_is_better=False)(_overall("expected_calibration_error"))
for _name in ("sensitivity", "specificity", "ppv", "npv", "f1"):
    metric(f"class_{_name}", per_class=True)(_per_class(_name))


@metric("min_class_sensitivity")
def min_class_sensitivity(m: HoldoutMetrics) -> float:
    """The worst class's sensitivity (0 when no class has positives)."""
    return min(_per_class("sensitivity")(m).values(), default=0.0)


@dataclass(frozen=True)
class GateOutcome:
    """Whether a model passed the registration gate, and why not."""

    passed: bool
    reasons: list[str]
    notes: list[str] = field(default_factory=list)  # e.g. classes too few to judge


def check_gate(
    candidate: HoldoutMetrics, gate: GateConfig, champion: HoldoutMetrics | None = None,
    baseline: dict[str, Any] | None = None, operating_point: dict[str, Any] | None = None,
) -> GateOutcome:  # fmt: skip
    """Compare a candidate's holdout metrics with the gate's bounds and, if given, the champion.

    Args:
        candidate: the candidate's metrics.
        gate: ``thresholds`` (absolute bounds on the argmax metrics) and ``non_inferiority``
            (largest allowed drop from the champion), keyed by metric name; ``beats_baseline``;
            ``operating_point`` (bounds on the rates at the binary threshold).
        champion: the champion's metrics on the same holdout, or ``None``.
        baseline: the paired comparison with the baseline (:func:`medml.baseline.compare`).
        operating_point: the binary operating point (``operating_point.json``), or ``None``.
    """
    reasons = chance_reasons(candidate) if gate.require_better_than_chance else []
    if gate.beats_baseline:
        reasons += baseline_reasons(baseline)
    if gate.operating_point:
        reasons += operating_point_reasons(operating_point, gate.operating_point)
    for name, bound in gate.thresholds.items():
        for label, value in _values(candidate, name):
            if bound.min is not None and not value >= bound.min:
                reasons.append(f"{label} {value:.3f} is below the minimum {bound.min:.3f}")
            if bound.max is not None and not value <= bound.max:
                reasons.append(f"{label} {value:.3f} is above the maximum {bound.max:.3f}")
    if champion is not None:
        for name, margin in gate.non_inferiority.items():
            reasons += _inferior(candidate, champion, name, margin)
    return GateOutcome(passed=not reasons, reasons=reasons, notes=too_few_notes(candidate))


_BOOTSTRAP_DRAWS = 1_000_000  # resampled images held at once (8 MB per copy of the weights)


def stratified_weights(
    y_true: np.ndarray, rounds: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Bootstrap resamples as weights, in chunks of shape ``(rounds in chunk, n)``: how often
    each image is drawn when each true class is resampled, with replacement, to its own count.
    Every resample has every class at its own count (the weights of a class sum to it)."""
    import numpy as np

    n = len(y_true)
    members = [np.flatnonzero(y_true == c) for c in np.unique(y_true)]
    chunk = max(1, _BOOTSTRAP_DRAWS // max(n, 1))
    for start in range(0, rounds, chunk):
        size = min(chunk, rounds - start)
        offsets = (np.arange(size) * n)[:, None]
        drawn = np.concatenate(
            [idx[rng.integers(0, len(idx), (size, len(idx)))] for idx in members], axis=1
        )
        yield np.bincount((drawn + offsets).ravel(), minlength=size * n).reshape(size, n)


def estimates_disagree(estimate: HoldoutMetrics, holdout: HoldoutMetrics,
                       name: str = "balanced_accuracy") -> str:  # fmt: skip
    """A warning when an earlier estimate — out-of-fold (single fold models on the training
    images) or the calibration cut's (the registered ensemble on images no fold model trained
    on) — and the holdout's (the registered ensemble) disagree beyond their 95% intervals;
    else ``""``."""
    a, b = estimate.interval(name), holdout.interval(name)
    if not a or not b or None in (*a, *b) or holdout.estimate == OUT_OF_FOLD:
        return ""  # no interval, or no holdout (the "holdout" is the out-of-fold estimate)
    if estimate.estimate == CALIBRATION_CUT and (estimate.too_few_to_judge or a[0] == a[1]):
        return ""  # a small cut: its interval understates its uncertainty (all right: no width)
    if a[1] >= b[0] and b[1] >= a[0]:
        return ""
    if estimate.estimate == CALIBRATION_CUT:
        source, model = "the calibration cut's", "the registered ensemble"
        meaning = ("the two sets differ more than chance allows (a shift between them, or "
                   "leakage into one)")  # fmt: skip
    else:
        source, model = "the out-of-fold", "single fold models"
        meaning = "the out-of-fold figure does not describe the model that is registered"
    return (f"{source} {name} {estimate.overall[name]:.3f} ({a[0]:.3f}-{a[1]:.3f}, {model}) "
            f"and the holdout's {holdout.overall[name]:.3f} ({b[0]:.3f}-{b[1]:.3f}, the "
            f"registered ensemble) disagree beyond their 95% intervals: {meaning}")  # fmt: skip


def operating_point_reasons(point: dict[str, Any] | None, bounds: Mapping[str, Any]) -> list[str]:
    """Why the holdout rates at the binary operating point miss ``registry.gate.operating_point``
    (each point estimate against its bound, quoted with its exact interval)."""
    holdout = (point or {}).get("holdout")
    if not holdout:
        return ["operating_point: no holdout rates at the operating point (it needs a holdout "
                "and evaluate.positive_class)"]  # fmt: skip
    where = f"at {point['positive_class']} >= {point['threshold']:.3f}"
    reasons = []
    for name, bound in bounds.items():
        value = holdout.get(name)
        low, high = holdout.get(f"{name}_ci95") or (None, None)
        shown = "n/a" if value is None else f"{value:.3f}"
        if low is not None:
            shown += f" (exact 95% CI {low:.3f}-{high:.3f})"
        if bound.min is not None and not (value is not None and value >= bound.min):
            reasons.append(f"{name} {where} {shown} is below the minimum {bound.min:.3f}")
        if bound.max is not None and not (value is not None and value <= bound.max):
            reasons.append(f"{name} {where} {shown} is above the maximum {bound.max:.3f}")
    return reasons


def baseline_reasons(baseline: dict[str, Any] | None) -> list[str]:
    """Why the model did not beat the baseline measurably (``registry.gate.beats_baseline``)."""
    if baseline is None:
        return ["beats_baseline: no baseline comparison (it needs a holdout)"]
    if baseline.get("verdict") == "better":
        return []
    low, high = baseline["difference_ci95"]
    difference = baseline["difference"]
    return [f"beats_baseline: balanced accuracy {difference:+.3f} against the baseline "
            f"(paired 95% CI {low:+.3f} to {high:+.3f}) is not measurably better"]  # fmt: skip


def chance_reasons(m: HoldoutMetrics) -> list[str]:
    """Why ``m`` is not "better than chance, with confidence" (the rule is in the module's
    docstring): balanced accuracy's interval, every class's sensitivity, and, for each class
    with at least ``m.min_class_support`` images, the exact interval of its sensitivity."""
    chance = 1.0 / len(m.classes)
    point = float(m.value("balanced_accuracy"))
    low = (m.interval("balanced_accuracy") or [None])[0]
    bound, what = (point, "") if low is None else (float(low), f" (95% CI lower bound {low:.3f})")
    reasons = []
    if not bound > chance:
        reasons.append(f"balanced_accuracy {point:.3f}{what} is not above chance "
                       f"({chance:.3f} for {len(m.classes)} classes)")  # fmt: skip
    judged = set(m.classes) - set(m.too_few_to_judge)
    for cls, value in _per_class("sensitivity")(m).items():
        label = f"class_sensitivity of {cls}"
        if math.isnan(value):  # no holdout image of the class: a note (too few), not a reason
            continue
        if not value > chance:
            reasons.append(f"{label} {value:.3f} is at or below chance ({chance:.3f})")
            continue
        low, high = _sensitivity_interval(m, cls)
        if cls in judged and low is not None and not low > chance:
            reasons.append(f"{label} {value:.3f} (exact 95% CI {low:.3f}-{high:.3f}) is not "
                           f"above chance ({chance:.3f}) with confidence")  # fmt: skip
    return reasons


def too_few_notes(m: HoldoutMetrics) -> list[str]:
    """One note per class too few to judge: its count and exact sensitivity interval."""
    notes = []
    for cls in m.too_few_to_judge:
        low, high = _sensitivity_interval(m, cls)
        shown = "" if low is None else f", sensitivity 95% CI {low:.3f}-{high:.3f}"
        notes.append(f"{cls}: too few to judge ({_count(m, cls)} images, fewer than "
                     f"evaluate.min_class_support={m.min_class_support}{shown}); held to the "
                     "point-estimate floor only")  # fmt: skip
    return notes


def _count(m: HoldoutMetrics, cls: str) -> int:
    return int(sum(m.confusion_matrix[m.classes.index(cls)]))


def _sensitivity_interval(m: HoldoutMetrics, cls: str) -> list[float | None]:
    """The exact 95% interval of ``cls``'s sensitivity, from the confusion matrix's counts."""
    i = m.classes.index(cls)
    return exact_interval(m.confusion_matrix[i][i], _count(m, cls))


def _values(m: HoldoutMetrics, name: str) -> list[tuple[str, float]]:
    value = m.value(name)
    if isinstance(value, dict):
        return [(f"{name} of {cls}", v) for cls, v in value.items()]
    return [(name, value)]


def inferior_reasons(
    candidate: HoldoutMetrics, reference: HoldoutMetrics, gate: GateConfig, who: str
) -> list[str]:
    """Why ``candidate`` is worse than ``reference`` (scored on the same holdout) by more than
    ``gate.non_inferiority`` allows, naming the reference ``who`` (e.g. ``challenger v3``)."""
    reasons = []
    for name, margin in gate.non_inferiority.items():
        reasons += [r.replace("the champion's", f"{who}'s")
                    for r in _inferior(candidate, reference, name, margin)]  # fmt: skip
    return reasons


def _inferior(
    candidate: HoldoutMetrics, champion: HoldoutMetrics, name: str, margin: float
) -> list[str]:
    spec = METRICS.get(name)
    best = dict(_values(champion, name))
    reasons = []
    for label, value in _values(candidate, name):
        if label not in best:
            continue
        if value is None or best[label] is None or not math.isfinite(value) \
                or not math.isfinite(best[label]):  # fmt: skip
            reasons.append(f"{label}: non-inferiority cannot be shown (a value is missing)")
            continue
        drop = best[label] - value if spec.higher_is_better else value - best[label]
        if drop > margin:
            reasons.append(f"{label} {value:.3f} is more than {margin:.3f} worse than the "
                           f"champion's {best[label]:.3f} on the same holdout")  # fmt: skip
    return reasons
