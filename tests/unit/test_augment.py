"""Augmentation policies and settings (medml.augment): one_of, multiplicative brightness,
fill mode, and copies drawn without replacement."""

from __future__ import annotations

import numpy as np
import pytest

from medml.augment import RandAugment, copy_sources
from medml.config import AugmentConfig

OFF = {"rotation_degrees": 0, "horizontal_flip": False, "translate": 0, "zoom": 0,
       "blur_sigma": 0, "brightness": 0}  # fmt: skip


def _images(n: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(20, 235, size=(n, 24, 24, 1)).astype("float32")


def test_one_of_applies_exactly_one_op_per_image() -> None:
    images = _images()
    config = AugmentConfig(**{**OFF, "blur_sigma": 3.0, "brightness_factor": (0.5, 0.5)},
                           policy="one_of")  # fmt: skip
    out = np.asarray(RandAugment(config, seed=1)(images))
    darkened = np.isclose(out, images * 0.5, atol=1e-3).all(axis=(1, 2, 3))
    blurred = ~darkened & np.isclose(out.mean(axis=(1, 2, 3)), images.mean(axis=(1, 2, 3)), atol=8)
    assert (darkened | blurred).all()  # never both: a blurred image keeps its brightness
    assert 0.2 < darkened.mean() < 0.8  # both ops are drawn

    stacked = np.asarray(RandAugment(config.model_copy(update={"policy": "all"}), seed=1)(images))
    assert np.allclose(stacked.mean(axis=(1, 2, 3)), images.mean(axis=(1, 2, 3)) * 0.5, atol=4)


def test_brightness_factor_multiplies_within_its_range() -> None:
    images = _images()
    config = AugmentConfig(**OFF, brightness_factor=(0.7, 1.3))
    out = np.asarray(RandAugment(config, seed=0)(images))
    factors = out.reshape(len(out), -1).sum(axis=1) / images.reshape(len(out), -1).sum(axis=1)
    assert factors.min() >= 0.65 and factors.max() <= 1.3 + 1e-6  # clipping at 255 lowers some
    assert factors.std() > 0.05
    with pytest.raises(ValueError, match="give \\[low, high\\]"):
        AugmentConfig(brightness_factor=(1.3, 0.7))


@pytest.mark.parametrize("fill_mode", ["constant", "nearest"])
def test_fill_mode_reaches_the_geometric_ops(fill_mode: str) -> None:
    images = np.full((8, 24, 24, 1), 200.0, "float32")
    config = AugmentConfig(**{**OFF, "translate": 0.4}, fill_mode=fill_mode)
    out = np.asarray(RandAugment(config, seed=0)(images))
    assert (out.min() < 1.0) == (fill_mode == "constant")  # nearest repeats the edge, no black


def test_copies_without_replacement_use_every_source_evenly() -> None:
    rng = np.random.default_rng(0)
    members = np.arange(10, 17)
    sources = copy_sources(members, 30, rng, replace=False)
    counts = np.bincount(sources - 10, minlength=7)
    assert counts.sum() == 30 and counts.max() - counts.min() <= 1
    assert len(set(copy_sources(members, 7, rng, replace=False))) == 7
    drawn = copy_sources(members, 7, np.random.default_rng(3), replace=True)
    assert len(set(drawn)) < 7  # uniform draws repeat
