"""The registered model: the fold ensemble *and* medml's preprocessing, as one MLflow pyfunc.

Raw images in, a table out. Input is a DataFrame with one of the columns

- ``image``: the encoded file (JPEG, PNG, BMP, TIFF, DICOM …) as base64 text (what
  ``mlflow models serve`` receives as JSON) or as raw ``bytes``; in Python
  (``MedmlClassifier.predict``), also decoded pixel arrays of any size;
- ``path``: a file path readable where the model runs;

and optionally ``frame``: which frame of a multi-frame DICOM / multi-page TIFF (default 0);

and the output has one row per input: ``label`` (the predicted class), ``p_<class>`` for every
class (calibrated: the temperature fitted on the fold models' average is inside the ensemble),
for binary recipes with an operating point ``decision`` (the class decided at the threshold
chosen for the recipe's target sensitivity), ``prediction_set`` (the classes it cannot rule
out: a set that holds the true class with probability >= 1 - alpha for every class,
:mod:`medml.conformal`; ``|``-separated) and ``refer`` (true unless the set is exactly the one
class called: the ``decision`` of a binary recipe, else the ``label``), and ``error`` (empty,
or why that image could not be read; its probabilities are then empty). Every image goes
through :class:`~medml.preprocess.LoadImage` with the image settings the model was trained
with, so serving sees exactly the pixels training saw.

Serve it with MLflow's own server::

    mlflow models serve -m "models:/kidney-ct-classifier@champion" --env-manager local -p 5001
    printf '{"dataframe_split": {"columns": ["image"], "data": [["%s"]]}}' \\
      "$(base64 -w0 x.png)" | curl -s 127.0.0.1:5001/invocations \\
      -H 'Content-Type: application/json' -d @-
"""

from __future__ import annotations

import base64
import binascii
import importlib.metadata
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from medml.conformal import ClassConditionalSets

if TYPE_CHECKING:
    from medml.tracking import Tracking

IMAGE_COLUMN = "image"
PATH_COLUMN = "path"
FRAME_COLUMN = "frame"
ERROR_COLUMN = "error"
DECISION_COLUMN = "decision"
SET_COLUMN = "prediction_set"
REFER_COLUMN = "refer"
LABEL_COLUMN = "label"
PREDICT_BATCH = 64

# What the served model imports; pinned to the versions installed from uv.lock.
_SERVING_DISTRIBUTIONS = ("mlflow", "keras", "numpy", "pandas", "opencv-python-headless",
                          "pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg",
                          "pylibjpeg-rle", "pillow", "pydantic", "pyyaml", "tqdm")  # fmt: skip


def probability_column(name: str) -> str:
    """The output column of class ``name``'s probability."""
    return f"p_{name}"


def pinned_requirements() -> list[str]:
    """``name==version`` of what serving needs, as installed here (from ``uv.lock``)."""
    tensorflow = "tensorflow-cpu" if _installed("tensorflow-cpu") else "tensorflow"
    names = [*_SERVING_DISTRIBUTIONS, tensorflow]
    return [f"{name}=={_installed(name)}" for name in names if _installed(name)]


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


class MedmlClassifier(mlflow.pyfunc.PythonModel):
    """MLflow ``PythonModel``: decode + preprocess each image, average the fold models."""

    operating_point: dict[str, Any] | None = None  # binary recipes: set by load_context
    prediction_sets: ClassConditionalSets | None = None  # set by load_context (newer models)

    def load_context(self, context: Any) -> None:
        """Load the ensemble and the preprocessing settings from the model's artifacts."""
        from medml.config import ImageConfig
        from medml.models import load_ensemble
        from medml.preprocess import LoadImage

        settings = json.loads(Path(context.artifacts["preprocessing"]).read_text())
        self.classes: list[str] = list(settings["classes"])
        self.load = LoadImage.from_config(ImageConfig.model_validate(settings["image"]))
        self.ensemble = load_ensemble(Path(context.artifacts["ensemble"]))
        self.operating_point = settings.get("operating_point")
        sets = settings.get("prediction_sets")
        self.prediction_sets = ClassConditionalSets.from_serving(sets) if sets else None

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        """One output row per input row (see the module docstring)."""
        if len(model_input) == 0:  # an empty request gets an empty answer, not an error
            return self.table(np.empty((0, len(self.classes))), [])
        sources, names = _sources(model_input)
        frames = _frames(model_input)
        pixels: list[np.ndarray] = []
        decoded: list[int] = []
        errors = [""] * len(sources)
        for i, (source, name, frame) in enumerate(zip(sources, names, frames, strict=True)):
            try:
                pixels.append(self.load(source, name=name, frame=frame))
                decoded.append(i)
            except ValueError as err:
                errors[i] = str(err)
        proba = np.full((len(sources), len(self.classes)), np.nan)
        if pixels:
            proba[decoded] = self.predict_pixels(np.stack(pixels))
        return self.table(proba, errors)

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities of already preprocessed uint8 images ``(n, size, size, c)``."""
        return np.asarray(self.ensemble.predict(pixels, batch_size=PREDICT_BATCH, verbose=0))

    def table(self, proba: np.ndarray, errors: Sequence[str]) -> pd.DataFrame:
        """The output table for these probabilities (rows with an error get no label)."""
        labels = [self.classes[int(row.argmax())] if not error else ""
                  for row, error in zip(proba, errors, strict=True)]  # fmt: skip
        table = pd.DataFrame({LABEL_COLUMN: labels})
        for k, name in enumerate(self.classes):  # a row that failed has no probabilities:
            column = proba[:, k]  # null in JSON (NaN is not JSON), empty in a CSV
            table[probability_column(name)] = (
                pd.Series([None if error else float(p)
                           for p, error in zip(column, errors, strict=True)], dtype=object)
                if any(errors) else column
            )  # fmt: skip
        point = self.operating_point
        if point:  # binary recipes: the decision at the clinical operating point
            positive = point["positive_class"]
            negative = next(c for c in self.classes if c != positive)
            p_positive = proba[:, self.classes.index(positive)]
            table[DECISION_COLUMN] = [
                "" if error else (positive if p >= point["threshold"] else negative)
                for p, error in zip(p_positive, errors, strict=True)
            ]
        if self.prediction_sets is not None:  # the classes it cannot rule out, per image
            named = self.prediction_sets.labels(np.nan_to_num(proba, nan=0.0))
            called = table[DECISION_COLUMN] if DECISION_COLUMN in table else table[LABEL_COLUMN]
            table[SET_COLUMN] = ["" if error else s for s, error in zip(named, errors, strict=True)]
            table[REFER_COLUMN] = [  # unless the set is exactly the call made
                None if error else s != call
                for s, call, error in zip(named, called, errors, strict=True)
            ]
        table[ERROR_COLUMN] = list(errors)
        return table


def _sources(frame: pd.DataFrame) -> tuple[list[bytes | str | np.ndarray], list[str]]:
    """The images of the input table: base64 text, bytes or decoded pixel arrays (any size;
    the Python API), or paths."""
    if IMAGE_COLUMN in frame and frame[IMAGE_COLUMN].notna().any():
        sources: list[bytes | str | np.ndarray] = []
        for value in frame[IMAGE_COLUMN]:
            sources.append(value if isinstance(value, bytes | np.ndarray) else _b64(value))
        return sources, [f"row {i}" for i in range(len(sources))]
    if PATH_COLUMN in frame:
        paths = [str(p) for p in frame[PATH_COLUMN]]
        return list(paths), paths
    raise ValueError(
        f"input needs a column {IMAGE_COLUMN!r} (base64 or bytes) or {PATH_COLUMN!r} (file "
        f"paths) with values; got columns {list(frame.columns)} (a served model drops columns "
        "its signature does not name, so a misspelt column arrives as no column at all)"
    )


def _frames(frame: pd.DataFrame) -> list[int]:
    if FRAME_COLUMN not in frame:
        return [0] * len(frame)
    return [int(v) if pd.notna(v) else 0 for v in frame[FRAME_COLUMN]]


def _b64(value: Any) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        return b""  # LoadImage reports it as undecodable, for this row only


def signature(classes: Sequence[str], *, decision: bool = False, sets: bool = False) -> Any:
    """The model signature: ``image`` or ``path`` in; label, probabilities (with an operating
    point, the decision at it; with prediction sets, the set and whether to refer) and error
    out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    inputs = Schema([ColSpec(DataType.string, IMAGE_COLUMN, required=False),
                     ColSpec(DataType.string, PATH_COLUMN, required=False),
                     ColSpec(DataType.long, FRAME_COLUMN, required=False)])  # fmt: skip
    outputs = Schema([ColSpec(DataType.string, LABEL_COLUMN),
                      *[ColSpec(DataType.double, probability_column(c)) for c in classes],
                      *([ColSpec(DataType.string, DECISION_COLUMN)] if decision else []),
                      *([ColSpec(DataType.string, SET_COLUMN),
                         ColSpec(DataType.boolean, REFER_COLUMN, required=False)]
                        if sets else []),
                      ColSpec(DataType.string, ERROR_COLUMN)])  # fmt: skip
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(size: int = 32) -> pd.DataFrame:
    """One small gray PNG, base64-encoded, as the logged input example."""
    import cv2

    ramp = np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))
    ok, encoded = cv2.imencode(".png", ramp)
    assert ok
    return pd.DataFrame({IMAGE_COLUMN: [base64.b64encode(encoded.tobytes()).decode()]})


def log_classifier(
    ensemble_path: Path, classes: Sequence[str], image: dict[str, Any], *, name: str,
    registered_model_name: str | None, tags: dict[str, str] | None = None,
    operating_point: dict[str, Any] | None = None, prediction_sets: dict[str, Any] | None = None,
) -> Any:  # fmt: skip
    """Log the pyfunc model into the active MLflow run (registering a version if a registered
    name is given); returns MLflow's ``ModelInfo``.

    Args:
        operating_point: ``{"positive_class", "threshold"}`` of a binary recipe: the model then
            also returns the ``decision`` at that threshold.
        prediction_sets: the class-conditional sets' rule
            (:meth:`medml.conformal.ClassConditionalSets.serving`): the model then also
            returns each image's ``prediction_set`` and ``refer``.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        settings = Path(scratch) / "preprocessing.json"
        content = {"classes": list(classes), "image": image, "operating_point": operating_point,
                   "prediction_sets": prediction_sets}  # fmt: skip
        settings.write_text(json.dumps(content, indent=2))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("serving_entry.py")),  # no pickle
            artifacts={"ensemble": str(ensemble_path), "preprocessing": str(settings)},
            code_paths=[str(Path(__file__).resolve().parent)],
            signature=signature(
                classes, decision=operating_point is not None, sets=prediction_sets is not None
            ),  # fmt: skip
            input_example=input_example(),
            pip_requirements=pinned_requirements(),
            registered_model_name=registered_model_name,
            tags=tags,
            metadata={"classes": list(classes), "image": image},
        )


def load_classifier(
    model_uri: str, *, tracking: Tracking | None = None, allow_unreviewed: bool = False
) -> MedmlClassifier:
    """The registered model's :class:`MedmlClassifier` (its Python object, for in-process use).

    Given the registry (``tracking``), a ``NAME@champion`` reference is checked against the
    audit trail first and the checked version is loaded
    (:func:`medml.promotion.reviewed_model_uri`); ``allow_unreviewed`` warns instead of refusing.

    Raises:
        ValueError: the model is not a medml classifier.
        UnreviewedChampion: the champion is not backed by the audit trail.
    """
    if tracking is not None:
        import warnings

        from medml.promotion import reviewed_model_uri

        model_uri, weakened = reviewed_model_uri(model_uri, tracking,
                                                 allow_unreviewed=allow_unreviewed)  # fmt: skip
        if weakened:
            warnings.warn(weakened, stacklevel=2)
    model = mlflow.pyfunc.load_model(model_uri)
    inner = model.unwrap_python_model()
    if type(inner).__name__ != MedmlClassifier.__name__:  # the model bundles its own copy
        raise ValueError(f"{model_uri} is not a medml classifier (no preprocessing inside)")
    return inner
