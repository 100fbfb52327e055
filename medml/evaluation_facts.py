"""What an evaluation found besides the holdout metrics, as one typed object.

Evaluation writes the temperature it fitted and the calibration cut's estimate of the
registered ensemble (``calibration.json``), the out-of-fold metrics
(``oof_metrics.json``) and, for a binary recipe, the operating point
(``operating_point.json``). Registration (the served model's calibration), the run summary and
the model card read them through :class:`EvaluationFacts`, not as loose dictionaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medml.io import read_json
from medml.layout import EvaluationFiles
from medml.metrics import HoldoutMetrics


@dataclass(frozen=True)
class CalibrationReport:
    """The temperature (fitted on the fold ensemble's averaged output on the calibration cut,
    or else out-of-fold) and the expected calibration error before/after it: out-of-fold
    (single fold models), on the calibration cut and on the holdout (the registered ensemble;
    ``None`` where there is none)."""

    temperature: float
    fitted_on: str
    oof_ece_before: float
    oof_ece_after: float
    holdout_ece_before: float | None = None
    holdout_ece_after: float | None = None
    cut_ece_before: float | None = None
    cut_ece_after: float | None = None
    fitted: bool = True
    """False with ``evaluate.calibrate`` off (T = 1, not fitted)."""
    warning: str | None = None
    """Why the temperature was not fitted where it should have been (else ``None``)."""
    ensemble_estimate: dict[str, Any] | None = None
    """The calibration cut's metrics (``metrics.json`` form): the registered ensemble scored
    on images no fold model trained or validated on; ``None`` without a cut."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationReport:
        """From ``calibration.json``."""
        known = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        return cls(**{"holdout_ece_before": None, "holdout_ece_after": None, **known})

    @property
    def held_out(self) -> bool:
        """Whether the ECE was also measured on a holdout."""
        return self.holdout_ece_before is not None

    @property
    def on_cut(self) -> bool:
        """Whether the temperature was fitted (and the ensemble scored) on a calibration cut."""
        return self.cut_ece_before is not None

    def ensemble_metrics(self) -> HoldoutMetrics | None:
        """The calibration cut's metrics, or ``None`` without a cut."""
        return HoldoutMetrics.from_dict(self.ensemble_estimate) if self.ensemble_estimate else None


@dataclass(frozen=True)
class OperatingPoint:
    """A binary recipe's decision threshold on the positive class's probability, chosen for a
    target sensitivity on the calibration cut's ensemble output or out-of-fold (``chosen_on``),
    with the rates it reaches there and on the holdout (``None`` where there is none)."""

    positive_class: str
    threshold: float
    target_sensitivity: float
    oof: dict[str, Any]
    holdout: dict[str, Any] | None = None
    chosen_on: str = ""
    positives: int | None = None
    """Images of the positive class the threshold was chosen on."""
    calibration_cut: dict[str, Any] | None = None
    in_sample: str | None = None
    """Which rates were measured where the threshold was chosen (``oof`` or
    ``calibration_cut``): they meet the target by construction."""
    warning: str | None = None
    """Why the threshold is provisional (too few positives), else ``None``."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperatingPoint:
        """From ``operating_point.json``."""
        return cls(**{key: data.get(key) for key in cls.__dataclass_fields__})

    @property
    def rates(self) -> dict[str, Any]:
        """The rates on the holdout, else out-of-fold."""
        return self.holdout or self.oof

    def serving(self) -> dict[str, Any]:
        """What the served model needs to return its decision."""
        return {"positive_class": self.positive_class, "threshold": self.threshold}


@dataclass(frozen=True)
class EvaluationFacts:
    """Calibration, out-of-fold metrics and (binary) operating point of one evaluation."""

    calibration: CalibrationReport
    oof_metrics: HoldoutMetrics
    operating_point: OperatingPoint | None = None
    baseline: dict[str, Any] | None = None
    """The paired comparison with the baseline (:func:`medml.baseline.compare`); ``None``
    without a holdout."""
    label_issues: dict[str, Any] | None = None
    """How many training images confident learning flagged (``label_issues.json``)."""
    conformal: dict[str, Any] | None = None
    """The prediction sets (``conformal.json``: rule, holdout coverage); ``None`` for an
    evaluation made before medml had them."""

    @classmethod
    def read(cls, files: EvaluationFiles) -> EvaluationFacts:
        """Read an evaluation folder's reports."""
        point = files.operating_point
        return cls(
            calibration=CalibrationReport.from_dict(read_json(files.calibration)),
            oof_metrics=HoldoutMetrics.read(files.oof_metrics),
            operating_point=OperatingPoint.from_dict(read_json(point)) if point.is_file() else None,
            baseline=read_json(files.baseline) if files.baseline.is_file() else None,
            conformal=read_json(files.conformal) if files.conformal.is_file() else None,
            label_issues=(
                read_json(files.label_issues_summary)
                if files.label_issues_summary.is_file()
                else None
            ),  # fmt: skip
        )
