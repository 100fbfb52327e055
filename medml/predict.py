"""Batch prediction with a registered model (``models:/NAME@champion``).

The model's own metadata (classes, image settings) drives preprocessing, so predictions use the
exact settings the model was trained with. The output CSV has one row per image: ``filename``,
``label`` (the predicted class, as seed 001's final ``test['label']``), one probability column
per class, and ``error`` for files that could not be read (they are not skipped silently).

A ``NAME@champion`` reference is used only when the audit trail backs the alias
(:func:`medml.promotion.champion_backed_by_audit`): a champion moved with the plain MLflow
client is refused, or with ``allow_unreviewed`` used with a warning. The checked version is
the one loaded (``models:/NAME/VERSION``), so the alias cannot move in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medml.data.layouts import LayoutError, read_csv_rows
from medml.errors import MedmlError
from medml.io import atomic_path
from medml.tracking import Tracking

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm"}


class PredictError(MedmlError, ValueError):
    """The model or the source cannot be used; the message says which and why."""


@dataclass(frozen=True)
class PredictResult:
    """What :func:`predict` wrote."""

    out: Path
    images: int
    failed: int
    warning: str = ""
    """Why the model was used although the audit trail does not back it (``allow_unreviewed``)."""


def list_inputs(source: Path, image_dir: Path | None = None) -> list[tuple[str, Path]]:
    """``(filename, path)`` pairs from a folder of images or a CSV with a ``filename`` column.

    For a CSV (Kvasir-Capsule's ``Testing_set.csv``), files are looked up in ``image_dir``,
    else in a ``test/`` folder next to the CSV, else next to the CSV.

    Raises:
        PredictError: the source does not exist, or the CSV has no ``filename`` column.
    """
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file()
                       and p.suffix.lower() in IMAGE_SUFFIXES)  # fmt: skip
        return [(p.relative_to(source).as_posix(), p) for p in files]
    if source.is_file() and source.suffix.lower() == ".csv":
        try:
            rows = read_csv_rows(source, ["filename"], hint="list the images to predict there")
        except LayoutError as err:
            raise PredictError(str(err)) from None
        names = [row["filename"].strip() for _, row in rows]
        base = image_dir or (source.parent / "test" if (source.parent / "test").is_dir()
                             else source.parent)  # fmt: skip
        return [(name, base / name) for name in names]
    raise PredictError(f"--source {source} is neither a folder of images nor a .csv file")


def predict(
    model_uri: str, source: Path, out: Path, *, tracking: Tracking, image_dir: Path | None = None,
    batch_size: int = 128, allow_unreviewed: bool = False,
) -> PredictResult:  # fmt: skip
    """Predict every image of ``source`` with the registered model and write ``out`` (CSV):
    ``filename``, ``label`` (argmax), for a binary recipe ``decision`` (the class decided at the
    registered operating point's threshold — the clinical decision), one ``p_<class>`` per
    class, ``prediction_set`` (the classes the model cannot rule out at the registered coverage,
    ``|``-separated) and ``refer`` (the set is not one class), and ``error``.

    The model is the pyfunc of :mod:`medml.serving`: its own preprocessing reads the files, so
    this gives exactly what ``mlflow models serve`` answers for the same images. A
    ``NAME@champion`` reference is checked first
    (:func:`medml.promotion.reviewed_model_uri`).

    Raises:
        PredictError: the model cannot be loaded or is not a medml classifier.
        UnreviewedChampion: the champion is not backed by the audit trail (exit 5), unless
            ``allow_unreviewed``.
    """
    from mlflow.exceptions import MlflowException

    from medml.serving import (
        DECISION_COLUMN,
        ERROR_COLUMN,
        LABEL_COLUMN,
        PATH_COLUMN,
        REFER_COLUMN,
        SET_COLUMN,
        load_classifier,
        probability_column,
    )

    tracking.activate()
    from medml.promotion import reviewed_model_uri

    model_uri, warning = reviewed_model_uri(model_uri, tracking, allow_unreviewed=allow_unreviewed)
    try:
        model = load_classifier(model_uri)
    except (MlflowException, OSError, ValueError) as err:
        raise PredictError(f"cannot load {model_uri} from {tracking.uri}: {err}") from None
    inputs = list_inputs(source, image_dir)
    tables = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        answer = model.predict(None, pd.DataFrame({PATH_COLUMN: [str(p) for _, p in chunk]}))
        answer.insert(0, "filename", [name for name, _ in chunk])
        tables.append(answer)
    table = pd.concat(tables, ignore_index=True) if tables else model.table(
        np.empty((0, len(model.classes))), []
    ).assign(filename=[])  # fmt: skip
    decision = [DECISION_COLUMN] if model.operating_point else []  # binary: at the threshold
    sets = [SET_COLUMN, REFER_COLUMN] if model.prediction_sets is not None else []
    columns = ["filename", LABEL_COLUMN, *decision, *map(probability_column, model.classes),
               *sets, ERROR_COLUMN]  # fmt: skip
    table = table[columns]
    with atomic_path(Path(out)) as tmp:
        table.to_csv(tmp, index=False)
    failed = int((table[ERROR_COLUMN] != "").sum())
    return PredictResult(Path(out), len(table), failed, warning)
