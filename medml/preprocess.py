"""Preprocess: decode, convert and resize images with OpenCV into fixed-size shards.

Images are decoded in parallel threads (OpenCV releases the GIL) and written one shard at a
time, so peak memory is two shards (one decoding, one being written), not the dataset.
Output layout (deterministic bytes for the same inputs and settings, so DVC caches it)::

    shards/
      meta.json             size, channels, classes, shard names
      index.parquet         one row per image: path, label_index, split, fold, shard, offset
      shard-00000.npy       uint8 array (n, size, size, channels)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medml.config import ImageConfig, Recipe
from medml.data.images import read_image
from medml.data.ingest import absolute_paths
from medml.io import atomic_path, read_json, write_json


@dataclass(frozen=True)
class PreprocessResult:
    """What :func:`preprocess` wrote."""

    shards_dir: Path
    images: int
    shards: int


class LoadImage:
    """Decode an image file (raster or DICOM) to uint8 with the wanted channels and size.

    Args:
        size: output side in pixels (square output).
        channels: 1 (grayscale) or 3 (RGB).
        aspect: ``resize`` stretches to the square; ``letterbox`` keeps the aspect ratio and
            pads the short side with black.
        clahe: apply contrast-limited adaptive histogram equalisation (per channel).
        window_center: CT window centre in HU, for DICOM.
        window_width: CT window width in HU, for DICOM.

    Raises:
        ValueError: bad ``size``, ``channels`` or ``aspect``.
    """

    def __init__(
        self, size: int, channels: int, *, aspect: str = "resize", clahe: bool = False,
        window_center: float = 40.0, window_width: float = 400.0,
    ) -> None:  # fmt: skip
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if aspect not in ("resize", "letterbox"):
            raise ValueError(f"aspect must be 'resize' or 'letterbox', got {aspect!r}")
        self.size = size
        self.channels = channels
        self.aspect = aspect
        self.clahe = clahe
        self.window_center = window_center
        self.window_width = window_width

    @classmethod
    def from_config(cls, config: ImageConfig) -> LoadImage:
        """Build from the recipe's ``image`` section."""
        return cls(
            config.size,
            config.channels,
            aspect=config.aspect,
            clahe=config.clahe,
            window_center=config.window_center,
            window_width=config.window_width,
        )

    def __call__(self, path: Path, *, source_shape: tuple[int, int] | None = None) -> np.ndarray:
        """Return an array of shape ``(size, size, channels)``.

        Args:
            path: the image file.
            source_shape: ``(width, height)`` from the manifest, if known. Large JPEGs are then
                decoded directly at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), which is
                several times faster than decoding full size and resizing.

        Raises:
            ValueError: the file cannot be decoded.
        """
        image = self._reduced_jpeg(Path(path), source_shape)
        if image is None:
            image = read_image(
                path, window_center=self.window_center, window_width=self.window_width
            )
        image = _convert_channels(_to_uint8(image), self.channels)
        if self.clahe:
            image = _clahe(image)
        if self.aspect == "letterbox":
            image = _letterbox(image, self.size)
        elif image.shape[:2] != (self.size, self.size):
            shrink = image.shape[0] > self.size or image.shape[1] > self.size
            image = cv2.resize(
                image,
                (self.size, self.size),
                interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
            )
        return image.reshape(self.size, self.size, self.channels)

    def _reduced_jpeg(self, path: Path, source_shape: tuple[int, int] | None) -> np.ndarray | None:
        if source_shape is None or path.suffix.lower() not in _JPEG_SUFFIXES:
            return None
        factor = next((f for f in (8, 4, 2) if min(source_shape) // f >= self.size), 1)
        if factor == 1:
            return None
        flag = (_REDUCED_GRAY if self.channels == 1 else _REDUCED_COLOR)[factor]
        return cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), flag)


_TASK_SIZE = 32  # images per thread-pool task: amortises scheduling over cheap decodes
_JPEG_SUFFIXES = {".jpg", ".jpeg"}
_REDUCED_GRAY = {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}  # fmt: skip
_REDUCED_COLOR = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                  8: cv2.IMREAD_REDUCED_COLOR_8}  # fmt: skip


def preprocess(splits_path: Path, shards_dir: Path, recipe: Recipe) -> PreprocessResult:
    """Decode every image in ``splits.parquet`` into shards under ``shards_dir``."""
    table = pd.read_parquet(splits_path)
    image_cfg: ImageConfig = recipe.image
    load = LoadImage.from_config(image_cfg)
    paths = absolute_paths(table)
    source_shapes = list(zip(table["width"].astype(int), table["height"].astype(int), strict=True))
    shard_size = image_cfg.shard_size
    n_shards = max(1, -(-len(paths) // shard_size))
    workers = image_cfg.workers or os.cpu_count() or 1
    index = table[["path", "label", "label_index", "group", "sha256", "split", "fold"]].copy()
    index["shard"] = np.arange(len(index)) // shard_size
    index["offset"] = np.arange(len(index)) % shard_size
    with (
        _opencv_without_threads(),
        atomic_path(Path(shards_dir)) as staging,
        ThreadPoolExecutor(workers) as pool,
    ):
        staging.mkdir(parents=True)
        progress = tqdm(total=len(paths), desc="preprocess", unit="img", leave=False, disable=None)
        shape = (image_cfg.size, image_cfg.size, image_cfg.channels)

        def fill(batch: np.ndarray, start: int, offsets: range) -> int:
            for offset in offsets:  # each task writes its own rows of the shard
                batch[offset] = load(
                    paths[start + offset], source_shape=source_shapes[start + offset]
                )
            return len(offsets)

        def submit(shard: int) -> tuple[np.memmap, list[Future[int]]]:
            start = shard * shard_size
            count = min(shard_size, len(paths) - start)
            # Workers decode straight into the memory-mapped .npy file: no copy of the shard
            # through Python, and memory stays one shard's page cache, not the dataset.
            batch = np.lib.format.open_memmap(
                staging / _shard_name(shard), mode="w+", dtype=np.uint8, shape=(count, *shape)
            )
            tasks = [range(i, min(i + _TASK_SIZE, count)) for i in range(0, count, _TASK_SIZE)]
            return batch, [pool.submit(fill, batch, start, task) for task in tasks]

        # Two shards in flight: the pool decodes shard k+1 while shard k is finished.
        pending = submit(0)
        for shard in range(n_shards):
            batch, futures = pending
            for future in futures:
                progress.update(future.result())
            if shard + 1 < n_shards:
                pending = submit(shard + 1)
            del batch  # unmapped; the kernel writes the pages back without blocking the pool
        progress.close()
        names = [_shard_name(shard) for shard in range(n_shards)]
        index.to_parquet(staging / "index.parquet", index=False)
        write_json(
            staging / "meta.json",
            {
                "size": image_cfg.size,
                "channels": image_cfg.channels,
                "classes": list(recipe.data.classes),
                "shards": names,
                "images": len(paths),
            },
        )
    return PreprocessResult(Path(shards_dir), len(paths), n_shards)


@contextmanager
def _opencv_without_threads() -> Iterator[None]:
    """Images are decoded in parallel by our pool; OpenCV's own thread pool only contends."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(0)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def _shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.npy"


def load_index(shards_dir: Path) -> pd.DataFrame:
    """The shard index (one row per image, in shard order)."""
    return pd.read_parquet(Path(shards_dir) / "index.parquet")


class ShardRows:
    """Random access to some rows of the shards without loading them (memory-mapped).

    Args:
        shards_dir: output of :func:`preprocess`.
        rows: rows of :func:`load_index` (in any order, repeats allowed); position ``i`` of
            this object is ``rows.iloc[i]``.
    """

    def __init__(self, shards_dir: Path, rows: pd.DataFrame) -> None:
        meta = read_json(Path(shards_dir) / "meta.json")
        self.image_shape: tuple[int, int, int] = (meta["size"], meta["size"], meta["channels"])
        self._files = [Path(shards_dir) / name for name in meta["shards"]]
        self._arrays: dict[int, np.ndarray] = {}
        self._shard = rows["shard"].to_numpy(dtype=np.int64)
        self._offset = rows["offset"].to_numpy(dtype=np.int64)

    def __len__(self) -> int:
        return len(self._shard)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """The uint8 images at ``positions``, shape ``(len(positions), *image_shape)``."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), *self.image_shape), dtype=np.uint8)
        shards = self._shard[positions]
        for shard in np.unique(shards):
            where = np.flatnonzero(shards == shard)
            out[where] = self._array(int(shard))[self._offset[positions[where]]]
        return out

    def _array(self, shard: int) -> np.ndarray:
        if shard not in self._arrays:  # a dict insert is atomic: concurrent readers are fine
            self._arrays[shard] = np.load(self._files[shard], mmap_mode="r")
        return self._arrays[shard]


def load_images(shards_dir: Path, rows: pd.DataFrame) -> np.ndarray:
    """Gather the images of ``rows`` (from :func:`load_index`) into one uint8 array."""
    return ShardRows(shards_dir, rows).gather(np.arange(len(rows)))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    scaled = cv2.normalize(image.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX)
    return scaled.astype(np.uint8)


def _convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
    if image.ndim == 2:
        return image if channels == 1 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    n = image.shape[2]
    if n == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif n in (1, 2):  # gray, or gray + alpha
        image = image[:, :, 0]
        return image if channels == 1 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if channels == 1 else cv2.COLOR_BGR2RGB)


def _clahe(image: np.ndarray) -> np.ndarray:
    tool = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    if image.ndim == 2:
        return tool.apply(image)
    return np.dstack(
        [tool.apply(np.ascontiguousarray(image[:, :, c])) for c in range(image.shape[2])]
    )


def _letterbox(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    canvas = np.zeros((size, size, *image.shape[2:]), dtype=image.dtype)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas
