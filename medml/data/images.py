"""Reading one image (a file or its bytes): raster formats through OpenCV, DICOM through pydicom.

The format is told by the bytes (JPEG's SOI marker, DICOM's ``DICM`` preamble), not by the
file name, so a PNG named ``.jpg`` decodes as the PNG it is. Raster images are decoded with
their EXIF orientation applied, keeping depth (8/16 bit) and colour.

DICOM pixel data is converted to Hounsfield units with the file's rescale slope/intercept and
mapped to uint8 through a CT window (``image.window_center`` / ``image.window_width``; the
default 40/400 is the abdominal soft-tissue window used for kidneys), so CT slices in DICOM go
through the same preprocessing as JPEGs.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np

DICOM_SUFFIXES = {".dcm", ".dicom"}
JPEG_MAGIC = b"\xff\xd8\xff"
# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}

ImageSource = str | Path | bytes


def is_dicom(path: str | Path) -> bool:
    """True for DICOM files (by suffix)."""
    return Path(path).suffix.lower() in DICOM_SUFFIXES


def is_dicom_bytes(data: bytes) -> bool:
    """True for DICOM Part 10 content (``DICM`` after the 128-byte preamble)."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def source_bytes(source: ImageSource) -> bytes:
    """The encoded bytes of a file, or the bytes themselves.

    Raises:
        ValueError: the file cannot be read.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    try:
        with open(source, "rb", buffering=0) as handle:  # unbuffered: one read, no copy
            return handle.read()
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
    kept, alpha dropped); ``None`` if they are not a decodable image."""
    if not data:
        return None
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    return image if image is not None and image.size > 0 else None


def window_hounsfield(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map Hounsfield units to uint8 through a CT window (values outside are clipped)."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    low = center - width / 2
    scaled = (hu.astype(np.float32) - low) / width * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def read_dicom(
    source: ImageSource, *, center: float = 40.0, width: float = 400.0, name: str = ""
) -> np.ndarray:
    """Read a DICOM slice (a file or its bytes) as windowed uint8 (HU via rescale
    slope/intercept).

    Raises:
        ValueError: the file is not a readable DICOM image.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut

    path = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        dataset = pydicom.dcmread(handle, force=isinstance(source, bytes))
        pixels = dataset.pixel_array
    except Exception as err:
        raise ValueError(f"{path} is not a readable DICOM image: {err}") from None
    hu = apply_modality_lut(pixels, dataset)
    return window_hounsfield(np.asarray(hu), center, width)


def read_image(
    source: ImageSource, *, window_center: float = 40.0, window_width: float = 400.0,
    name: str = "",
) -> np.ndarray:  # fmt: skip
    """Read any supported image (a file or its encoded bytes); raster images keep their depth
    and channels, with EXIF orientation applied.

    Raises:
        ValueError: the image cannot be read or decoded.
    """
    name = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    data = source_bytes(source)
    if is_dicom_bytes(data) or is_dicom(name):
        return read_dicom(data, center=window_center, width=window_width, name=name)
    image = decode_bytes(data)
    if image is None:
        raise ValueError(f"cannot decode image {name}; run validate to quarantine it")
    return image


def dicom_header(path: Path) -> tuple[int, int, int]:
    """(width, height, channels) from a DICOM header without decoding pixels."""
    import pydicom

    dataset = pydicom.dcmread(str(path), stop_before_pixels=True)
    return int(dataset.Columns), int(dataset.Rows), int(getattr(dataset, "SamplesPerPixel", 1))
