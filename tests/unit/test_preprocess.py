from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from medml.config import Recipe
from medml.data.ingest import ingest
from medml.preprocess import LoadImage, load_images, load_index, preprocess
from medml.split import split


@pytest.mark.parametrize(
    ("image", "channels"),
    [
        (np.full((40, 30), 200, np.uint8), 1),
        (np.full((40, 30, 3), 100, np.uint8), 3),
        (np.full((40, 30, 4), 100, np.uint8), 1),  # RGBA
        (np.full((40, 30), 60000, np.uint16), 1),  # 16-bit
    ],
)
def test_load_image_normalises_shape_and_dtype(
    tmp_path: Path, image: np.ndarray, channels: int
) -> None:
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), image)
    for wanted in (1, 3):
        out = LoadImage(16, wanted)(path)
        assert out.shape == (16, 16, wanted) and out.dtype == np.uint8


def test_load_image_rejects_bad_arguments_and_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="channels must be 1 or 3, got 2"):
        LoadImage(16, 2)
    with pytest.raises(ValueError, match="size must be positive, got 0"):
        LoadImage(0, 1)
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    with pytest.raises(ValueError, match="bad.jpg does not decode as an image"):
        LoadImage(16, 1)(bad)
    bad.write_bytes(b"\xff\xd8\xff\xc0\x00\x11\x08\x02\x00\x02\x00\x01" + b"\0" * 20)
    with pytest.raises(ValueError, match="bad.jpg does not decode as an image"):  # a truncated JPEG
        LoadImage(16, 3)(bad)


def test_shards_round_trip_and_are_deterministic(
    phantom_dir: Path, tiny_recipe: Recipe, tmp_path: Path
) -> None:
    recipe = tiny_recipe.model_copy(
        update={"image": tiny_recipe.image.model_copy(update={"shard_size": 50})}
    )
    manifest = ingest(phantom_dir, tmp_path / "m.parquet", recipe).manifest
    splits = split(manifest, tmp_path / "splits.parquet", recipe).splits
    a = preprocess(splits, tmp_path / "a", recipe)
    b = preprocess(splits, tmp_path / "b", recipe)
    assert a.images == 120 and a.shards == 3
    for file in sorted(a.shards_dir.iterdir()):
        assert file.read_bytes() == (b.shards_dir / file.name).read_bytes(), file.name
    index = load_index(a.shards_dir)
    table = pd.read_parquet(splits)
    assert list(index["path"]) == list(table["path"])
    rows = index.iloc[[0, 55, 119]]
    images = load_images(a.shards_dir, rows)
    assert images.shape == (3, 32, 32, 1)
    expected = LoadImage(32, 1)(phantom_dir / rows.iloc[1]["path"])
    np.testing.assert_array_equal(images[1], expected)


def test_reduced_jpeg_decoding_matches_full_decode(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 255, (256, 256)).astype(np.uint8), (15, 15), 5)
    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    fast = LoadImage(64, 1)(path).astype(int)  # 1/4 DCT scale: the one path for a big JPEG
    full = LoadImage(64, 1)(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)).astype(int)
    assert np.abs(fast - full).mean() < 3  # same picture as decoding in full and resizing


def test_gray_jpeg_for_rgb_output_decodes_gray_and_writes_in_place(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 255, (256, 256)).astype(np.uint8), (9, 9), 3)
    path = tmp_path / "gray.jpg"
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    load = LoadImage(64, 3)
    through_colour = load(cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_4))  # libjpeg's BGR
    out = np.zeros((64, 64, 3), np.uint8)
    through_gray = load(path, out=out)  # the frame header says 1 component: decoded gray
    assert through_gray is out
    np.testing.assert_array_equal(through_gray, through_colour)
    assert (out[..., 0] == out[..., 2]).all()
    with pytest.raises(ValueError, match=r"out must be a C-contiguous uint8 array of shape"):
        load(path, out=np.zeros((64, 64, 3), np.float32))


def test_a_file_that_fails_to_decode_stops_preprocess_cleanly(
    phantom_dir: Path, tiny_recipe: Recipe, tmp_path: Path
) -> None:
    manifest = ingest(phantom_dir, tmp_path / "m.parquet", tiny_recipe).manifest
    splits = split(manifest, tmp_path / "splits.parquet", tiny_recipe).splits
    table = pd.read_parquet(splits)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    table.loc[70, ["root", "path"]] = [str(tmp_path), "broken.jpg"]
    table.to_parquet(splits, index=False)
    recipe = tiny_recipe.model_copy(
        update={"image": tiny_recipe.image.model_copy(update={"shard_size": 32})}
    )  # four shards, two of them in flight when row 70 fails
    open_files = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError, match="broken.jpg does not decode as an image"):
        preprocess(splits, tmp_path / "out" / "shards", recipe)
    assert list((tmp_path / "out").iterdir()) == []  # nothing half-written, no staging left
    assert len(os.listdir("/proc/self/fd")) == open_files  # every shard file closed


def test_letterbox_keeps_aspect_ratio(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), np.full((20, 80), 255, np.uint8))
    out = LoadImage(40, 1, aspect="letterbox")(path)[:, :, 0]
    assert out.shape == (40, 40)
    assert out[0].max() == 0 and out[20].min() == 255  # padded top, image in the middle
    clahe = LoadImage(40, 3, clahe=True)(path)
    assert clahe.shape == (40, 40, 3)
