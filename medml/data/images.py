"""Reading one image (a file or its bytes): raster formats through OpenCV, DICOM through pydicom.

The format is told by the bytes (JPEG's SOI marker, DICOM's ``DICM`` preamble), not by the
file name, so a PNG named ``.jpg`` decodes as the PNG it is. Raster images are decoded with
their EXIF orientation applied, keeping depth (8/16 bit) and colour.

DICOM pixel data goes through pydicom's own pixel pipeline, by modality:

- grey-scale images get the modality LUT (rescale slope/intercept: CT in Hounsfield units);
  CT is then mapped to uint8 through the recipe's window(s) (``image.ct_windows``: named
  presets or ``center/width``; three windows stack as the three channels), anything else
  through the file's own VOI LUT or window when it has one, else its full value range — 12 and
  16-bit data are scaled, never truncated; MONOCHROME1 is inverted so that high is bright;
- PALETTE COLOR goes through its palette and YBR is converted to RGB (pydicom does both);
- compressed transfer syntaxes are decoded by pydicom's pixel-data plugins (pylibjpeg with its
  libjpeg, openjpeg and RLE plugins: JPEG baseline, extended 12-bit, lossless, JPEG-LS,
  JPEG 2000, RLE); a syntax that still does not decode raises an error naming it;
- a multi-frame file is read one frame at a time (``frame``); ingest decides which frames
  become images (``data.multi_frame``).

Every decoder refuses images of more than :data:`MAX_PIXELS` pixels from its own header read
(OpenCV through ``OPENCV_IO_MAX_IMAGE_PIXELS``, Pillow through ``MAX_IMAGE_PIXELS``, DICOM
from ``Rows``/``Columns``) before it allocates the pixels, and pixels that are NaN or infinite
are refused rather than silently mapped to black.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_PIXELS = 100_000_000
"""Largest image (width x height) any step decodes; bigger headers are decompression bombs."""

import cv2  # noqa: E402  (medml/__init__.py sets OpenCV's pixel limit before cv2 loads)
import numpy as np  # noqa: E402

DICOM_SUFFIXES = {".dcm", ".dicom"}
JPEG_MAGIC = b"\xff\xd8\xff"
# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}

WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "soft_tissue": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "liver": (60.0, 160.0),
}
"""CT windows by name: ``(center, width)`` in Hounsfield units."""

ImageSource = str | Path | bytes


def parse_window(spec: str) -> tuple[float, float]:
    """A CT window from a preset name (:data:`WINDOW_PRESETS`) or ``"center/width"``.

    Raises:
        ValueError: neither a preset nor two numbers with a positive width.
    """
    if spec in WINDOW_PRESETS:
        return WINDOW_PRESETS[spec]
    center, _, width = spec.partition("/")
    try:
        window = float(center), float(width)
    except ValueError:
        raise ValueError(
            f"unknown CT window {spec!r}: use a preset ({', '.join(WINDOW_PRESETS)}) or "
            "'center/width' in HU, e.g. '40/400'"
        ) from None
    if not window[1] > 0:
        raise ValueError(f"CT window {spec!r} needs a positive width")
    return window


def is_dicom(path: str | Path) -> bool:
    """True for DICOM files (by suffix)."""
    return Path(path).suffix.lower() in DICOM_SUFFIXES


def is_dicom_bytes(data: bytes) -> bool:
    """True for DICOM Part 10 content (``DICM`` after the 128-byte preamble)."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def open_regular_file(path: str | Path, *, follow_symlinks: bool = True) -> int:
    """Open a regular file for reading without ever blocking on a pipe or a device.

    Args:
        path: the file.
        follow_symlinks: when false, a symlink is refused (``O_NOFOLLOW``: also one swapped
            in after the caller looked at the path).

    Returns:
        The file descriptor (the caller closes it).

    Raises:
        ValueError: the path is not a regular file (pipe, device, socket, folder, or a
            symlink when not followed) or cannot be opened; the message names it.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if not follow_symlinks and err.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symlink; symlinks are not followed") from None
        raise ValueError(f"cannot read {path}: {err.strerror or err}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ValueError(f"{path} is not a regular file ({file_kind(mode)}); it is never read")
    return fd


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words."""
    kinds = [(stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symlink"),
             (stat.S_ISREG, "a regular file")]  # fmt: skip
    return next((word for test, word in kinds if test(mode)), "a special file")


def source_bytes(source: ImageSource) -> bytes:
    """The encoded bytes of a file, or the bytes themselves.

    Raises:
        ValueError: the file cannot be read, or is not a regular file.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    fd = open_regular_file(source)
    try:
        with os.fdopen(fd, "rb", buffering=0) as handle:  # unbuffered: one read, no copy
            return handle.readall()
    except OSError as err:
        raise ValueError(f"cannot read image {source}: {err.strerror or err}") from None


def jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """``(width, height, components)`` from a JPEG's frame header, or ``None`` if not a JPEG."""
    if not data.startswith(JPEG_MAGIC):
        return None
    position = 2
    while position + 9 < len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker in _SOF_MARKERS:
            height = int.from_bytes(data[position + 5 : position + 7], "big")
            width = int.from_bytes(data[position + 7 : position + 9], "big")
            return width, height, data[position + 9]
        position += 2 + length
    return None


def decode_bytes(data: bytes) -> np.ndarray | None:
    """Decode encoded raster bytes with OpenCV (EXIF orientation applied, depth and colour
    kept, alpha dropped); ``None`` if they are not a decodable image (or declare more than
    :data:`MAX_PIXELS` pixels: OpenCV checks its own header read)."""
    if not data:
        return None
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error:
        return None
    return image if image is not None and image.size > 0 else None


def window_hounsfield(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map Hounsfield units to uint8 through a CT window (values outside are clipped)."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    low = center - width / 2
    scaled = (hu.astype(np.float32) - low) / width * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, without decoding its pixels."""

    width: int
    height: int
    channels: int
    frames: int = 1
    tags: dict[str, str] = field(default_factory=dict)  # DICOM grouping tags, raw: never store


def header_of(handle: Any, name: str, *, tags: Sequence[str] = ()) -> ImageHeader:
    """Dimensions, channels and frame count from the header of a file open for reading (read
    from its start; no pixel decoding).

    Args:
        handle: the open file (see :func:`open_regular_file`).
        name: the file name, for messages and the ``.dcm`` suffix.
        tags: DICOM keywords whose values to return (for grouping; pseudonymise them before
            they are written anywhere).

    Raises:
        ValueError: the header cannot be read, or declares more than :data:`MAX_PIXELS` pixels.
    """
    handle.seek(0)
    head = handle.read(132)
    handle.seek(0)
    if is_dicom_bytes(head):
        header = _dicom_header(handle, name, tags)
    else:
        header = _raster_header(handle, name)
        if header.width == 0 and is_dicom(name):  # named .dcm, neither raster nor Part 10
            handle.seek(0)
            header = _dicom_header(handle, name, tags)
    if header.width * header.height > MAX_PIXELS:
        raise ValueError(
            f"image header declares {header.width}x{header.height} pixels, more than "
            f"{MAX_PIXELS:,} (a decompression bomb?); not decoded"
        )
    return header


_MODE_CHANNELS = {"1": 1, "L": 1, "P": 1, "I": 1, "I;16": 1, "F": 1, "LA": 2, "RGB": 3,
                  "YCbCr": 3, "CMYK": 4, "RGBA": 4}  # fmt: skip


def _raster_header(handle: Any, name: str) -> ImageHeader:
    from PIL import Image

    try:
        with Image.open(handle) as image:  # header only; no pixel decoding
            width, height = image.size
            channels = _MODE_CHANNELS.get(image.mode, len(image.getbands()))
            frames = int(getattr(image, "n_frames", 1) or 1)
    except Image.DecompressionBombError as err:
        raise ValueError(f"image header declares a decompression-bomb size ({err})") from None
    except Exception:
        # Pillow cannot parse every header OpenCV reads; the decode (with OpenCV's own pixel
        # limit) decides. Dimensions stay 0 until then.
        return ImageHeader(0, 0, 0)
    return ImageHeader(width, height, channels, frames)


def _dicom_header(handle: Any, name: str, tags: Sequence[str]) -> ImageHeader:
    dataset = _dcmread(handle, name, header_only=True)
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
    except AttributeError:
        raise ValueError(
            f"{name} is a DICOM file without an image (no Rows/Columns; "
            f"SOP class {_sop_class(dataset)}); it is not an image"
        ) from None
    values = {tag: str(dataset.get(tag, "") or "").strip() for tag in tags}
    return ImageHeader(
        columns, rows, int(dataset.get("SamplesPerPixel", 1) or 1),
        _frame_count(dataset), {k: v for k, v in values.items() if v},
    )  # fmt: skip


def _sop_class(dataset: Any) -> str:
    uid = dataset.get("SOPClassUID")
    return str(getattr(uid, "name", uid) or "unknown")


def _frame_count(dataset: Any) -> int:
    try:
        return max(1, int(dataset.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _dcmread(handle: Any, name: str, *, header_only: bool = False) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(handle, stop_before_pixels=header_only)
    except InvalidDicomError:
        raise ValueError(
            f"{name} is not a DICOM Part 10 file (no 'DICM' preamble and File Meta "
            "Information); export it from the PACS/viewer as DICOM Part 10"
        ) from None
    except Exception as err:
        raise ValueError(f"{name}: the DICOM header cannot be read ({err})") from None
    if "TransferSyntaxUID" not in dataset.get("file_meta", {}):
        raise ValueError(
            f"{name} has no transfer syntax in its File Meta Information; re-export it as "
            "DICOM Part 10"
        )
    return dataset


def read_dicom(
    source: ImageSource, *, ct_windows: Sequence[str] = ("abdomen",), frame: int = 0,
    name: str = "",
) -> np.ndarray:  # fmt: skip
    """Read one frame of a DICOM file (or its bytes) as uint8: grey, or BGR for colour
    (OpenCV's order, like every other decoder here).

    Args:
        source: the file or its bytes.
        ct_windows: the window(s) for CT (see :func:`parse_window`); three stack as channels.
        frame: which frame of a multi-frame file (0 for single-frame files).
        name: the file name for messages when ``source`` is bytes.

    Raises:
        ValueError: not a readable DICOM image; the message names the file and why (no pixel
            data, too large, a frame that does not exist, an undecodable transfer syntax).
    """
    name = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    data = source_bytes(source)
    dataset = _dcmread(io.BytesIO(data), name)
    if not any(k in dataset for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ValueError(
            f"{name} has no pixel data (SOP class {_sop_class(dataset)}); it is not an image"
        )
    frames = _frame_count(dataset)
    rows, columns = int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))
    if rows * columns > MAX_PIXELS:
        raise ValueError(f"{name} declares {columns}x{rows} pixels, more than {MAX_PIXELS:,}")
    if not 0 <= frame < frames:
        raise ValueError(f"{name} has {frames} frame(s); frame {frame} does not exist")
    pixels = require_finite(_dicom_pixels(dataset, frame if frames > 1 else None, name), name)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        descriptor = dataset.get("RedPaletteColorLookupTableDescriptor", [0, 0, 16])
        return _rgb_to_bgr8(apply_color_lut(pixels, dataset), int(descriptor[2]))
    if pixels.ndim == 3:  # colour: pydicom has already converted YBR to RGB
        return _rgb_to_bgr8(pixels, int(dataset.get("BitsStored", 8) or 8))
    image = _grey_to_uint8(pixels, dataset, [parse_window(w) for w in ct_windows])
    if photometric == "MONOCHROME1":  # high values are dark: invert so every image reads alike
        image = 255 - image
    return image


def _dicom_pixels(dataset: Any, index: int | None, name: str) -> np.ndarray:
    from pydicom.pixels import get_decoder, pixel_array

    syntax = dataset.file_meta.TransferSyntaxUID
    try:
        return np.asarray(pixel_array(dataset, index=index))
    except Exception as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            decoder = None
        if decoder is None or not decoder.is_available:
            reason = "no installed pixel-data plugin decodes this transfer syntax"
        raise ValueError(
            f"{name}: its pixel data ({getattr(syntax, 'name', syntax)}, {syntax}) cannot be "
            f"decoded ({reason}). medml decodes JPEG baseline/extended/lossless, JPEG-LS, "
            "JPEG 2000 and RLE through pylibjpeg (installed from the lock); other syntaxes "
            "need python-gdcm, else the file is damaged: re-export it"
        ) from None


def _grey_to_uint8(
    pixels: np.ndarray, dataset: Any, windows: list[tuple[float, float]]
) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = np.asarray(apply_modality_lut(pixels, dataset))
    if str(dataset.get("Modality", "")).upper() == "CT":
        channels = [window_hounsfield(values, center, width) for center, width in windows]
        # Three windows are the R, G, B channels; the decoders here return BGR.
        return channels[0] if len(channels) == 1 else np.dstack(channels[::-1])
    if "WindowCenter" in dataset or "VOILUTSequence" in dataset:
        try:
            low, high = _voi_output_range(dataset)
            shown = np.asarray(apply_voi_lut(values, dataset), dtype=np.float64)
            return _stretch(shown, low, high)
        except (ValueError, TypeError, IndexError, KeyError):
            pass  # an unusable VOI in the header: fall back to the data's own range
    values = values.astype(np.float64, copy=False)
    return _stretch(values, float(values.min()), float(values.max()))


def _voi_output_range(dataset: Any) -> tuple[float, float]:
    """The range apply_voi_lut maps into: a LUT's bit depth, or the window's y_min..y_max."""
    from pydicom.pixels import apply_voi_lut

    if "VOILUTSequence" in dataset:
        bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    probe = np.asarray(apply_voi_lut(np.array([-1e12, 1e12]), dataset, prefer_lut=False))
    return float(probe.min()), float(probe.max())


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _rgb_to_bgr8(rgb: np.ndarray, bits: int) -> np.ndarray:
    if rgb.dtype != np.uint8:
        rgb = _stretch(rgb.astype(np.float64), 0.0, float(2 ** min(bits, 32) - 1))
    return np.ascontiguousarray(rgb[..., ::-1])


def read_raster_frame(data: bytes, frame: int, name: str) -> np.ndarray:
    """One page of a multi-page raster file (TIFF, GIF, WebP…) through Pillow, as OpenCV's
    grey/BGR/BGRA layout.

    Raises:
        ValueError: the page does not exist or does not decode.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.seek(frame)
            page = ImageOps.exif_transpose(image) if frame == 0 else image
            if page.mode not in ("L", "I;16", "I", "F", "RGB", "RGBA"):
                page = page.convert("RGBA" if "A" in page.getbands() else "RGB")
            array = np.asarray(page)
    except EOFError:
        raise ValueError(f"{name} has no page {frame}") from None
    except Exception as err:
        raise ValueError(f"cannot decode page {frame} of {name}: {err}") from None
    if array.ndim == 3:
        code = cv2.COLOR_RGBA2BGRA if array.shape[2] == 4 else cv2.COLOR_RGB2BGR
        array = cv2.cvtColor(np.ascontiguousarray(array), code)
    return array


def read_image(
    source: ImageSource, *, ct_windows: Sequence[str] = ("abdomen",), frame: int = 0,
    name: str = "",
) -> np.ndarray:  # fmt: skip
    """Read any supported image (a file or its encoded bytes); raster images keep their depth
    and channels, with EXIF orientation applied.

    Args:
        source: the file or its encoded bytes.
        ct_windows: CT window(s) for DICOM (see :func:`read_dicom`).
        frame: the frame/page of a multi-frame file.
        name: the file name for messages when ``source`` is bytes.

    Raises:
        ValueError: the image cannot be read or decoded, is too large, or has NaN/inf pixels.
    """
    name = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    data = source_bytes(source)
    if is_dicom_bytes(data):
        return read_dicom(data, ct_windows=ct_windows, frame=frame, name=name)
    image = decode_bytes(data) if frame == 0 else read_raster_frame(data, frame, name)
    if image is None and is_dicom(name):  # no preamble and not a raster image: say why
        return read_dicom(data, ct_windows=ct_windows, frame=frame, name=name)
    if image is None:
        raise ValueError(
            f"{name} does not decode as an image (damaged, truncated or not an image, or more "
            f"than {MAX_PIXELS:,} pixels)"
        )
    return require_finite(image, name)


def require_finite(image: np.ndarray, name: str) -> np.ndarray:
    """``image`` itself; float pixels that are NaN or infinite are refused, never mapped to
    black.

    Raises:
        ValueError: a pixel is NaN or infinite.
    """
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise ValueError(f"{name} has NaN or infinite pixel values; not used")
    return image
