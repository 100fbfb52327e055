from __future__ import annotations

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
    with pytest.raises(ValueError, match="cannot decode image .*bad.jpg"):
        LoadImage(16, 1)(bad)


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
