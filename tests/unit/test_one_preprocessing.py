"""One preprocessing for training and serving: the same bytes give the same array in the shards
(training, evaluation), in ``medml predict`` (file paths) and in the served model (base64 bytes),
over a corpus of formats that used to differ: large and small JPEGs, EXIF orientation, a PNG
named ``.jpg``, 16-bit PNG, grayscale JPEG for RGB, BMP, TIFF and DICOM."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medml.config import ImageConfig, load_recipe
from medml.preprocess import LoadImage, load_images, load_index, preprocess
from medml.serving import IMAGE_COLUMN, PATH_COLUMN, MedmlClassifier


def _texture(
    height: int, width: int, channels: int, seed: int, dtype: type = np.uint8
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 65535 if dtype == np.uint16 else 255
    image = rng.integers(0, top, (height, width, channels)).astype(np.float32)
    image = cv2.GaussianBlur(image, (21, 21), 6).reshape(height, width, channels)
    image[: height // 5, : width // 3] = top  # an asymmetric mark: orientation shows
    return np.clip(image, 0, top).astype(dtype)


def _exif_jpeg(path: Path, image: np.ndarray, orientation: int) -> None:
    pil = Image.fromarray(image[:, :, ::-1])
    exif = pil.getexif()
    exif[0x0112] = orientation
    pil.save(path, "JPEG", exif=exif.tobytes(), quality=92)


def _corpus(root: Path) -> dict[str, Path]:
    from medml.data.synthetic import synth_kidney_ct_dicom

    root.mkdir(parents=True)
    files = {
        "large.jpg": lambda p: cv2.imwrite(str(p), _texture(512, 640, 3, 1)),
        "small.jpg": lambda p: cv2.imwrite(str(p), _texture(48, 40, 3, 2)),
        "gray-large.jpg": lambda p: cv2.imwrite(str(p), _texture(400, 400, 1, 3)[:, :, 0]),
        "exif-rotated-large.jpg": lambda p: _exif_jpeg(p, _texture(480, 640, 3, 4), 6),
        "exif-rotated-small.jpg": lambda p: _exif_jpeg(p, _texture(60, 80, 3, 5), 8),
        "png-named.jpg": lambda p: p.write_bytes(cv2.imencode(".png", _texture(300, 300, 3, 6))[1]),
        "sixteen-bit.png": lambda p: cv2.imwrite(str(p), _texture(200, 180, 1, 7, np.uint16)),
        "image.bmp": lambda p: cv2.imwrite(str(p), _texture(90, 120, 3, 8)),
        "image.tiff": lambda p: cv2.imwrite(str(p), _texture(130, 100, 3, 9)),
    }
    paths = {}
    for name, write in files.items():
        write(root / name)
        paths[name] = root / name
    dicom = synth_kidney_ct_dicom(root / "dicom", n=8, seed=0, image_size=96).root
    paths["slice.dcm"] = sorted(dicom.rglob("*.dcm"))[0]
    return paths


class _Capture(MedmlClassifier):
    """The served model's own code path, remembering the pixels it hands to the ensemble."""

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        self.seen = pixels.copy()
        return np.full((len(pixels), len(self.classes)), 1 / len(self.classes))


@pytest.mark.parametrize(("size", "channels"), [(64, 3), (64, 1), (32, 3)])
def test_training_prediction_and_serving_see_the_same_pixels(
    tmp_path: Path, size: int, channels: int
) -> None:
    corpus = _corpus(tmp_path / "corpus")
    recipe = load_recipe(
        "kidney-ct", overrides=[f"image.size={size}", f"image.channels={channels}"]
    )
    names = list(corpus)
    splits = tmp_path / "splits.parquet"
    pd.DataFrame({
        "path": names, "root": [str(corpus[n].parent) for n in names], "label": "Normal",
        "label_index": 0, "group": names, "sha256": names, "split": "train", "fold": 0,
    }).assign(path=[corpus[n].name for n in names]).to_parquet(splits)  # fmt: skip
    shards = preprocess(splits, tmp_path / "shards", recipe).shards_dir
    trained = load_images(shards, load_index(shards))

    served = _Capture()
    served.classes = list(recipe.data.classes)
    served.load = LoadImage.from_config(ImageConfig.model_validate(recipe.image.model_dump()))
    encoded = [base64.b64encode(corpus[n].read_bytes()).decode() for n in names]
    answer = served.predict(None, pd.DataFrame({IMAGE_COLUMN: encoded}))
    assert (answer["error"] == "").all(), answer["error"].tolist()
    from_bytes = served.seen
    served.predict(None, pd.DataFrame({PATH_COLUMN: [str(corpus[n]) for n in names]}))
    from_paths = served.seen
    for i, name in enumerate(names):
        np.testing.assert_array_equal(trained[i], from_bytes[i], err_msg=f"{name}: train vs serve")
        np.testing.assert_array_equal(trained[i], from_paths[i], err_msg=f"{name}: via path")


def test_exif_orientation_is_applied_at_every_size(tmp_path: Path) -> None:
    """The mark in the top-left corner moves where the EXIF tag says, whether the JPEG is large
    (decoded at reduced scale) or small (decoded in full): one rule for both paths."""
    for name, shape in (("big.jpg", (480, 640)), ("small.jpg", (60, 80))):
        image = _texture(*shape, 3, 4)
        _exif_jpeg(tmp_path / name, image, 6)  # rotate 90° clockwise to display
        out = LoadImage(32, 1)(tmp_path / name)[:, :, 0].astype(int)
        top_right, top_left = out[:6, -10:].mean(), out[:6, :10].mean()
        assert top_right > top_left + 40, name  # the mark is now top-right


def test_a_png_named_jpg_decodes_as_the_png_it_is(tmp_path: Path) -> None:
    image = _texture(300, 300, 1, 6)[:, :, 0]
    (tmp_path / "x.jpg").write_bytes(cv2.imencode(".png", image)[1].tobytes())
    via_name = LoadImage(64, 1)(tmp_path / "x.jpg")[:, :, 0]
    direct = cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(via_name, direct)


def test_reduced_jpeg_decode_stays_within_the_stated_tolerance(tmp_path: Path) -> None:
    """Large JPEGs are decoded at 1/2-1/8 DCT scale (fast); against decoding in full and
    resizing, the difference is measured here: mean < 1.5 grey levels, 99th pct < 8."""
    pixels = _texture(512, 512, 3, 11)
    buffer = io.BytesIO()
    Image.fromarray(pixels[:, :, ::-1]).save(buffer, "JPEG", quality=92)
    fast = LoadImage(64, 3)(buffer.getvalue()).astype(int)
    full = cv2.imdecode(np.frombuffer(buffer.getvalue(), np.uint8), cv2.IMREAD_COLOR)
    slow = LoadImage(64, 3)(full).astype(int)
    difference = np.abs(fast - slow)
    assert difference.mean() < 1.5 and np.percentile(difference, 99) < 8
