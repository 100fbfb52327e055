"""Batch prediction with a registered model (``models:/NAME@champion``).

The model's own metadata (classes, image settings) drives preprocessing, so predictions use the
exact settings the model was trained with. The output CSV has one row per image: ``filename``,
``label`` (the predicted class, as seed 001's final ``test['label']``), one probability column
per class, and ``error`` for files that could not be read (they are not skipped silently).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medml.config import ImageConfig
from medml.errors import MedmlError
from medml.io import atomic_path
from medml.preprocess import LoadImage
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
        with open(source, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if "filename" not in (reader.fieldnames or []):
                raise PredictError(f"{source} has no 'filename' column (found {reader.fieldnames})")
            names = [row["filename"].strip() for row in reader]
        base = image_dir or (source.parent / "test" if (source.parent / "test").is_dir()
                             else source.parent)  # fmt: skip
        return [(name, base / name) for name in names]
    raise PredictError(f"--source {source} is neither a folder of images nor a .csv file")


def predict(
    model_uri: str, source: Path, out: Path, *, tracking: Tracking, image_dir: Path | None = None,
    batch_size: int = 128,
) -> PredictResult:  # fmt: skip
    """Predict every image of ``source`` with ``model_uri`` and write ``out`` (CSV).

    Raises:
        PredictError: the model cannot be loaded or has no medml metadata.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking.activate()
    try:
        info = mlflow.models.get_model_info(model_uri)
        model = mlflow.keras.load_model(model_uri)
    except (MlflowException, OSError) as err:
        raise PredictError(f"cannot load {model_uri}: {err}") from None
    metadata = info.metadata or {}
    if "classes" not in metadata or "image" not in metadata:
        raise PredictError(f"{model_uri} was not registered by medml (no classes/image metadata)")
    classes = list(metadata["classes"])
    load = LoadImage.from_config(ImageConfig.model_validate(metadata["image"]))
    inputs = list_inputs(source, image_dir)
    rows: list[dict[str, object]] = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        images, ok = [], []
        for name, path in chunk:
            try:
                images.append(load(path))
                ok.append(name)
            except (ValueError, OSError) as err:
                rows.append({"filename": name, "label": "", "error": str(err)})
        if images:
            proba = model.predict(np.stack(images), verbose=0)
            for name, p in zip(ok, proba, strict=True):
                rows.append(
                    {
                        "filename": name,
                        "label": classes[int(p.argmax())],
                        "error": "",
                        **{f"p_{c}": float(v) for c, v in zip(classes, p, strict=True)},
                    }
                )
    order = {name: i for i, (name, _) in enumerate(inputs)}
    table = pd.DataFrame(rows, columns=["filename", "label", *[f"p_{c}" for c in classes], "error"])
    table = table.sort_values("filename", key=lambda s: s.map(order)).reset_index(drop=True)
    with atomic_path(Path(out)) as tmp:
        table.to_csv(tmp, index=False)
    return PredictResult(Path(out), len(table), int((table["error"] != "").sum()))
