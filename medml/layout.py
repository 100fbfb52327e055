"""Every file name of a run directory, in one place.

A run directory holds one pipeline run's inputs and outputs. :class:`RunLayout` names each of
them; the step functions that write into a sub-folder (a fold, the evaluation, validation,
registration, the shards) receive that folder and take their file names from the small
``*Files`` classes here, so no module joins a file name of its own.

::

    <run>/run.json  snapshot.json  remote.json  manifest.parquet  splits.parquet
          split_report.json  preprocess.json  summary.txt
          source/                      local copy of an S3 snapshot
          validation/                  ValidationFiles
          shards/                      ShardFiles
          folds/fold_<k>/              FoldFiles
          evaluation/                  EvaluationFiles
          registry/                    RegistryFiles
          overview/                    class counts, samples, augmented samples (PNG)
          compare/                     compare runs (one folder per setting set)
          steps/                       each step's record of having finished (written last)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

METRICS_FILE = "metrics.json"
"""Holdout metrics, in the evaluation folder and under ``evaluation/`` in the MLflow run."""


def plot_file(name: str) -> str:
    """File name of plot ``name`` (also its name among the MLflow run's artifacts)."""
    return f"{name}.png"


@dataclass(frozen=True)
class ValidationFiles:
    """What the validation gate writes."""

    root: Path

    @property
    def report(self) -> Path:
        return self.root / "validation.json"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine.csv"

    @property
    def clean_manifest(self) -> Path:
        return self.root / "clean_manifest.parquet"

    @property
    def data_docs(self) -> Path:
        return self.root / "data_docs"

    @property
    def html(self) -> Path:
        """The validation result as one self-contained page (readable offline)."""
        return self.root / "validation.html"


@dataclass(frozen=True)
class ShardFiles:
    """What preprocess writes: ``shard-*.npy`` plus an index and metadata."""

    root: Path

    @property
    def index(self) -> Path:
        return self.root / "index.parquet"

    @property
    def meta(self) -> Path:
        return self.root / "meta.json"

    def shard(self, number: int) -> Path:
        return self.root / shard_name(number)


@dataclass(frozen=True)
class FoldFiles:
    """What training one fold writes."""

    root: Path

    @property
    def model(self) -> Path:
        return self.root / "model.keras"

    @property
    def history(self) -> Path:
        return self.root / "history.json"


@dataclass(frozen=True)
class EvaluationFiles:
    """What the holdout evaluation writes."""

    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def scores(self) -> Path:
        """The headline holdout scores, flat (what ``dvc metrics show`` and ``diff`` compare)."""
        return self.root / "scores.json"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.parquet"

    @property
    def oof_metrics(self) -> Path:
        """Out-of-fold metrics: each training image scored by the fold model that did not
        train on it."""
        return self.root / "oof_metrics.json"

    @property
    def oof_predictions(self) -> Path:
        return self.root / "oof_predictions.parquet"

    @property
    def calibration(self) -> Path:
        """The temperature (fitted on the calibration cut, or out-of-fold), the ECE before/after
        and the calibration cut's estimate of the registered ensemble."""
        return self.root / "calibration.json"

    @property
    def conformal(self) -> Path:
        """The class-conditional prediction sets: their rule and holdout coverage."""
        return self.root / "conformal.json"

    @property
    def label_issues(self) -> Path:
        """Suspected label errors among the training images, most suspect first (CSV)."""
        return self.root / "label_issues.csv"

    @property
    def label_issues_summary(self) -> Path:
        """How many suspects, of how many images, by which rule."""
        return self.root / "label_issues.json"

    @property
    def operating_point(self) -> Path:
        """Binary recipes: the OOF-chosen threshold and the holdout's rates at it."""
        return self.root / "operating_point.json"

    @property
    def baseline(self) -> Path:
        """The paired comparison with the baseline on the same rows (:mod:`medml.baseline`)."""
        return self.root / "baseline.json"

    def plot(self, name: str) -> Path:
        """A plot's PNG (``confusion_matrix``, ``roc_curves``, ``reliability``, …)."""
        return self.root / plot_file(name)


@dataclass(frozen=True)
class RegistryFiles:
    """What registration writes."""

    root: Path

    @property
    def ensemble(self) -> Path:
        return self.root / "ensemble.keras"

    @property
    def registration(self) -> Path:
        return self.root / "registration.json"

    @property
    def model_card_md(self) -> Path:
        return self.root / "model_card.md"

    @property
    def model_card_html(self) -> Path:
        return self.root / "model_card.html"


@dataclass(frozen=True)
class RunLayout:
    """Where each step's inputs and outputs live inside a run directory."""

    root: Path

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def source_copy(self) -> Path:
        """Local copy of a remote (S3) source."""
        return self.root / "source"

    @property
    def snapshot_json(self) -> Path:
        """The snapshot's location and DVC hash, written by ingest."""
        return self.root / "snapshot.json"

    @property
    def remote_json(self) -> Path:
        """Where the run was shared for training pods (``{"uri": "s3://…"}``)."""
        return self.root / "remote.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def validation(self) -> ValidationFiles:
        return ValidationFiles(self.root / "validation")

    @property
    def splits(self) -> Path:
        return self.root / "splits.parquet"

    @property
    def split_report(self) -> Path:
        return split_report_path(self.splits)

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def preprocess_json(self) -> Path:
        return self.root / "preprocess.json"

    @property
    def folds(self) -> Path:
        """Every fold's folder (:meth:`fold`)."""
        return self.root / "folds"

    def fold(self, fold: int | str) -> FoldFiles:
        """Fold ``fold``'s folder (``"{fold}"``: the pattern a per-fold step declares)."""
        return FoldFiles(self.folds / f"fold_{fold}")

    @property
    def step_records(self) -> Path:
        """Each step's record of having finished (:meth:`step_record`)."""
        return self.root / "steps"

    def step_record(self, step: str, fold: int | str | None = None) -> Path:
        """Written last by step ``step`` (of fold ``fold``) when it succeeded: what it
        produced, fingerprinted; the steps after it refuse to start without it."""
        if fold is None:
            return self.step_records / f"{step}.json"
        return self.step_records / step / f"fold_{fold}.json"

    def fold_models(self, folds: int) -> list[Path]:
        return [self.fold(k).model for k in range(folds)]

    @property
    def evaluation(self) -> EvaluationFiles:
        return EvaluationFiles(self.root / "evaluation")

    @property
    def registry(self) -> RegistryFiles:
        return RegistryFiles(self.root / "registry")

    @property
    def summary(self) -> Path:
        return self.root / "summary.txt"

    @property
    def overview(self) -> Path:
        """Class counts, samples per class and augmented samples (:mod:`medml.overview`)."""
        return self.root / "overview"

    @property
    def compare(self) -> Path:
        """One folder per compared setting set (fold models trained out-of-fold)."""
        return self.root / "compare"

    @property
    def compare_table(self) -> Path:
        return self.compare_outputs("compare_balancing")[0]

    def compare_outputs(self, kind: str) -> tuple[Path, Path]:
        """The table (CSV) and plot (PNG) of a comparison."""
        return self.compare / f"{kind}.csv", self.compare / f"{kind}.png"

    def compare_curves(self, kind: str) -> Path:
        """The learning curves of every compared setting set, in one figure (PNG)."""
        return self.compare / f"{kind}_curves.png"


def shard_name(number: int) -> str:
    """File name of shard ``number`` (listed in ``meta.json``)."""
    return f"shard-{number:05d}.npy"


def split_report_path(splits: Path) -> Path:
    """The split step's report, next to ``splits.parquet``."""
    return Path(splits).with_name("split_report.json")


RELATIVE = RunLayout(Path())
"""Paths relative to a run directory (S3 keys under a shared run)."""


@dataclass(frozen=True)
class StepFiles:
    """What one step reads from and writes to a run directory (paths relative to it).

    Declared by each step in :mod:`medml.steps`. A step that runs on a mirror of an S3 run
    directory (another worker, a training pod)
    downloads ``needs`` first and uploads ``produces`` when it succeeds; ``optional`` ones may
    be absent. ``reads_source`` steps also need the dataset's files (fetched again from an S3
    source, never copied into the run).
    """

    needs: tuple[str, ...]
    produces: tuple[str, ...]
    optional: tuple[str, ...] = ()
    reads_source: bool = False


@dataclass(frozen=True)
class MlflowArtifacts:
    """Where a pipeline run keeps its files among its MLflow artifacts (paths relative to the
    run's artifact root)."""

    evaluation: str = "evaluation"
    validation: str = "validation"
    overview: str = "overview"
    model_card: str = "model_card"
    model: str = "model"
    """The logged model's name (``runs:/<run>/model``; its registered versions' source)."""

    @property
    def metrics(self) -> str:
        """The holdout metrics (:data:`METRICS_FILE`) that the gate decided on."""
        return f"{self.evaluation}/{METRICS_FILE}"

    @property
    def champion_metrics(self) -> str:
        """The champion's metrics on the same holdout, when the gate compared with one."""
        return f"{self.evaluation}/champion_on_this_holdout.json"

    @property
    def baseline(self) -> str:
        """The paired comparison with the baseline model (``baseline.json``)."""
        return self._logged(_EVALUATION.baseline)

    @property
    def oof_metrics(self) -> str:
        """The out-of-fold metrics of the training images (``oof_metrics.json``)."""
        return self._logged(_EVALUATION.oof_metrics)

    @property
    def operating_point(self) -> str:
        """The binary operating point and its rates (``operating_point.json``)."""
        return self._logged(_EVALUATION.operating_point)

    @property
    def calibration(self) -> str:
        """The temperature, the ECEs and the calibration cut's estimate (``calibration.json``)."""
        return self._logged(_EVALUATION.calibration)

    @property
    def conformal(self) -> str:
        """The prediction sets' rule and holdout coverage (``conformal.json``)."""
        return self._logged(_EVALUATION.conformal)

    @property
    def label_issues(self) -> str:
        """How many training images were flagged as possibly mislabelled (``label_issues.json``)."""
        return self._logged(_EVALUATION.label_issues_summary)

    def _logged(self, local: Path) -> str:
        """Where evaluation's file ``local`` is among the run's artifacts (same file name)."""
        return f"{self.evaluation}/{local.name}"

    def plot(self, name: str) -> str:
        """An evaluation plot (``confusion_matrix``, ``roc_curves`` …)."""
        return f"{self.evaluation}/{plot_file(name)}"


_EVALUATION = EvaluationFiles(Path())
"""Evaluation's file names (the folder does not matter), for :class:`MlflowArtifacts`."""

ARTIFACTS = MlflowArtifacts()
"""The one set of MLflow artifact paths."""
