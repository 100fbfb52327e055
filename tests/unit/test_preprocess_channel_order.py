"""``LoadImage`` resizes a grey image before expanding it to RGB (a third of the resize work);
the bytes must be those of the old order, grey → RGB → CLAHE/resize, for every input kind."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from medml.preprocess import LoadImage, _clahe, _convert_channels, _letterbox, _to_uint8

SIZES = (128, 224, 336)


def _expand_then_resize(load: LoadImage, decoded: np.ndarray) -> np.ndarray:
    """``LoadImage.__call__`` as it was: channels converted first, then CLAHE and resizing."""
    image = _convert_channels(_to_uint8(decoded), load.channels)
    if load.clahe:
        image = _clahe(image)
    if load.aspect == "letterbox":
        image = _letterbox(image, load.size)
    elif image.shape[:2] != (load.size, load.size):
        shrink = image.shape[0] > load.size or image.shape[1] > load.size
        image = cv2.resize(
            image,
            (load.size, load.size),
            interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
        )
    return image.reshape(load.size, load.size, load.channels)


def _inputs() -> dict[str, np.ndarray]:
    """Random pixels of odd sizes: larger than every output (INTER_AREA), between the outputs,
    smaller than every output (INTER_LINEAR), an exact multiple, and each decoded layout."""
    rng = np.random.default_rng(26)
    images: dict[str, np.ndarray] = {}
    for height, width in ((517, 389), (301, 263), (97, 113), (672, 448)):
        images[f"grey {height}x{width}"] = rng.integers(0, 256, (height, width), dtype=np.uint8)
    images["grey hxwx1"] = rng.integers(0, 256, (411, 359, 1), dtype=np.uint8)
    images["grey + alpha"] = rng.integers(0, 256, (277, 431, 2), dtype=np.uint8)
    images["16-bit grey"] = rng.integers(0, 4096, (389, 517), dtype=np.uint16)  # DICOM-like
    images["float grey"] = rng.normal(40.0, 400.0, (203, 251)).astype(np.float32)  # HU-like
    images["BGR"] = rng.integers(0, 256, (343, 299, 3), dtype=np.uint8)
    images["BGRA"] = rng.integers(0, 256, (299, 343, 4), dtype=np.uint8)
    images["16-bit BGR"] = rng.integers(0, 65536, (221, 187, 3), dtype=np.uint16)
    return images


INPUTS = _inputs()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize(
    ("aspect", "clahe"), [("resize", False), ("resize", True), ("letterbox", False)]
)
def test_resizing_before_expanding_gives_the_same_bytes(
    size: int, channels: int, aspect: str, clahe: bool
) -> None:
    load = LoadImage(size, channels, aspect=aspect, clahe=clahe)
    for name, image in INPUTS.items():
        expected = _expand_then_resize(load, image)
        out = np.full((size, size, channels), 7, np.uint8)
        assert load(image, out=out) is out
        assert out.tobytes() == expected.tobytes(), name
        assert load(image).tobytes() == expected.tobytes(), name


def test_dicom_and_grey_files_give_the_same_bytes(tmp_path: Path) -> None:
    """Decoded files (a CT DICOM slice, a 16-bit PNG, a grey JPEG), through ``decode``."""
    from medml.data.synthetic import synth_kidney_ct_dicom

    dicom = synth_kidney_ct_dicom(tmp_path / "dicom", n=8, seed=0, image_size=150).root
    files = sorted(dicom.rglob("*.dcm"))[:2]
    rng = np.random.default_rng(7)
    png16, jpeg = tmp_path / "sixteen.png", tmp_path / "grey.jpg"
    cv2.imwrite(str(png16), rng.integers(0, 65536, (353, 271), dtype=np.uint16))
    cv2.imwrite(str(jpeg), rng.integers(0, 256, (263, 301), dtype=np.uint8))
    for size in SIZES:
        for windows in (("abdomen",), ("abdomen", "bone", "lung")):
            load = LoadImage(size, 3, ct_windows=windows)
            for path in [*files, png16, jpeg]:
                expected = _expand_then_resize(load, load.decode(path))
                assert load(path).tobytes() == expected.tobytes(), (path.name, windows)


def test_a_grey_image_is_resized_as_one_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, ...]] = []
    resize = cv2.resize

    def spy(image: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
        seen.append(image.shape)
        return resize(image, *args, **kwargs)

    monkeypatch.setattr(cv2, "resize", spy)
    out = LoadImage(128, 3)(INPUTS["grey 517x389"])
    assert seen == [(517, 389)] and out.shape == (128, 128, 3)
