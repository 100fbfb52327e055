"""Preprocess: decode, convert and resize images with OpenCV into fixed-size shards.

Images are decoded in parallel threads (OpenCV releases the GIL); each thread decodes a small
task of images into its own reusable buffer and writes it at its place in the shard file with
``os.pwrite``, so peak memory is one task per thread, not a shard and not the dataset.
Output layout (deterministic bytes for the same inputs and settings, so DVC caches it)::

    shards/
      meta.json             size, channels, classes, shard names
      index.parquet         one row per image: path, label_index, split, fold, shard, offset
      shard-00000.npy       uint8 array (n, size, size, channels)
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medml.config import ImageConfig, Recipe
from medml.data.images import ImageSource, jpeg_header, read_image, require_finite, source_bytes
from medml.data.ingest import absolute_paths, frames_of, read_rows
from medml.io import publish_dir, read_json, write_json
from medml.layout import ShardFiles, shard_name

PREPROCESS_SETTINGS = ("image", "data.classes")
"""The recipe settings the shards depend on (every image setting, the class list and order).

Declared once: :func:`preprocess_settings` feeds the shards' cache key, and ``dvc.yaml``'s
``preprocess`` stage must depend on the same (a test checks both against this).
"""


def preprocess_settings(recipe: Recipe) -> dict[str, object]:
    """The values of :data:`PREPROCESS_SETTINGS` in ``recipe``, by dotted name."""
    dumped = recipe.model_dump(mode="json")
    values: dict[str, object] = {}
    for dotted in PREPROCESS_SETTINGS:
        node: object = dumped
        for part in dotted.split("."):
            node = node[part]  # type: ignore[index]
        values[dotted] = node
    return values


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
        ct_windows: CT window(s) for DICOM (presets or ``center/width``; three become the
            channels), see :func:`~medml.data.images.read_dicom`.

    Raises:
        ValueError: bad ``size``, ``channels`` or ``aspect``.
    """

    def __init__(
        self, size: int, channels: int, *, aspect: str = "resize", clahe: bool = False,
        ct_windows: Sequence[str] = ("abdomen",),
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
        self.ct_windows = tuple(ct_windows)

    @classmethod
    def from_config(cls, config: ImageConfig) -> LoadImage:
        """Build from the recipe's ``image`` section."""
        return cls(
            config.size,
            config.channels,
            aspect=config.aspect,
            clahe=config.clahe,
            ct_windows=config.ct_windows,
        )

    def __call__(self, source: ImageSource | np.ndarray, *, out: np.ndarray | None = None,
                 name: str = "", frame: int = 0) -> np.ndarray:  # fmt: skip
        """Return an array of shape ``(size, size, channels)``.

        The one preprocessing of medml: shards, evaluation, ``medml predict`` and the served
        model all call it, and the result depends only on the bytes (never on the file name or
        on who calls), so the same file gives the same array everywhere. A large JPEG is
        decoded directly at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, several times faster
        than decoding in full and resizing), chosen from its own frame header.

        Args:
            source: an image file, its encoded bytes, or already decoded pixels (any size;
                uint8, 16-bit or float; gray, BGR or BGRA as OpenCV decodes).
            out: write the result here (shape ``(size, size, channels)``, uint8) and return it.
            name: the file name for messages when ``source`` is bytes.
            frame: the frame (page) of a multi-frame file.

        Raises:
            ValueError: the image cannot be decoded, or ``out`` is not a C-contiguous uint8
                array of the output shape.
        """
        shape = (self.size, self.size, self.channels)
        if out is not None and (
            out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous
        ):
            raise ValueError(
                f"out must be a C-contiguous uint8 array of shape {shape}, "
                f"got {out.dtype} {out.shape}"
            )
        decoded = (
            source if isinstance(source, np.ndarray)
            else self.decode(source, name=name, frame=frame)
        )  # fmt: skip
        image = _to_uint8(decoded)
        out = np.empty(shape, dtype=np.uint8) if out is None else out
        if not self.clahe and self.aspect == "resize" and image.shape[:2] == shape[:2]:
            _convert_channels(image, self.channels, out=out)  # the usual case: one pass
            return out
        # A grey image wanted as RGB is processed as one channel and repeated at the end: CLAHE
        # and resizing work per channel, so the bytes are those of expanding first, for a third
        # of the work (a unit test compares both orders).
        gray_to_rgb = self.channels == 3 and _is_gray(image)
        image = _convert_channels(image, 1 if gray_to_rgb else self.channels)
        if self.clahe:
            image = _clahe(image)
        if self.aspect == "letterbox":
            image = _letterbox(image, self.size)
        elif image.shape[:2] != shape[:2]:
            shrink = image.shape[0] > self.size or image.shape[1] > self.size
            image = cv2.resize(
                image,
                (self.size, self.size),
                interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
            )
        if gray_to_rgb:
            _convert_channels(image, 3, out=out)
        else:
            np.copyto(out, image.reshape(shape))
        return out

    def decode(self, source: ImageSource, *, name: str = "", frame: int = 0) -> np.ndarray:
        """The image's pixels as decoded, before channel conversion and resizing: a large JPEG
        at the reduced scale :meth:`__call__` uses, anything else through
        :func:`~medml.data.images.read_image`.

        Raises:
            ValueError: the image cannot be read or decoded.
        """
        name = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
        data = source_bytes(source)
        image = self._reduced_jpeg(data) if frame == 0 else None
        if image is None:
            image = read_image(data, ct_windows=self.ct_windows, frame=frame, name=name)
        return image

    def _reduced_jpeg(self, data: bytes) -> np.ndarray | None:
        header = jpeg_header(data)
        if header is None:
            return None
        width, height, components = header
        factor = next((f for f in (8, 4, 2) if min(width, height) // f >= self.size), 1)
        if factor == 1:
            return None
        gray = self.channels == 1 or components == 1
        flag = (_REDUCED_GRAY if gray else _REDUCED_COLOR)[factor]
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
        return image if image is not None and image.size > 0 else None


_TASK_SIZE = 32  # images per thread-pool task: amortises scheduling over cheap decodes
_INDEX_COLUMNS = ("path", "frame", "label", "label_index", "group", "sha256", "split", "fold")
_REDUCED_GRAY = {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}  # fmt: skip
_REDUCED_COLOR = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                  8: cv2.IMREAD_REDUCED_COLOR_8}  # fmt: skip


def preprocess(splits_path: Path, shards_dir: Path, recipe: Recipe) -> PreprocessResult:
    """Decode every image in ``splits.parquet`` into shards under ``shards_dir``.

    The shards are built in a staging folder beside ``shards_dir``, marked complete and
    swapped in (:func:`~medml.io.publish_dir`); a file that fails to decode stops the step
    naming the file and leaves nothing.
    """
    table = read_rows(splits_path, [*_INDEX_COLUMNS, "root"])
    image_cfg: ImageConfig = recipe.image
    writer = _ShardWriter(absolute_paths(table, Path(splits_path).parent), frames_of(table),
                         LoadImage.from_config(image_cfg), image_cfg)  # fmt: skip
    index = table[list(_INDEX_COLUMNS)].copy()
    index["shard"] = np.arange(len(index)) // image_cfg.shard_size
    index["offset"] = np.arange(len(index)) % image_cfg.shard_size
    with _opencv_without_threads(), publish_dir(Path(shards_dir)) as staging:
        files = ShardFiles(staging)
        writer.write(staging, on_started=lambda: index.to_parquet(files.index, index=False))
        write_json(
            files.meta,
            {
                "size": image_cfg.size,
                "channels": image_cfg.channels,
                "classes": list(recipe.data.classes),
                "shards": [shard_name(shard) for shard in range(writer.n_shards)],
                "images": len(writer.paths),
            },
        )
    return PreprocessResult(Path(shards_dir), len(writer.paths), writer.n_shards)


class _ShardWriter:
    """Decodes a table's images with a thread pool into ``shard-*.npy`` files.

    Each task decodes :data:`_TASK_SIZE` images into a per-thread buffer and writes them at
    their place in the shard file (``pwrite``): no shard-sized buffer, no page faults on a
    memory map, and the tasks of one shard never wait for each other.
    """

    def __init__(
        self, paths: list[str], frames: list[int], load: LoadImage, cfg: ImageConfig
    ) -> None:
        self.paths = paths
        self.frames = frames
        self.load = load
        self.shard_size = cfg.shard_size
        self.n_shards = max(1, -(-len(self.paths) // cfg.shard_size))
        self.workers = cfg.workers or os.cpu_count() or 1
        self.shape = (cfg.size, cfg.size, cfg.channels)
        self._buffers = threading.local()  # one task's images per thread, reused across tasks

    def decode_task(self, fd: int, data_offset: int, start: int, rows: range) -> int:
        batch = getattr(self._buffers, "batch", None)
        if batch is None:
            batch = self._buffers.batch = np.empty((_TASK_SIZE, *self.shape), dtype=np.uint8)
        for i, k in enumerate(range(start + rows.start, start + rows.stop)):
            self.load(self.paths[k], out=batch[i], frame=self.frames[k])
        _pwrite_all(fd, batch[: len(rows)], data_offset + rows.start * batch[0].nbytes)
        return len(rows)

    def write(self, staging: Path, *, on_started: Callable[[], object]) -> None:
        """Write every shard into ``staging``; ``on_started`` runs while the pool decodes."""
        open_shards: set[int] = set()  # file descriptors, closed when their shard is done
        with ExitStack() as cleanup:
            cleanup.callback(_close_all, open_shards)  # runs after the pool has stopped
            pool = cleanup.enter_context(ThreadPoolExecutor(self.workers))
            bar = tqdm(total=len(self.paths), desc="preprocess", unit="img", leave=False,
                       disable=None)  # fmt: skip
            progress = cleanup.enter_context(bar)

            def submit(shard: int) -> tuple[int, list[Future[int]]]:
                start = shard * self.shard_size
                count = min(self.shard_size, len(self.paths) - start)
                fd, offset = _open_npy(ShardFiles(staging).shard(shard), (count, *self.shape))
                open_shards.add(fd)
                tasks = [range(i, min(i + _TASK_SIZE, count)) for i in range(0, count, _TASK_SIZE)]
                return fd, [pool.submit(self.decode_task, fd, offset, start, t) for t in tasks]

            try:
                # The next shard's tasks are queued before this one is awaited: no idle boundary.
                pending = submit(0)
                on_started()
                for shard in range(self.n_shards):
                    fd, futures = pending
                    if shard + 1 < self.n_shards:
                        pending = submit(shard + 1)
                    for future in futures:
                        progress.update(future.result())
                    open_shards.remove(fd)
                    os.close(fd)
            except BaseException:
                pool.shutdown(cancel_futures=True)  # a bad file stops without decoding the rest
                raise


def _close_all(fds: set[int]) -> None:
    for fd in fds:
        os.close(fd)


def _pwrite_all(fd: int, array: np.ndarray, offset: int) -> None:
    """Write a C-contiguous array's bytes at ``offset`` (``pwrite`` may write less than asked)."""
    data = memoryview(array).cast("B")
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _open_npy(path: Path, shape: tuple[int, ...]) -> tuple[int, int]:
    """Create a uint8 ``.npy`` file of ``shape`` (header written, data to come).

    Returns:
        The open file descriptor (for ``os.pwrite``) and the byte offset of the data.
    """
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "|u1", "fortran_order": False, "shape": shape}
        )
        data_offset = handle.tell()
        handle.truncate(data_offset + int(np.prod(shape)))
    return os.open(path, os.O_WRONLY), data_offset


@contextmanager
def _opencv_without_threads() -> Iterator[None]:
    """Images are decoded in parallel by our pool; OpenCV's own thread pool only contends."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(0)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def load_index(shards_dir: Path) -> pd.DataFrame:
    """The shard index (one row per image, in shard order)."""
    return pd.read_parquet(ShardFiles(Path(shards_dir)).index)


class ShardRows:
    """Random access to some rows of the shards without loading them.

    Rows are read with ``pread`` into each batch's buffer: the kernel's page cache keeps the
    shards warm, but nothing is mapped into the process, so its RSS does not grow with the
    dataset (a memory map of the shards would count every page it touched).

    Args:
        shards_dir: output of :func:`preprocess`.
        rows: rows of :func:`load_index` (in any order, repeats allowed); position ``i`` of
            this object is ``rows.iloc[i]``.
    """

    def __init__(self, shards_dir: Path, rows: pd.DataFrame) -> None:
        meta = read_json(ShardFiles(Path(shards_dir)).meta)
        self.image_shape: tuple[int, int, int] = (meta["size"], meta["size"], meta["channels"])
        self._files = [Path(shards_dir) / name for name in meta["shards"]]
        self._shard = rows["shard"].to_numpy(dtype=np.int64)
        self._offset = rows["offset"].to_numpy(dtype=np.int64)
        self._readers: dict[int, _ShardReader] = {}

    def __len__(self) -> int:
        return len(self._shard)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """The uint8 images at ``positions``, shape ``(len(positions), *image_shape)``."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), *self.image_shape), dtype=np.uint8)
        readers = [self._reader(shard) for shard in self._shard[positions].tolist()]
        for target, (reader, row) in enumerate(zip(readers, self._offset[positions].tolist(),
                                                   strict=True)):  # fmt: skip
            reader.read_into(row, out[target])
        return out

    def _reader(self, shard: int) -> _ShardReader:
        reader = self._readers.get(shard)
        if reader is None:  # a dict insert is atomic: concurrent readers are fine
            path = self._files[shard]
            identity = path.stat()
            reader = _shard_reader(str(path), identity.st_ino, identity.st_mtime_ns)
            self._readers[shard] = reader
        return reader


class _ShardReader:
    """Reads rows of one ``.npy`` shard by offset (thread-safe: positional reads)."""

    def __init__(self, path: str) -> None:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)  # fmt: skip
            shape, _, dtype = read_header(handle)
            self.data_start = handle.tell()
        if dtype != np.uint8:
            raise ValueError(f"{path} holds {dtype}, not uint8 images; run preprocess again")
        self.rows = shape[0]
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64))
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)

    def read_into(self, row: int, out: np.ndarray) -> None:
        """Row ``row`` of the shard into ``out`` (one image's C-contiguous buffer)."""
        if not 0 <= row < self.rows:
            raise IndexError(f"row {row} is outside {self.path} ({self.rows} rows)")
        if os.preadv(self.fd, [out.data], self.data_start + row * self.row_bytes) != out.nbytes:
            raise ValueError(f"{self.path} is truncated; run preprocess again")

    def __del__(self) -> None:
        fd = getattr(self, "fd", None)
        if fd is not None:
            os.close(fd)


@functools.lru_cache(maxsize=256)
def _shard_reader(path: str, inode: int, mtime_ns: int) -> _ShardReader:
    """One reader (one open file) per shard file per process, keyed by the file's identity so
    a re-published shard is opened anew."""
    return _ShardReader(path)


def load_images(shards_dir: Path, rows: pd.DataFrame) -> np.ndarray:
    """Gather the images of ``rows`` (from :func:`load_index`) into one uint8 array."""
    return ShardRows(shards_dir, rows).gather(np.arange(len(rows)))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    require_finite(image, "the image")
    scaled = cv2.normalize(image.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX)
    return scaled.astype(np.uint8)


def _is_gray(image: np.ndarray) -> bool:
    """Whether decoded pixels are grey (2-D, one channel, or grey + alpha)."""
    return image.ndim == 2 or image.shape[2] in (1, 2)


def _convert_channels(
    image: np.ndarray, channels: int, *, out: np.ndarray | None = None
) -> np.ndarray:
    """Decoded (BGR, BGRA, gray or gray+alpha) to gray or RGB; written into ``out`` if given."""
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.ndim == 3 and image.shape[2] in (1, 2):  # gray, or gray + alpha
        image = image[:, :, 0]
    dst = None if out is None else out.reshape(out.shape[:2] if channels == 1 else out.shape)
    if image.ndim == 2 and channels == 1:
        if dst is None:
            return image
        np.copyto(dst, image)
        return dst
    code = cv2.COLOR_GRAY2RGB if image.ndim == 2 else (
        cv2.COLOR_BGR2GRAY if channels == 1 else cv2.COLOR_BGR2RGB
    )  # fmt: skip
    return cv2.cvtColor(image, code, dst=dst)


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
