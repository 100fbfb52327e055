"""What an evaluation found besides the holdout metrics, as one typed object.

Evaluation writes the temperature it fitted (``calibration.json``), the out-of-fold metrics
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
    """The temperature fitted out-of-fold and the expected calibration error before/after
    it, out-of-fold and (``None`` without a holdout) on the holdout."""

    temperature: float
    fitted_on: str
    oof_ece_before: float
    oof_ece_after: float
    holdout_ece_before: float | None = None
    holdout_ece_after: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationReport:
        """From ``calibration.json``."""
        return cls(**{key: data.get(key) for key in cls.__dataclass_fields__})

    @property
    def held_out(self) -> bool:
        """Whether the ECE was also measured on a holdout."""
        return self.holdout_ece_before is not None


@dataclass(frozen=True)
class OperatingPoint:
    """A binary recipe's decision threshold on the positive class's probability, chosen
    out-of-fold for a target sensitivity, with the rates it reaches (``holdout``: ``None``
    without a holdout)."""

    positive_class: str
    threshold: float
    target_sensitivity: float
    oof: dict[str, Any]
    holdout: dict[str, Any] | None = None
    chosen_on: str = ""
    positives: int | None = None
    """Out-of-fold images of the positive class the threshold was chosen on."""
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

    @classmethod
    def read(cls, files: EvaluationFiles) -> EvaluationFacts:
        """Read an evaluation folder's reports."""
        point = files.operating_point
        return cls(
            calibration=CalibrationReport.from_dict(read_json(files.calibration)),
            oof_metrics=HoldoutMetrics.read(files.oof_metrics),
            operating_point=OperatingPoint.from_dict(read_json(point)) if point.is_file() else None,
            baseline=read_json(files.baseline) if files.baseline.is_file() else None,
        )
