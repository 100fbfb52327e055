from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_score, recall_score

from medml.evaluate import (
    clinical_metrics,
    confusion,
    expected_calibration_error,
    plot_confusion_matrix,
)

CLASSES = ["a", "b", "c"]


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=300)
    logits = rng.normal(size=(300, 3))
    logits[np.arange(300), y] += 1.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


def test_metrics_agree_with_sklearn() -> None:
    y, proba = _data()
    pred = proba.argmax(axis=1)
    m = clinical_metrics(y, proba, CLASSES, bootstrap=200)
    assert np.isclose(m.overall["balanced_accuracy"], balanced_accuracy_score(y, pred))
    assert np.isclose(m.overall["macro_f1"], f1_score(y, pred, average="macro"))
    for i, name in enumerate(CLASSES):
        assert np.isclose(m.per_class[name]["sensitivity"], recall_score(y == i, pred == i))
        assert np.isclose(m.per_class[name]["ppv"], precision_score(y == i, pred == i))
        negatives = y != i
        assert np.isclose(m.per_class[name]["specificity"], (pred[negatives] != i).mean())
    low, high = m.interval("balanced_accuracy")
    assert low <= m.overall["balanced_accuracy"] <= high
    assert 0.5 < m.overall["roc_auc_ovr_macro"] <= 1.0


def test_confusion_rows_are_truth() -> None:
    cm = confusion(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_ece_is_zero_for_calibrated_certainty() -> None:
    y = np.array([0, 1, 2])
    assert expected_calibration_error(y, np.eye(3)) == 0.0
    assert np.isclose(expected_calibration_error(y, np.eye(3)[[1, 2, 0]]), 1.0)


def test_confusion_plot_is_a_png(tmp_path: Path) -> None:
    path = plot_confusion_matrix(np.array([[5, 1], [2, 7]]), ["x", "y"], tmp_path / "cm.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_plot_is_written(tmp_path: Path) -> None:
    from medml.evaluate import plot_learning_curves, plot_reliability, plot_roc_curves

    y, proba = _data()
    history = {
        "loss": [1.0, 0.5],
        "val_loss": [1.1, 0.7],
        "accuracy": [0.4, 0.8],
        "val_accuracy": [0.3, 0.7],
    }
    paths = [
        plot_roc_curves(y, proba, CLASSES, tmp_path / "roc.png"),
        plot_reliability(y, proba, tmp_path / "rel.png"),
        plot_learning_curves([history, history], tmp_path / "curves.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:4] == b"\x89PNG"


class _Rows:
    """In-memory stand-in for :class:`medml.preprocess.ShardRows` (``gather`` and ``len``)."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        return self.images[positions]


def test_fold_models_score_every_batch_size_without_retracing_warnings() -> None:
    """Five fold models, each fed a full and a partial batch, as evaluate does with the holdout
    and the folds: the scores are the model's own, and TensorFlow's "triggered tf.function
    retracing" warning (it counts the K models as one function retraced K times) is not
    printed."""
    import logging

    from medml.evaluate import _predict_rows
    from medml.models import build_small_cnn, one_trace_per_model_is_expected

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    images = np.random.default_rng(0).integers(0, 256, (70, 16, 16, 3), dtype=np.uint8)
    try:
        with one_trace_per_model_is_expected():
            for fold in range(5):
                model = build_small_cnn((16, 16, 3), 3, name=f"fold_{fold}")
                for rows in (images, images[:13]):
                    scores = _predict_rows(model, _Rows(rows), batch_size=32)
                    expected = model.predict(rows, batch_size=32, verbose=0)
                    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "retracing" in r.getMessage()]
    assert not logger.filters  # the filter is gone after the block


def test_an_evaluation_without_an_operating_point_or_baseline_removes_the_old_ones(
    tmp_path: Path,
) -> None:
    """Evaluated again where there is no operating point (a recipe no longer binary) or no
    baseline (one training class): the earlier run's files go, so register cannot log them as
    this evaluation's."""
    from medml.evaluate import write_evaluation
    from medml.layout import EvaluationFiles
    from tests.integration.test_governance import _metrics

    metrics = _metrics(0.8)
    files = EvaluationFiles(tmp_path)
    extras = {
        "calibration": {},
        "conformal": {},
        "operating_point": {"threshold": 0.3},
        "baseline": {"x": 1},
    }
    write_evaluation(files, metrics, metrics, extras)
    assert files.operating_point.is_file() and files.baseline.is_file()
    written = write_evaluation(files, metrics, metrics, {**extras, "operating_point": None,
                                                         "baseline": None})  # fmt: skip
    assert not files.operating_point.exists() and not files.baseline.exists()
    assert files.metrics in written


def test_a_registered_versions_evidence_is_never_overwritten_by_another_evaluation(
    tmp_path: Path,
) -> None:
    """Evaluation logs onto its pipeline run; once a version was registered from that run, an
    evaluation whose evidence differs (other data or fold models in the same run) is refused,
    and the same evaluation again (a step re-run) passes."""
    import mlflow
    import pytest

    from medml.errors import RunError
    from medml.evaluate import keep_registered_evidence
    from medml.layout import EvaluationFiles
    from medml.tracking import Tracking

    tracking = Tracking.from_env()
    client = tracking.activate()
    files = EvaluationFiles(tmp_path / "evaluation")
    files.root.mkdir()
    files.metrics.write_text('{"balanced_accuracy": 0.81}')
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(files.metrics), artifact_path="evaluation")
    run_id = run.info.run_id
    keep_registered_evidence(tracking, run_id, files)  # nothing registered yet: free to log

    client.create_registered_model("m")
    client.create_model_version("m", f"runs:/{run_id}/model", run_id)
    keep_registered_evidence(tracking, run_id, files)  # the same evidence: a re-run
    files.metrics.write_text('{"balanced_accuracy": 0.93}')
    with pytest.raises(RunError, match=r"already registered m v1.*metrics.json.*never overwritten"):
        keep_registered_evidence(tracking, run_id, files)
    files.metrics.write_text('{"balanced_accuracy": 0.81}')
    files.baseline.write_text("{}")  # evidence the registered run does not hold
    with pytest.raises(RunError, match="baseline.json"):
        keep_registered_evidence(tracking, run_id, files)
