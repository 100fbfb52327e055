"""What the served model answers is strict JSON: a failed row has null probabilities (not NaN),
an empty request an empty answer, and a request without an image column a message that says
why (issue: bare NaN in HTTP 200 answers; "got ['image']" for a zero-row request)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from medml.preprocess import LoadImage
from medml.serving import MedmlClassifier


@pytest.fixture(scope="module")
def classifier() -> MedmlClassifier:
    """The served class with a real (tiny, untrained) Keras ensemble and real preprocessing."""
    import keras

    model = MedmlClassifier()
    model.classes = ["a", "b"]
    model.load = LoadImage(16, 3)
    model.operating_point = {"positive_class": "b", "threshold": 0.5}
    model.ensemble = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255),
                                       keras.layers.GlobalAveragePooling2D(),
                                       keras.layers.Dense(2, activation="softmax")])  # fmt: skip
    return model


def _strict(table: pd.DataFrame) -> list[dict]:
    """What a strict JSON parser receives (MLflow's scoring server sends records)."""
    return json.loads(json.dumps(table.to_dict(orient="records"), allow_nan=False))


def test_a_failed_row_has_null_probabilities_and_the_rest_are_numbers(classifier) -> None:
    _, png = cv2.imencode(".png", np.full((20, 20), 128, np.uint8))
    answer = classifier.predict(None, pd.DataFrame({"image": [png.tobytes(), b"not an image"]}))
    good, bad = _strict(answer)
    assert isinstance(good["p_a"], float) and good["error"] == "" and good["decision"] in "ab"
    assert bad["p_a"] is None and bad["p_b"] is None and bad["label"] == ""
    assert bad["decision"] == "" and "does not decode as an image" in bad["error"]


def test_an_empty_request_gets_an_empty_answer(classifier) -> None:
    answer = classifier.predict(None, pd.DataFrame({"image": []}))
    assert len(answer) == 0 and list(answer.columns) == ["label", "p_a", "p_b", "decision",
                                                         "error"]  # fmt: skip


def test_a_request_without_an_image_column_says_what_is_needed(classifier) -> None:
    with pytest.raises(ValueError, match="misspelt column arrives as no column at all"):
        classifier.predict(None, pd.DataFrame({"imgae": ["x"]}))
