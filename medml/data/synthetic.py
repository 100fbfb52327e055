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
from pathlib import Path

import cv2
import numpy as np

from medml.io import atomic_path

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


def proportional_counts(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Split ``total`` into integer counts proportional to ``weights`` (largest remainder).

    Raises:
        ValueError: ``total`` is smaller than the number of classes.
    """
    if total < len(weights):
        raise ValueError(
            f"n={total} is too small: need at least one image per class ({len(weights)})"
        )
    weight_sum = sum(weights.values())
    exact = {name: total * w / weight_sum for name, w in weights.items()}
    counts = {name: max(1, int(v)) for name, v in exact.items()}
    by_remainder = sorted(weights, key=lambda name: exact[name] - int(exact[name]), reverse=True)
    i = 0
    while sum(counts.values()) < total:
        counts[by_remainder[i % len(by_remainder)]] += 1
        i += 1
    while sum(counts.values()) > total:
        largest = max(counts, key=counts.get)
        counts[largest] -= 1
    return counts


def synth_kidney_ct(
    out_dir: Path,
    *,
    n: int = 600,
    seed: int = 0,
    image_size: int = 128,
    slices_per_patient: tuple[int, int] = (2, 6),
    classes: Sequence[str] = KIDNEY_CT_CLASSES,
) -> SynthResult:
    """Write a folder-per-class kidney-CT phantom dataset (``<Class>/*.jpg``).

    Args:
        out_dir: dataset root to create; must not exist or be empty.
        n: total number of images, split in the real dataset's class proportions.
        seed: random seed; the same seed writes byte-identical files.
        image_size: side of the square slices in pixels.
        slices_per_patient: inclusive range of slices per synthetic patient.
        classes: which classes to write (a subset of Normal, Cyst, Stone, Tumor).

    Returns:
        The root, per-class image counts and the number of synthetic patients.

    Raises:
        ValueError: bad arguments, or ``out_dir`` exists and is not empty.
    """
    unknown = set(classes) - set(KIDNEY_CT_CLASSES)
    if unknown:
        raise ValueError(f"unknown kidney-CT classes {sorted(unknown)}; known: {KIDNEY_CT_CLASSES}")
    if image_size < 32:
        raise ValueError(f"image_size={image_size} is too small; use at least 32")
    low, high = slices_per_patient
    if not 1 <= low <= high:
        raise ValueError(f"slices_per_patient={slices_per_patient} must satisfy 1 <= low <= high")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"output directory {out_dir} is not empty; choose a new one")

    counts = proportional_counts(n, {c: KIDNEY_CT_COUNTS[c] for c in classes})
    rng = np.random.default_rng(seed)
    groups: list[tuple[str, str]] = []
    patient = 0
    with atomic_path(out_dir) as staging:
        for label in classes:
            (staging / label).mkdir(parents=True)
            remaining = counts[label]
            while remaining > 0:
                patient += 1
                n_slices = min(remaining, int(rng.integers(low, high + 1)))
                anatomy = _Anatomy.sample(rng, image_size, label)
                for slice_index in range(n_slices):
                    image = anatomy.render(rng, slice_index)
                    group = f"P{patient:05d}"
                    rel = f"{label}/{group}_s{slice_index:02d}.jpg"
                    cv2.imwrite(str(staging / rel), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
                    groups.append((rel, group))
                remaining -= n_slices
        with open(staging / GROUPS_FILE, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "group"])
            writer.writerows(groups)
    return SynthResult(root=out_dir, counts=counts, patients=patient)


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

    @classmethod
    def sample(cls, rng: np.random.Generator, size: int, label: str) -> _Anatomy:
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
        )

    def render(self, rng: np.random.Generator, slice_index: int) -> np.ndarray:
        s = self.size
        centre = np.array([s / 2, s / 2 + 0.03 * s])
        # Neighbouring slices: anatomy drifts a little and the kidneys change size.
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
        for _ in range(int(rng.integers(1, 4))):  # bowel gas, a dark distractor
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
