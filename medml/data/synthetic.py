"""Synthetic phantom datasets, so tests and demos never need real patient data.

The kidney-CT phantom mimics an axial abdominal CT slice: a body ellipse with fat and muscle
rings, a vertebra, bowel gas, and two kidney ellipses. Findings are drawn inside a kidney:

- ``Cyst``: a dark, round, well-defined region;
- ``Stone``: a small, very bright spot;
- ``Tumor``: an enlarged kidney with a textured, irregular mass;
- ``Normal``: none.

Every synthetic patient contributes several neighbouring slices that share anatomy and finding,
so a split that ignores patients leaks; ``groups.csv`` at the dataset root records the patient
of every file (and the file name starts with it). Lesion size and contrast vary from patient
to patient and a few lesions are faint, so the task is learnable but not trivial.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import cv2
import numpy as np

from medml.errors import SynthError
from medml.io import atomic_path

if TYPE_CHECKING:
    from medml.config import DataConfig, Recipe

KIDNEY_CT_CLASSES = ("Normal", "Cyst", "Stone", "Tumor")
# Class counts of the real CT-KIDNEY dataset (seed 000).
KIDNEY_CT_COUNTS = {"Normal": 5077, "Cyst": 3709, "Tumor": 2283, "Stone": 1377}
GROUPS_FILE = "groups.csv"


@dataclass(frozen=True)
class SynthResult:
    """What :func:`synth_kidney_ct` wrote."""

    root: Path
    counts: dict[str, int]
    patients: int


def proportional_counts(total: int, weights: dict[str, int], *, minimum: int = 1) -> dict[str, int]:
    """Split ``total`` into integer counts proportional to ``weights`` (largest remainder),
    giving every class at least ``minimum``.

    Raises:
        SynthError: ``total`` cannot give every class ``minimum`` images (says the least ``n``).
    """
    least = len(weights) * minimum
    if total < least:
        raise SynthError(
            f"n={total} is too small: this layout writes at least {minimum} image(s) for each of "
            f"{len(weights)} classes, so n >= {least} (e.g. medml synth --n {least})"
        )
    weight_sum = sum(weights.values())
    exact = {name: total * w / weight_sum for name, w in weights.items()}
    counts = {name: max(minimum, int(v)) for name, v in exact.items()}
    by_remainder = sorted(weights, key=lambda name: exact[name] - int(exact[name]), reverse=True)
    i = 0
    while sum(counts.values()) < total:
        counts[by_remainder[i % len(by_remainder)]] += 1
        i += 1
    while sum(counts.values()) > total:
        largest = max(counts, key=counts.get)
        counts[largest] -= 1  # only the largest class gives up images, never below minimum
    return counts


def synth_kidney_ct(
    out_dir: Path,
    *,
    n: int = 600,
    seed: int = 0,
    image_size: int = 128,
    slices_per_patient: tuple[int, int] = (2, 6),
    classes: Sequence[str] = KIDNEY_CT_CLASSES,
    series: bool = False,
) -> SynthResult:
    """Write a folder-per-class kidney-CT phantom dataset (``<Class>/*.jpg``).

    Args:
        out_dir: dataset root to create; must not exist or be empty.
        n: total number of images, split in the real dataset's class proportions.
        seed: random seed; the same seed writes byte-identical files.
        image_size: side of the square slices in pixels.
        slices_per_patient: inclusive range of slices per synthetic patient.
        classes: which classes to write (a subset of Normal, Cyst, Stone, Tumor).
        series: a patient's slices are consecutive sections of one scan, as in a real CT
            export: the anatomy, the bowel gas and the position change smoothly from slice to
            slice, so each slice's nearest neighbours are its own patient's (the case the
            split's near-duplicate grouping exists for). Off: every slice is drawn afresh.

    Returns:
        The root, per-class image counts and the number of synthetic patients.

    Raises:
        SynthError: bad arguments, or ``out_dir`` exists and is not empty.
    """
    low, high = _check_kidney_ct_arguments(classes, image_size, slices_per_patient)
    out_dir = _fresh(out_dir)
    counts = proportional_counts(n, {c: KIDNEY_CT_COUNTS[c] for c in classes})
    rng = np.random.default_rng(seed)
    with atomic_path(out_dir) as staging:
        groups = _write_kidney_ct_patients(
            staging, rng, counts, classes, image_size, (low, high), series=series
        )
        with open(staging / GROUPS_FILE, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "group"])
            writer.writerows(groups)
    patients = len({group for _, group in groups})
    return SynthResult(root=out_dir, counts=counts, patients=patients)


def _check_kidney_ct_arguments(
    classes: Sequence[str], image_size: int, slices_per_patient: tuple[int, int]
) -> tuple[int, int]:
    """The (low, high) slices per patient, after checking :func:`synth_kidney_ct`'s arguments.

    Raises:
        SynthError: an unknown class, a too small image or an empty slice range.
    """
    unknown = set(classes) - set(KIDNEY_CT_CLASSES)
    if unknown:
        raise SynthError(f"unknown kidney-CT classes {sorted(unknown)}; known: {KIDNEY_CT_CLASSES}")
    if image_size < 32:
        raise SynthError(f"image_size={image_size} is too small; use at least 32")
    low, high = slices_per_patient
    if not 1 <= low <= high:
        raise SynthError(f"slices_per_patient={slices_per_patient} must satisfy 1 <= low <= high")
    return low, high


def _write_kidney_ct_patients(
    staging: Path, rng: np.random.Generator, counts: dict[str, int], classes: Sequence[str],
    image_size: int, slices: tuple[int, int], *, series: bool,
) -> list[tuple[str, str]]:  # fmt: skip
    """Draw patients class by class until each class has its count of slices, writing
    ``<Class>/P<patient>_s<slice>.jpg`` under ``staging``.

    Returns:
        (relative path, patient group) of every slice, in the order written.
    """
    low, high = slices
    groups: list[tuple[str, str]] = []
    patient = 0
    for label in classes:
        (staging / label).mkdir(parents=True)
        remaining = counts[label]
        while remaining > 0:
            patient += 1
            n_slices = min(remaining, int(rng.integers(low, high + 1)))
            anatomy = _Anatomy.sample(rng, image_size, label, series=series)
            for slice_index in range(n_slices):
                image = anatomy.render(rng, slice_index, series=series)
                group = f"P{patient:05d}"
                rel = f"{label}/{group}_s{slice_index:02d}.jpg"
                cv2.imwrite(str(staging / rel), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
                groups.append((rel, group))
            remaining -= n_slices
    return groups


@dataclass(frozen=True)
class _Anatomy:
    """One synthetic patient: shared anatomy and finding for all of their slices."""

    size: int
    label: str
    body_axes: tuple[float, float]
    kidney_offset: tuple[float, float]
    kidney_axes: tuple[float, float]
    kidney_angle: float
    brightness: float
    noise: float
    lesion_side: int
    lesion_pos: tuple[float, float]
    lesion_radius: float
    lesion_contrast: float
    phase: float
    gas: tuple[tuple[float, float, float], ...]
    organs: tuple[tuple[float, ...], ...]

    @classmethod
    def sample(
        cls, rng: np.random.Generator, size: int, label: str, *, series: bool = False
    ) -> _Anatomy:
        s = size
        faint = rng.random() < 0.15  # some findings are subtle, as in real scans
        radius = {
            "Cyst": rng.uniform(0.035, 0.07) * s,
            "Stone": rng.uniform(0.012, 0.025) * s,
            "Tumor": rng.uniform(0.06, 0.10) * s,
        }.get(label, 0.0)
        contrast = rng.uniform(0.35, 0.55) if faint else rng.uniform(0.7, 1.0)
        return cls(
            size=s,
            label=label,
            body_axes=(rng.uniform(0.38, 0.46) * s, rng.uniform(0.28, 0.34) * s),
            kidney_offset=(rng.uniform(0.17, 0.22) * s, rng.uniform(0.06, 0.12) * s),
            kidney_axes=(rng.uniform(0.055, 0.075) * s, rng.uniform(0.085, 0.11) * s),
            kidney_angle=rng.uniform(-25, 25),
            brightness=rng.uniform(0.85, 1.15),
            noise=rng.uniform(6, 14),
            lesion_side=int(rng.integers(0, 2)),
            lesion_pos=(rng.uniform(-0.4, 0.4), rng.uniform(-0.5, 0.5)),
            lesion_radius=radius,
            lesion_contrast=contrast,
            # Only a series draws these, so other phantoms stay byte-identical to earlier ones.
            phase=float(rng.uniform(0, 2 * np.pi)) if series else 0.0,
            gas=tuple(
                (
                    rng.uniform(-0.2, 0.2) * s,
                    rng.uniform(-0.22, -0.02) * s,
                    rng.uniform(0.015, 0.04) * s,
                )
                for _ in range(int(rng.integers(1, 4)) if series else 0)
            ),
            organs=tuple(  # liver, spleen, bowel loops: each body's own layout
                (
                    rng.uniform(-0.25, 0.25) * s,
                    rng.uniform(-0.2, 0.05) * s,
                    rng.uniform(0.05, 0.13) * s,
                    rng.uniform(0.04, 0.1) * s,
                    rng.uniform(0, 180),
                    rng.uniform(60, 200),
                )
                for _ in range(int(rng.integers(3, 6)) if series else 0)
            ),
        )

    def render(
        self, rng: np.random.Generator, slice_index: int, *, series: bool = False
    ) -> np.ndarray:
        s = self.size
        centre = np.array([s / 2, s / 2 + 0.03 * s])
        if series:  # one scan: every change is a smooth function of the slice position
            z = self.phase + 0.25 * slice_index
            drift = 0.01 * s * np.array([np.sin(z), np.cos(z)])
            kidney_scale = 1.0 + 0.08 * np.sin(z)
        else:  # neighbouring slices: anatomy drifts a little and the kidneys change size
            drift = rng.normal(0, 0.01 * s, size=2)
            kidney_scale = 1.0 + 0.08 * np.sin(slice_index * 0.9) + rng.normal(0, 0.03)
        img = np.full((s, s), 8.0, dtype=np.float32)
        axes_body = (int(self.body_axes[0]), int(self.body_axes[1]))
        cv2.ellipse(img, _pt(centre + drift), axes_body, 0, 0, 360, 70, -1)  # subcutaneous fat
        inner = (int(axes_body[0] * 0.88), int(axes_body[1] * 0.85))
        cv2.ellipse(img, _pt(centre + drift), inner, 0, 0, 360, 105, -1)  # soft tissue
        spine = centre + drift + np.array([0, 0.17 * s])
        cv2.circle(img, _pt(spine), int(0.05 * s), 235, -1)  # vertebral body
        cv2.circle(img, _pt(spine), int(0.025 * s), 150, -1)
        if series:  # organs and bowel gas: the patient's own, moving with the anatomy
            for k, (x, y, a, b, angle, value) in enumerate(self.organs):
                scale = 1.0 + 0.15 * np.sin(z + k)
                where = _pt(centre + drift * 2 + np.array([x, y]))
                cv2.ellipse(img, where, _axes(np.array([a, b]) * scale), angle, 0, 360, value, -1)
            for x, y, radius in self.gas:
                cv2.circle(img, _pt(centre + drift * 2 + np.array([x, y])), int(radius), 15, -1)
        else:
            for _ in range(int(rng.integers(1, 4))):
                gas = centre + drift + rng.uniform([-0.2 * s, -0.22 * s], [0.2 * s, -0.02 * s])
                cv2.circle(img, _pt(gas), int(rng.uniform(0.015, 0.04) * s), 15, -1)
        kidney_centres = []
        for side in (-1, 1):
            kc = centre + drift + np.array([side * self.kidney_offset[0], self.kidney_offset[1]])
            axes = np.array(self.kidney_axes) * kidney_scale
            if self.label == "Tumor" and side == (1 if self.lesion_side else -1):
                axes = axes * 1.25  # tumours enlarge the kidney
            cv2.ellipse(img, _pt(kc), _axes(axes), side * self.kidney_angle, 0, 360, 145, -1)
            cv2.ellipse(img, _pt(kc), _axes(axes * 0.45), side * self.kidney_angle, 0, 360, 120, -1)
            kidney_centres.append((kc, axes))
        self._draw_finding(img, rng, kidney_centres)
        img *= self.brightness
        img += rng.normal(0, self.noise, size=img.shape).astype(np.float32)
        img = cv2.GaussianBlur(img, (3, 3), 0.8)
        return np.clip(img, 0, 255).astype(np.uint8)

    def _draw_finding(
        self,
        img: np.ndarray,
        rng: np.random.Generator,
        kidneys: list[tuple[np.ndarray, np.ndarray]],
    ) -> None:
        if self.label == "Normal":
            return
        kc, axes = kidneys[self.lesion_side]
        pos = kc + np.array(self.lesion_pos) * axes + rng.normal(0, 0.3, size=2)
        radius = max(1, int(round(self.lesion_radius * rng.uniform(0.85, 1.15))))
        if self.label == "Cyst":
            value = 145 - 110 * self.lesion_contrast
            cv2.circle(img, _pt(pos), radius, value, -1)
        elif self.label == "Stone":
            value = 145 + 110 * self.lesion_contrast
            cv2.circle(img, _pt(pos), radius, value, -1)
        elif self.label == "Tumor":
            mask = np.zeros_like(img)
            for _ in range(5):  # an irregular, lobulated mass
                lobe = pos + rng.normal(0, radius * 0.35, size=2)
                cv2.circle(mask, _pt(lobe), max(1, int(radius * rng.uniform(0.6, 1.0))), 1, -1)
            texture = rng.normal(0, 25 * self.lesion_contrast, size=img.shape).astype(np.float32)
            texture = cv2.GaussianBlur(texture, (5, 5), 1.5)
            mass = 145 + 30 * self.lesion_contrast + texture
            img[:] = np.where(mask > 0, mass, img)


def _pt(xy: np.ndarray) -> tuple[int, int]:
    return int(round(float(xy[0]))), int(round(float(xy[1])))


def _axes(axes: np.ndarray) -> tuple[int, int]:
    return max(1, int(round(float(axes[0])))), max(1, int(round(float(axes[1]))))


# --- other layouts ---------------------------------------------------------------------------

# Kvasir-Capsule class counts (47,238 labelled frames, seed 001's 14 classes).
CAPSULE_COUNTS = {
    "Normal clean mucosa": 34338, "Ileocecal valve": 4189, "Reduced mucosal view": 2906,
    "Pylorus": 1529, "Angiectasia": 866, "Ulcer": 854, "Foreign body": 776,
    "Lymphangiectasia": 592, "Erosion": 506, "Blood - fresh": 446, "Erythema": 159,
    "Polyp": 55, "Blood - hematin": 12, "Ampulla of vater": 10,
}  # fmt: skip
# Chest X-ray (Kaggle, seed 002) class counts of the train split.
CHEST_XRAY_COUNTS = {"NORMAL": 1341, "PNEUMONIA": 3875}


def synth_capsule_csv(
    out_dir: Path, *, n: int = 700, n_test: int = 40, seed: int = 0, image_size: int = 96,
    min_per_class: int = 12,
) -> SynthResult:  # fmt: skip
    """Write a Kvasir-Capsule-shaped dataset: ``Training_set.csv`` + ``train/``, and an unlabelled
    ``Testing_set.csv`` + ``test/`` (hidden labels in ``test_labels.csv`` for checking predictions).

    Frames are pink mucosa textures; each finding is a blob whose colour and shape identify the
    class ("Normal clean mucosa" has none). Counts follow the real 14-class imbalance, with at
    least ``min_per_class`` images per class.
    """
    out_dir = _fresh(out_dir)
    classes = list(CAPSULE_COUNTS)
    counts = proportional_counts(n, CAPSULE_COUNTS, minimum=min_per_class)
    rng = np.random.default_rng(seed)
    with atomic_path(out_dir) as staging:
        for split, csv_name, labelled in (
            ("train", "Training_set.csv", True),
            ("test", "Testing_set.csv", False),
        ):
            (staging / split).mkdir(parents=True)
            plan = (
                [c for c in classes for _ in range(counts[c])]
                if labelled
                else list(rng.choice(classes, size=n_test, p=_probabilities(CAPSULE_COUNTS)))
            )
            rows = []
            for i, label in enumerate(plan):
                name = f"frame_{split}_{i:05d}.jpg"
                image = _capsule_frame(rng, image_size, classes.index(label))
                cv2.imwrite(str(staging / split / name), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
                rows.append((name, label))
            with open(staging / csv_name, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["filename", "label"] if labelled else ["filename"])
                writer.writerows(rows if labelled else [(name,) for name, _ in rows])
            if not labelled:
                with open(staging / "test_labels.csv", "w", newline="") as handle:
                    csv.writer(handle).writerows([("filename", "label"), *rows])
    return SynthResult(root=out_dir, counts=counts, patients=0)


def synth_chest_xray_splits(
    out_dir: Path, *, n: int = 300, seed: int = 0, image_size: int = 96
) -> SynthResult:
    """Write a chest-X-ray-shaped dataset in split folders: ``train/ val/ test/`` of
    ``NORMAL/ PNEUMONIA/`` (70/10/20 %). Pneumonia adds patchy opacities to a lung field."""
    out_dir = _fresh(out_dir)
    counts = proportional_counts(n, CHEST_XRAY_COUNTS)
    rng = np.random.default_rng(seed)
    with atomic_path(out_dir) as staging:
        for label, total in counts.items():
            order = rng.permutation(total)
            for i in range(total):
                fraction = order[i] / total
                split = "train" if fraction < 0.7 else "val" if fraction < 0.8 else "test"
                folder = staging / split / label
                folder.mkdir(parents=True, exist_ok=True)
                image = _chest_xray(rng, image_size, pneumonia=label == "PNEUMONIA")
                cv2.imwrite(str(folder / f"{label.lower()}_{i:05d}.jpeg"), image)
    return SynthResult(root=out_dir, counts=counts, patients=0)


def synth_kidney_ct_dicom(
    out_dir: Path, *, n: int = 200, seed: int = 0, image_size: int = 128
) -> SynthResult:
    """The kidney-CT phantom as a hospital-style DICOM export (``<Class>/*.dcm``).

    Patients come from ``PatientID`` (no ``groups.csv``; every file carries the canary
    ``PatientName`` :data:`CANARY_PATIENT_NAME`, which must never leave the files). The files
    mix what PACS exports hold: CT slices in Hounsfield units (int16, rescale intercept −1024;
    window 40/400 shows them) as explicit/implicit VR little endian, RLE lossless and JPEG 2000
    lossless; every seventh slice as a 12-bit MONOCHROME1 radiograph (``DX``) with its own
    window in the header; and every fifth patient's slices as one multi-frame CT file.
    """
    out_dir = _fresh(out_dir)
    jpeg_root = out_dir.parent / f".{out_dir.name}-jpeg-staging"
    result = synth_kidney_ct(jpeg_root, n=n, seed=seed, image_size=image_size)
    try:
        with atomic_path(out_dir) as staging:
            by_patient: dict[tuple[str, str], list[Path]] = {}
            for jpeg in sorted(jpeg_root.rglob("*.jpg")):
                by_patient.setdefault((jpeg.parent.name, jpeg.stem.split("_")[0]), []).append(jpeg)
            for number, ((label, patient), slices) in enumerate(sorted(by_patient.items())):
                pixels = [cv2.imread(str(j), cv2.IMREAD_GRAYSCALE) for j in slices]
                if number % 5 == 0 and len(slices) > 1:
                    _write_dicom(staging / label / f"{patient}_series.dcm", pixels, patient, 0)
                    continue
                for k, (jpeg, image) in enumerate(zip(slices, pixels, strict=True)):
                    _write_dicom(staging / label / f"{jpeg.stem}.dcm", [image], patient, number + k)
    finally:
        import shutil

        shutil.rmtree(jpeg_root, ignore_errors=True)
    return SynthResult(root=out_dir, counts=result.counts, patients=result.patients)


CANARY_PATIENT_NAME = "CANARY^NEVER^LOGGED"
"""The patient name every DICOM phantom carries: a test proves it is never written out."""


def _write_dicom(target: Path, images: list[np.ndarray], patient: str, variant: int) -> None:
    """One DICOM file of uint8 phantom ``images`` (one frame each), in the ``variant``'s form."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import (
        CTImageStorage,
        DigitalXRayImageStorageForPresentation,
        JPEG2000Lossless,
        RLELossless,
        generate_uid,
    )
    from pydicom.uid import ExplicitVRLittleEndian as EXPLICIT
    from pydicom.uid import ImplicitVRLittleEndian as IMPLICIT

    radiograph = len(images) == 1 and variant % 7 == 6
    sop = DigitalXRayImageStorageForPresentation if radiograph else CTImageStorage
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = EXPLICIT
    ds.PatientID, ds.PatientName = patient, CANARY_PATIENT_NAME
    ds.Rows, ds.Columns = images[0].shape
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = 16
    if radiograph:  # high is dark, 12 bit, shown through the header's own window
        ds.Modality, ds.PhotometricInterpretation = "DX", "MONOCHROME1"
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        stored = [((255 - image.astype(np.uint16)) * 16).astype(np.uint16) for image in images]
    else:
        ds.Modality, ds.PhotometricInterpretation = "CT", "MONOCHROME2"
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        hu = [image.astype(np.float32) / 255.0 * 400.0 - 160.0 for image in images]  # 40/400
        stored = [(np.rint(h) + 1024).astype(np.int16) for h in hu]
    if len(images) > 1:
        ds.NumberOfFrames = len(images)
    ds.PixelData = np.stack(stored).tobytes()
    syntax = [EXPLICIT, IMPLICIT, RLELossless, JPEG2000Lossless][variant % 4]
    if syntax in (RLELossless, JPEG2000Lossless):
        ds.compress(syntax, np.stack(stored) if len(images) > 1 else stored[0])
    elif syntax == IMPLICIT:
        ds.file_meta.TransferSyntaxUID = syntax
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)


def _fresh(out_dir: Path) -> Path:
    """``out_dir`` as a path, after checking that it is new or empty.

    Raises:
        SynthError: ``out_dir`` exists and is not empty.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SynthError(f"output directory {out_dir} is not empty; choose a new one")
    return out_dir


def _probabilities(counts: dict[str, int]) -> list[float]:
    total = sum(counts.values())
    return [v / total for v in counts.values()]


_PALETTE = [(40, 40, 200), (60, 200, 60), (200, 200, 60), (200, 60, 200), (60, 200, 200),
            (255, 255, 255), (20, 20, 20)]  # fmt: skip


def _capsule_frame(rng: np.random.Generator, size: int, class_index: int) -> np.ndarray:
    base = np.array([120, 130, 200], np.float32) * rng.uniform(0.85, 1.15)  # BGR pink mucosa
    image = np.ones((size, size, 3), np.float32) * base
    texture = cv2.GaussianBlur(rng.normal(0, 18, (size, size)).astype(np.float32), (7, 7), 3)
    image += texture[:, :, None]
    cv2.circle(image, (size // 2, size // 2), size // 2, (0, 0, 0), 2)  # capsule vignette ring
    if class_index > 0:
        colour = _PALETTE[(class_index - 1) % len(_PALETTE)]
        centre = tuple(int(v) for v in rng.integers(size // 4, 3 * size // 4, size=2))
        radius = int(rng.integers(size // 12, size // 6))
        if (class_index - 1) // len(_PALETTE) == 0:
            cv2.circle(image, centre, radius, colour, -1)
        else:
            cv2.rectangle(
                image,
                (centre[0] - radius, centre[1] - radius),
                (centre[0] + radius, centre[1] + radius),
                colour,
                -1,
            )
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _chest_xray(rng: np.random.Generator, size: int, *, pneumonia: bool) -> np.ndarray:
    image = np.full((size, size), 170, np.float32)
    for side in (-1, 1):
        centre = (int(size / 2 + side * size * 0.2), int(size * 0.5))
        axes = (int(size * rng.uniform(0.14, 0.17)), int(size * rng.uniform(0.3, 0.36)))
        cv2.ellipse(image, centre, axes, 0, 0, 360, 60, -1)  # dark lung field
    cv2.rectangle(image, (size // 2 - size // 30, 0), (size // 2 + size // 30, size), 210, -1)
    if pneumonia:
        side = rng.choice([-1, 1])
        for _ in range(int(rng.integers(3, 7))):
            spot = (
                int(size / 2 + side * size * rng.uniform(0.12, 0.28)),
                int(size * rng.uniform(0.3, 0.7)),
            )
            cv2.circle(image, spot, int(size * rng.uniform(0.03, 0.07)), 140, -1)
    image = cv2.GaussianBlur(image, (5, 5), 2) + rng.normal(0, 8, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def synth_cats_dogs(
    out_dir: Path, *, n: int = 300, seed: int = 0, image_size: int = 96
) -> SynthResult:
    """Write a ``cats_and_dogs_filtered``-shaped dataset: ``train/`` and ``validation/`` of
    ``cats/ dogs/`` (2:1, balanced classes, as the filtered Kaggle set). A cat is a round face
    with pointed ears, a dog a longer face with drooping ears, on cluttered backgrounds."""
    out_dir = _fresh(out_dir)
    counts = {"cats": n // 2, "dogs": n - n // 2}
    rng = np.random.default_rng(seed)
    with atomic_path(out_dir) as staging:
        for label, total in counts.items():
            for i in range(total):
                split = "train" if i < round(total * 2 / 3) else "validation"
                folder = staging / split / label
                folder.mkdir(parents=True, exist_ok=True)
                image = _pet(rng, image_size, dog=label == "dogs")
                cv2.imwrite(str(folder / f"{label[:-1]}.{i}.jpg"), image)
    return SynthResult(root=out_dir, counts=counts, patients=0)


def _pet(rng: np.random.Generator, size: int, *, dog: bool) -> np.ndarray:
    image = rng.integers(40, 200, size=3).astype(np.float32) * np.ones((size, size, 3), np.float32)
    for _ in range(6):  # background clutter
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        colour = tuple(float(v) for v in rng.integers(0, 255, 3))
        cv2.circle(image, centre, int(rng.uniform(0.05, 0.15) * size), colour, -1)
    fur = tuple(float(v) for v in rng.integers(60, 230, 3))
    cx, cy = (int(v) for v in rng.uniform(0.4, 0.6, 2) * size)
    scale = rng.uniform(0.18, 0.26) * size
    face = (int(scale), int(scale * (1.35 if dog else 1.0)))
    cv2.ellipse(image, (cx, cy), face, 0, 0, 360, fur, -1)
    for side in (-1, 1):
        if dog:  # drooping ears along the sides of the face
            ear = (cx + side * int(scale * 0.95), cy + int(scale * 0.2))
            axes = (int(scale * 0.3), int(scale * 0.8))
            cv2.ellipse(image, ear, axes, side * 15, 0, 360, fur, -1)
        else:  # pointed ears on top
            tip = (cx + side * int(scale * 0.7), cy - int(scale * 1.6))
            inner = (cx + side * int(scale * 0.2), cy - int(scale * 0.7))
            outer = (cx + side * int(scale * 0.95), cy - int(scale * 0.4))
            cv2.fillPoly(image, [np.array([inner, outer, tip], np.int32)], fur)
        eye = (cx + side * int(scale * 0.4), cy - int(scale * 0.15))
        cv2.circle(image, eye, max(1, int(scale * 0.1)), (20.0, 20.0, 20.0), -1)
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


XRAY3_COUNTS = {"1_NORMAL": 1341, "2_BACTERIA": 2530, "3_VIRUS": 1345}


def synth_xray3_splits(
    out_dir: Path, *, n: int = 300, seed: int = 0, image_size: int = 96
) -> SynthResult:
    """Write seed 003's three-class chest X-ray set: ``train/`` of ``1_NORMAL/ 2_BACTERIA/
    3_VIRUS/`` in the real proportions. Bacterial pneumonia is one dense lobar opacity; viral
    pneumonia many faint patches in both lungs."""
    out_dir = _fresh(out_dir)
    counts = proportional_counts(n, XRAY3_COUNTS)
    rng = np.random.default_rng(seed)
    with atomic_path(out_dir) as staging:
        for label, total in counts.items():
            folder = staging / "train" / label
            folder.mkdir(parents=True)
            for i in range(total):
                image = _chest_xray(rng, image_size, pneumonia=False).astype(np.float32)
                size = image_size
                if label == "2_BACTERIA":
                    centre = (
                        int(size * rng.choice([0.3, 0.7])),
                        int(size * rng.uniform(0.45, 0.7)),
                    )
                    cv2.circle(image, centre, int(size * rng.uniform(0.1, 0.15)), 235.0, -1)
                elif label == "3_VIRUS":
                    for _ in range(14):
                        spot = (
                            int(size * rng.uniform(0.2, 0.8)),
                            int(size * rng.uniform(0.3, 0.75)),
                        )
                        cv2.circle(image, spot, max(1, int(size * 0.03)), 205.0, -1)
                image = cv2.GaussianBlur(image, (3, 3), 1)
                cv2.imwrite(str(folder / f"{label[2:].lower()}_{i:05d}.jpeg"),
                            np.clip(image, 0, 255).astype(np.uint8))  # fmt: skip
    return SynthResult(root=out_dir, counts=counts, patients=0)


def synth_for_recipe(
    out_dir: Path, data: DataConfig, *, layout: str, n: int, seed: int, image_size: int,
    channels: int,
) -> SynthResult:  # fmt: skip
    """A phantom for any recipe: its classes, in its layout (``class_folders``,
    ``split_folders`` as ``train/ val/ test/``, or ``csv`` with the recipe's file, columns and
    image folder). Class ``i`` of ``k`` is drawn as ``1 + i % 3`` blobs of a size and
    brightness that step with ``i // 3`` on a textured background; the first class has twice
    the images of the others (imbalanced, as medical sets are). Every synthetic patient gives
    1–3 images sharing their background, named in ``groups.csv`` (or in the CSV's
    ``data.csv_group_column``).

    Raises:
        SynthError: the layout has no generic phantom (``dicom``), or ``n`` is too small.
    """
    if layout not in {"class_folders", "split_folders", "csv"}:
        raise SynthError(
            f"no generic phantom for layout {layout!r}; use class_folders, split_folders or csv "
            "(--layout), or write a generator (docs/extending.md)"
        )
    suffix, image_dir, csv_file = _generic_names(data, layout)
    weights = {name: 2 if i == 0 else 1 for i, name in enumerate(data.classes)}
    least = 3 if layout == "split_folders" else 1  # one image each in train/, val/ and test/
    counts = proportional_counts(n, weights, minimum=least)
    out_dir = _fresh(out_dir)
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str, str]] = []
    patient = 0
    with atomic_path(out_dir) as staging:
        for index, (label, total) in enumerate(counts.items()):
            left = 0
            for i in range(total):
                if left == 0:
                    patient, left = patient + 1, int(rng.integers(1, 4))
                    background = rng.uniform(40, 110, size=(image_size, image_size))
                left -= 1
                image = _blobs(rng, background, index)
                if channels == 3:
                    tint = np.array(_PALETTE[index % len(_PALETTE)], np.float32) / 255
                    image = image[..., None] * (0.6 + 0.4 * tint)
                split = (
                    ("train", "val", "test")[i]
                    if i < 3
                    else (
                        "train" if rng.random() < 0.7 else "val" if rng.random() < 0.33 else "test"
                    )
                )
                folder = {"class_folders": PurePosixPath(label), "csv": image_dir,
                          "split_folders": PurePosixPath(split, label)}[layout]  # fmt: skip
                name = (folder / f"P{patient:05d}_{index}_{i:05d}{suffix}").as_posix()
                (staging / folder).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(staging / name), np.clip(image, 0, 255).astype(np.uint8))
                rows.append((name, label, f"P{patient:05d}"))
        _write_labels_and_groups(staging, data, layout, rows, image_dir, csv_file)
    return SynthResult(root=out_dir, counts=counts, patients=patient)


_WRITABLE = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _generic_names(data: DataConfig, layout: str) -> tuple[str, PurePosixPath, PurePosixPath]:
    """The file extension, the CSV layout's image folder and CSV file of a generic phantom,
    after checking that every name stays inside the output folder.

    Raises:
        SynthError: no extension OpenCV writes, a class that is not one folder name (folder
            layouts), or a CSV path that is absolute or climbs out.
    """
    suffix = next((e.lower() for e in data.extensions if e.lower() in _WRITABLE), None)
    if suffix is None:
        raise SynthError(
            f"data.extensions {data.extensions} has none the phantom can write "
            f"({', '.join(_WRITABLE)}); add one"
        )
    if layout != "csv":
        for name in data.classes:
            if name in {"", ".", ".."} or any(c in name for c in "/\\\0"):
                raise SynthError(
                    f"class {name!r} cannot be a folder name, and the {layout} layout keeps each "
                    "class in a folder of its name; rename it (or use the csv layout)"
                )
    paths = {"data.csv_image_dir": PurePosixPath(data.csv_image_dir or "."),
             "data.csv_file": PurePosixPath(data.csv_file)}  # fmt: skip
    for key, path in paths.items():
        if path.is_absolute() or ".." in path.parts or (key == "data.csv_file" and not path.name):
            raise SynthError(f"{key}={str(path)!r} must be a relative path inside the dataset")
    return suffix, paths["data.csv_image_dir"], paths["data.csv_file"]


def _blobs(rng: np.random.Generator, background: np.ndarray, index: int) -> np.ndarray:
    size = background.shape[0]
    image = background + rng.normal(0, 8, background.shape)
    radius = max(2, int(size * (0.06 + 0.03 * (index // 3 % 4))))
    for _ in range(1 + index % 3):
        centre = tuple(int(v) for v in rng.integers(radius, size - radius, 2))
        cv2.circle(image, centre, radius, 150.0 + 25 * (index // 3 % 4), -1)
    return cv2.GaussianBlur(image, (3, 3), 1)


def _write_labels_and_groups(
    root: Path, data: DataConfig, layout: str, rows: list[tuple[str, str, str]],
    image_dir: PurePosixPath, csv_file: PurePosixPath,
) -> None:  # fmt: skip
    """The CSV layout's labels file (with the group column when the recipe names one), and
    ``groups.csv`` wherever no column carries the groups."""
    if layout == "csv":
        header = [data.csv_path_column, data.csv_label_column]
        group_column = data.csv_group_column
        (root / csv_file).parent.mkdir(parents=True, exist_ok=True)
        with open(root / csv_file, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header + ([group_column] if group_column else []))
            writer.writerows(
                [PurePosixPath(path).relative_to(image_dir).as_posix(), label,
                 *([group] if group_column else [])]
                for path, label, group in rows
            )  # fmt: skip
        if group_column:
            return
    with open(root / GROUPS_FILE, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "group"])
        writer.writerows((path, group) for path, _, group in rows)


SYNTHESIZERS = {
    ("kidney-ct", "class_folders"): synth_kidney_ct,
    ("kidney-ct", "dicom"): synth_kidney_ct_dicom,
    ("chest-xray", "split_folders"): synth_chest_xray_splits,
    ("chest-xray-seed002", "split_folders"): synth_chest_xray_splits,
    ("capsule-endoscopy", "csv"): synth_capsule_csv,
    ("cats-dogs-seed004", "split_folders"): synth_cats_dogs,
    ("kidney-ct-seed000", "class_folders"): synth_kidney_ct,
    ("capsule-endoscopy-seed001", "csv"): synth_capsule_csv,
    ("xray3-seed003", "split_folders"): synth_xray3_splits,
}
DEFAULT_LAYOUT = {"kidney-ct": "class_folders", "chest-xray": "split_folders",
                  "chest-xray-seed002": "split_folders", "capsule-endoscopy": "csv",
                  "cats-dogs-seed004": "split_folders", "kidney-ct-seed000": "class_folders",
                  "capsule-endoscopy-seed001": "csv", "xray3-seed003": "split_folders"}  # fmt: skip


def synthesize(recipe: str | Recipe, out_dir: Path, *, layout: str | None = None, n: int,
               seed: int, image_size: int) -> SynthResult:  # fmt: skip
    """Write a phantom dataset for ``recipe`` in ``layout`` (default: the recipe's own).

    ``recipe`` is a shipped recipe's name, or a loaded recipe: one with a shipped recipe's
    name and its ``data`` settings gets that recipe's phantom, any other (an edited copy
    included) the generic one (:func:`synth_for_recipe`).

    Raises:
        SynthError: no generator for this recipe/layout pair, or ``n`` is too small for it.
    """
    if not isinstance(recipe, str):
        shipped = recipe.name in DEFAULT_LAYOUT and _shipped_data(recipe.name) == recipe.data
        if not shipped:
            chosen = layout or (recipe.data.layout if recipe.data.layout != "auto" else "")
            return synth_for_recipe(out_dir, recipe.data, layout=chosen or "class_folders", n=n,
                                    seed=seed, image_size=image_size,
                                    channels=recipe.image.channels)  # fmt: skip
        layout = layout or (recipe.data.layout if recipe.data.layout != "auto" else None)
        recipe = recipe.name
    layout = layout or DEFAULT_LAYOUT.get(recipe, "")
    generator = SYNTHESIZERS.get((recipe, layout))
    if generator is None:
        known = ", ".join(f"{name} ({kind})" for name, kind in SYNTHESIZERS)
        raise SynthError(
            f"no phantom generator for recipe {recipe!r} with layout {layout!r}; available: {known}"
        )
    return generator(out_dir, n=n, seed=seed, image_size=image_size)


def _shipped_data(name: str) -> DataConfig:
    from medml.config import RECIPES_DIR, load_recipe

    return load_recipe(RECIPES_DIR / f"{name}.yaml").data
