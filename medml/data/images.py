"""Reading one image file: raster formats through OpenCV, DICOM through pydicom.

DICOM pixel data is converted to Hounsfield units with the file's rescale slope/intercept and
mapped to uint8 through a CT window (``image.window_center`` / ``image.window_width``; the
default 40/400 is the abdominal soft-tissue window used for kidneys), so CT slices in DICOM go
through the same preprocessing as JPEGs.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

DICOM_SUFFIXES = {".dcm", ".dicom"}


def is_dicom(path: str | Path) -> bool:
    """True for DICOM files (by suffix)."""
    return Path(path).suffix.lower() in DICOM_SUFFIXES


def decode_bytes(data: bytes) -> np.ndarray | None:
    """Decode encoded raster bytes with OpenCV, keeping depth and channels; ``None`` if invalid."""
    if not data:
        return None
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    return image if image is not None and image.size > 0 else None


def window_hounsfield(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map Hounsfield units to uint8 through a CT window (values outside are clipped)."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    low = center - width / 2
    scaled = (hu.astype(np.float32) - low) / width * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def read_dicom(path: str | Path, *, center: float = 40.0, width: float = 400.0) -> np.ndarray:
    """Read a DICOM slice as windowed uint8 (HU via rescale slope/intercept).

    Raises:
        ValueError: the file is not a readable DICOM image.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        dataset = pydicom.dcmread(str(path))
        pixels = dataset.pixel_array
    except Exception as err:
        raise ValueError(f"{path} is not a readable DICOM image: {err}") from None
    hu = apply_modality_lut(pixels, dataset)
    return window_hounsfield(np.asarray(hu), center, width)


def read_image(
    path: str | Path, *, window_center: float = 40.0, window_width: float = 400.0
) -> np.ndarray:
    """Read any supported image file; raster files keep their depth and channels.

    Raises:
        ValueError: the file cannot be decoded.
    """
    path = Path(path)
    if is_dicom(path):
        return read_dicom(path, center=window_center, width=window_width)
    image = decode_bytes(path.read_bytes()) if path.is_file() else None
    if image is None:
        raise ValueError(f"cannot decode image {path}; run validate to quarantine it")
    return image


def dicom_header(path: Path) -> tuple[int, int, int]:
    """(width, height, channels) from a DICOM header without decoding pixels."""
    import pydicom

    dataset = pydicom.dcmread(str(path), stop_before_pixels=True)
    return int(dataset.Columns), int(dataset.Rows), int(getattr(dataset, "SamplesPerPixel", 1))
