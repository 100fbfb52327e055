"""Contracts every registered extension gets automatically (imbalanced-learn's
``parametrize_with_checks`` style): a new strategy, model, layout, augmentation op or metric is
checked here by registering it, with no test to edit."""

from __future__ import annotations

import csv
import inspect
import os
from pathlib import Path

import numpy as np
import pytest

from medml.config import AugmentConfig, TrainConfig, load_recipe
from medml.extensions import AUGMENT_OPS, BALANCERS, LAYOUTS, METRICS, MODELS

Y_TRAIN = np.array([0] * 24 + [1] * 12 + [2] * 6)


def _images(y: np.ndarray, size: int = 8) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 200, size=(len(y), size, size, 1))
    return np.clip(base + y[:, None, None, None] * 20, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("strategy", BALANCERS.names())
def test_strategy_plans_within_the_training_rows_it_is_given(strategy: str) -> None:
    """A plan indexes only the rows it was given (it cannot reach validation or holdout rows),
    keeps every class, and its array sampler honours ``fit_resample``."""
    plan = BALANCERS.get(strategy)(Y_TRAIN, 3, TrainConfig(balance=strategy), 0)
    assert plan.indices.dtype.kind == "i"
    assert plan.indices.min() >= 0 and plan.indices.max() < len(Y_TRAIN)
    y = Y_TRAIN[plan.indices]
    assert set(np.unique(y)) == {0, 1, 2}
    if plan.class_weight is not None:
        assert set(plan.class_weight) == {0, 1, 2}
    sampler = plan.array_sampler
    if sampler is None:
        return
    init = inspect.signature(type(sampler).__init__).parameters
    assert all(p.kind is p.KEYWORD_ONLY for name, p in init.items() if name != "self")
    x = _images(y)
    x_res, y_res = sampler.fit_resample(x, y)
    assert len(x_res) == len(y_res) >= len(y) and x_res.dtype == x.dtype
    assert x_res.shape[1:] == x.shape[1:]
    np.testing.assert_array_equal(x_res[: len(x)], x)  # originals kept, synthetic appended
    assert any(name.endswith("_") and not name.startswith("_") for name in vars(sampler))


class _ArrayRows:
    """Images by position (the :class:`medml.balance.Rows` a rows sampler is fitted on)."""

    def __init__(self, images: np.ndarray) -> None:
        self.images, self.image_shape = images, images.shape[1:]

    def __len__(self) -> int:
        return len(self.images)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        return self.images[positions]


@pytest.mark.parametrize("strategy", BALANCERS.names())
def test_strategy_declares_capabilities_that_match_its_plan(strategy: str) -> None:
    """Every strategy declares what it needs from the trainer (``Capabilities``), and its plan
    does what the flags say: the trainer dispatches on them and never looks at the strategy's
    name or the type of the rows it makes."""
    from medml.balance import BalanceStrategy, CopiedRows, strategy_capabilities

    registered = BALANCERS.get(strategy)
    assert isinstance(registered, BalanceStrategy), f"{strategy} does not declare capabilities"
    declared = strategy_capabilities(strategy)
    plan = registered(Y_TRAIN, 3, TrainConfig(balance=strategy), 0)
    assert plan.capabilities == declared
    assert (plan.class_weight is not None) == declared.weights_classes
    assert (plan.array_sampler is not None) == declared.resamples_loaded_images
    assert plan.balanced_batches == declared.balanced_batches
    unchanged = np.array_equal(plan.indices, np.arange(len(Y_TRAIN)))
    assert unchanged != declared.resamples_rows  # Y_TRAIN is imbalanced: resampling shows
    assert (plan.rows_sampler is not None) == declared.adds_rows_on_read
    if plan.rows_sampler is None:
        return
    y = Y_TRAIN[plan.indices]
    originals = _ArrayRows(_images(y))
    rows = plan.rows_sampler.fit(originals, y).rows(originals)
    y_rows = plan.rows_sampler.y_
    assert len(rows) == len(y_rows) > len(y) and rows.image_shape == originals.image_shape
    np.testing.assert_array_equal(y_rows[: len(y)], y)  # the fold's rows first, then added ones
    np.testing.assert_array_equal(rows.gather(np.arange(len(y))), originals.images)
    if declared.augments_copies_per_batch:  # the added rows are copies, augmented on read
        assert isinstance(rows, CopiedRows) and rows.copies_from == len(y)
        added = rows.gather(np.arange(len(y), len(rows)))
        for image, label in zip(added, y_rows[len(y) :], strict=True):
            same = (originals.images[y == label] == image).all(axis=(1, 2, 3))
            assert same.any(), "a copy is not an unaugmented image of its own class"


@pytest.mark.parametrize("model", MODELS.names())
@pytest.mark.parametrize("channels", [1, 3])
def test_model_builds_for_grey_and_rgb_and_outputs_probabilities(model: str, channels: int) -> None:
    from medml.models import build_model

    cfg = TrainConfig(model=model)
    built = build_model((32, 32, channels), 4, cfg, name=f"{model}_{channels}")
    x = np.random.default_rng(0).integers(0, 255, size=(2, 32, 32, channels)).astype("uint8")
    proba = built.predict(x, verbose=0)
    assert proba.shape == (2, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def _phantom(layout: str, root: Path) -> str:
    """Write the layout's phantom; returns the recipe it belongs to."""
    from medml.data.synthetic import SYNTHESIZERS

    matches = [(recipe, gen) for (recipe, kind), gen in SYNTHESIZERS.items() if kind == layout]
    assert matches, f"layout {layout!r} has no phantom generator in medml.data.synthetic"
    recipe, generator = matches[0]
    generator(root, n=200, seed=0, image_size=32)
    return recipe


def _add_bad_row(root: Path, layout: str) -> str:
    """A listed-but-missing file (CSV) or a dangling symlink among the images."""
    if layout == "csv":
        with open(root / "Training_set.csv", "a", newline="") as handle:
            csv.writer(handle).writerow(["missing_frame.jpg", "Normal clean mucosa"])
        return "missing_frame.jpg"
    class_dir = next(p for p in sorted(root.rglob("*")) if p.is_dir() and any(p.iterdir())
                     and any(f.is_file() for f in p.iterdir()))  # fmt: skip
    suffix = next(f.suffix for f in class_dir.iterdir() if f.is_file())
    os.symlink(root / "nowhere" / f"gone{suffix}", class_dir / f"dangling{suffix}")
    return f"dangling{suffix}"


@pytest.mark.parametrize("layout", LAYOUTS.names())
def test_layout_reads_its_phantom_and_reports_bad_rows_by_file(layout: str, tmp_path: Path) -> None:
    from medml.data.layouts import discover

    root = tmp_path / layout
    recipe = load_recipe(_phantom(layout, root), overrides=[f"data.layout={layout}"])
    bad = _add_bad_row(root, layout)
    used, items = discover(root, recipe.data)
    assert used == layout
    good = [item for item in items if not item.issue]
    assert len(good) >= 150  # files: 200 images, some of them frames of one DICOM series file
    assert {item.label for item in good} <= set(recipe.data.classes)
    flagged = [item for item in items if item.issue]
    assert len(flagged) == 1 and bad in flagged[0].path + flagged[0].issue


@pytest.mark.parametrize("op", AUGMENT_OPS.names())
def test_augmentation_op_switches_on_and_off_and_keeps_the_value_range(op: str) -> None:
    import keras

    off = AugmentConfig(rotation_degrees=0, horizontal_flip=False, translate=0, zoom=0,
                        blur_sigma=0, brightness=0)  # fmt: skip
    assert AUGMENT_OPS.get(op)(off, 0) is None, f"{op} is on although every setting is off"
    layer = AUGMENT_OPS.get(op)(AugmentConfig(brightness_factor=(0.7, 1.3)), 0)
    assert layer is not None, f"{op} is off although every setting is on"
    images = np.random.default_rng(0).integers(0, 255, size=(4, 16, 16, 1)).astype("float32")
    out = keras.ops.convert_to_numpy(layer(images, training=True))
    assert out.shape == images.shape
    assert out.min() >= -1e-3 and out.max() <= 255 + 1e-3


@pytest.mark.parametrize("name", METRICS.names())
def test_metric_is_computed_for_every_evaluation_and_usable_in_a_gate(name: str) -> None:
    from medml.config import GateConfig
    from medml.evaluate import clinical_metrics
    from medml.metrics import check_gate

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=60)
    proba = rng.dirichlet(np.ones(3), size=60)
    metrics = clinical_metrics(y, proba, ["a", "b", "c"], bootstrap=0)
    value = metrics.value(name)
    values = list(value.values()) if isinstance(value, dict) else [value]
    assert values and all(np.isfinite(v) for v in values)
    gate = GateConfig.model_validate({"thresholds": {name: {"min": -1.0, "max": 2.0}},
                                      "non_inferiority": {name: 0.0},
                                      "require_better_than_chance": False})  # fmt: skip
    assert check_gate(metrics, gate, metrics).passed
