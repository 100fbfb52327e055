"""The registered model is servable by MLflow's own server, on raw images, and answers what
`medml predict` answers for the same files."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from medml import pipeline, runs
from medml.tracking import Tracking
from tests.conftest import TINY, _free_port, venv_env

pytestmark = [pytest.mark.slow, pytest.mark.integration]
NAME = "kidney-ct-classifier"


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read(), parse_constant=_not_json)  # strict: no NaN


def _not_json(constant: str) -> None:
    raise AssertionError(f"the answer holds {constant}, which is not JSON")


def test_mlflow_models_serve_answers_raw_jpeg_png_and_dicom(
    phantom_dir: Path, tmp_path: Path
) -> None:
    import cv2

    from medml.data.synthetic import synth_kidney_ct_dicom

    gate_off = (
        "registry.gate.require_better_than_chance=false",
        "registry.gate.thresholds.balanced_accuracy.min=0",
    )
    ctx = runs.init_run(tmp_path / "run", phantom_dir, "kidney-ct", overrides=[*TINY, *gate_off])
    tracking = Tracking.from_env()
    pipeline.run_all(ctx, tracking, echo=lambda _: None)

    images = tmp_path / "images"
    images.mkdir()
    jpeg = sorted((phantom_dir / "Stone").glob("*.jpg"))[0]
    (images / "a.jpg").write_bytes(jpeg.read_bytes())
    cv2.imwrite(str(images / "b.png"), cv2.imread(str(jpeg), cv2.IMREAD_GRAYSCALE))
    dicom = synth_kidney_ct_dicom(tmp_path / "dicom", n=8, seed=1, image_size=64).root
    (images / "c.dcm").write_bytes(sorted(dicom.rglob("*.dcm"))[0].read_bytes())
    files = sorted(images.iterdir())

    env = {**venv_env(), "MLFLOW_TRACKING_URI": tracking.uri}
    out = tmp_path / "predictions.csv"
    predicted = subprocess.run(
        ["medml", "predict", "--model", f"{NAME}@challenger", "--source", str(images),
         "--out", str(out)], env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    expected = pd.read_csv(out)

    port = _free_port()
    server = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", f"models:/{NAME}@challenger", "--env-manager",
         "local", "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except (urllib.error.URLError, OSError):
                assert server.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(1)
        payload = {"dataframe_split": {
            "columns": ["image"],
            "data": [[base64.b64encode(f.read_bytes()).decode()] for f in files],
        }}  # fmt: skip
        url = f"http://127.0.0.1:{port}/invocations"
        answer = pd.DataFrame(_post(url, payload)["predictions"])
        garbage = {"dataframe_split": {"columns": ["image"], "data": [["bm90IGFuIGltYWdl"]]}}
        broken = pd.DataFrame(_post(url, garbage)["predictions"])  # "not an image"
        empty = _post(url, {"dataframe_split": {"columns": ["image"], "data": []}})
    finally:
        server.terminate()
        server.wait(timeout=30)
    classes = ctx.recipe.data.classes
    assert list(answer.columns) == ["label", *[f"p_{c}" for c in classes], "prediction_set",
                                    "refer", "error"]  # fmt: skip
    assert (answer["error"] == "").all() and list(answer["label"]) == list(expected["label"])
    for column in [f"p_{c}" for c in classes]:
        assert (answer[column] - expected[column]).abs().max() < 1e-5, column
    sets = expected["prediction_set"].fillna("")  # an empty set is an empty CSV cell
    assert answer["prediction_set"].tolist() == sets.tolist()
    assert answer["refer"].tolist() == expected["refer"].tolist()
    assert broken["label"].tolist() == [""] and "does not decode as an image" in broken["error"][0]
    assert broken[f"p_{classes[0]}"].isna().all()  # null in the JSON, not NaN
    assert broken["prediction_set"].tolist() == [""] and broken["refer"].isna().all()
    assert empty["predictions"] == []
