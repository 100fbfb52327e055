"""Random image augmentation with Keras 3 preprocessing layers (no ImageDataGenerator).

One augmenter, built from the recipe's ``train.augment`` settings, serves both uses:
training-time augmentation in the tf.data pipeline, and the ``augment_oversample`` balancing
strategy, which tops minority classes up with augmented copies. The settings follow the seeds:
rotation ±25°, horizontal flip, translation, Gaussian blur, zoom and brightness 0.7–1.3.

Each op is a function ``(config, seed) -> keras layer | None`` registered with
``@AUGMENT_OPS.register(name)`` (:data:`medml.extensions.AUGMENT_OPS`); it reads its own
setting from :class:`~medml.config.AugmentConfig` and returns ``None`` when switched off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from medml.config import AugmentConfig
from medml.extensions import AUGMENT_OPS

if TYPE_CHECKING:
    import keras


class RandAugment:
    """Apply the configured random augmentations to a batch of uint8-range images.

    Args:
        config: which augmentations and how strong; a zero setting disables that one.
        seed: seed for the random layers (same seed, same sequence of augmentations).

    Raises:
        ValueError: a setting is out of range.
    """

    def __init__(self, config: AugmentConfig, *, seed: int = 0) -> None:
        if not 0 <= config.rotation_degrees <= 180:
            raise ValueError(f"rotation_degrees must be in [0, 180], got {config.rotation_degrees}")
        self.config = config
        self.seed = seed
        self._model: keras.Sequential | None = None

    @property
    def enabled(self) -> bool:
        """True when at least one augmentation is switched on."""
        return bool(self.layers().layers)

    def layers(self) -> keras.Sequential:
        """The Keras pipeline (built on first use)."""
        if self._model is None:
            self._model = _build(self.config, self.seed)
        return self._model

    def __call__(self, images: Any) -> Any:
        """Augment a batch ``(n, h, w, c)`` with values in [0, 255]; returns float32 in [0, 255].

        Under ``policy: one_of`` each image gets one of the enabled ops, drawn uniformly.
        """
        import keras

        x = keras.ops.cast(images, "float32")
        if not self.enabled:
            return x
        if self.config.policy == "all":
            return keras.ops.clip(self.layers()(x, training=True), 0.0, 255.0)
        import tensorflow as tf

        ops = self.layers().layers
        choice = tf.random.uniform([tf.shape(x)[0]], 0, len(ops), dtype=tf.int32, seed=self.seed)
        out = x
        for k, op in enumerate(ops):
            chosen = tf.reshape(tf.equal(choice, k), [-1, 1, 1, 1])
            out = tf.where(chosen, op(x, training=True), out)
        return keras.ops.clip(out, 0.0, 255.0)


def _build(config: AugmentConfig, seed: int) -> keras.Sequential:
    """Every registered op that the config switches on, in registration order.

    Op ``i`` is seeded with ``seed + i``, so switching one op off does not change the others.
    """
    import keras

    stack = []
    for offset, name in enumerate(AUGMENT_OPS.names()):
        layer = AUGMENT_OPS.get(name)(config, seed + offset)
        if layer is not None:
            stack.append(layer)
    return keras.Sequential(stack, name="rand_augment")


def copy_sources(
    members: np.ndarray, copies: int, rng: np.random.Generator, *, replace: bool
) -> np.ndarray:
    """Which of a class's ``members`` each of ``copies`` augmented copies is made from.

    Without replacement every member is used once before any is used twice (a fresh shuffle
    per round); with replacement they are drawn uniformly.
    """
    if replace:
        return rng.choice(members, size=copies, replace=True)
    rounds = -(-copies // len(members))
    return np.concatenate([rng.permutation(members) for _ in range(rounds)])[:copies]


@AUGMENT_OPS.register("horizontal_flip")
def horizontal_flip(config: AugmentConfig, seed: int) -> keras.layers.Layer | None:
    """Mirror left-right with probability 1/2."""
    from keras import layers

    return layers.RandomFlip("horizontal", seed=seed) if config.horizontal_flip else None


@AUGMENT_OPS.register("rotation")
def rotation(config: AugmentConfig, seed: int) -> keras.layers.Layer | None:
    """Rotate by up to ±``rotation_degrees``."""
    from keras import layers

    if not config.rotation_degrees:
        return None
    factor = config.rotation_degrees / 360.0
    return layers.RandomRotation(factor, fill_mode=config.fill_mode, seed=seed)


@AUGMENT_OPS.register("translate")
def translate(config: AugmentConfig, seed: int) -> keras.layers.Layer | None:
    """Shift by up to ``translate`` of the side, both axes."""
    from keras import layers

    if not config.translate:
        return None
    shift = config.translate
    return layers.RandomTranslation(shift, shift, fill_mode=config.fill_mode, seed=seed)


@AUGMENT_OPS.register("zoom")
def zoom(config: AugmentConfig, seed: int) -> keras.layers.Layer | None:
    """Zoom in or out by up to ``zoom``."""
    from keras import layers

    if not config.zoom:
        return None
    return layers.RandomZoom(config.zoom, fill_mode=config.fill_mode, seed=seed)


@AUGMENT_OPS.register("blur")
def blur(config: AugmentConfig, seed: int) -> keras.layers.Layer | None:
    """Gaussian blur, 3x3, sigma drawn up to ``blur_sigma``."""
    from keras import layers

    if not config.blur_sigma:
        return None
    return layers.RandomGaussianBlur(factor=1.0, kernel_size=3, sigma=(0.0, config.blur_sigma),
                                     value_range=(0, 255), seed=seed)  # fmt: skip


@AUGMENT_OPS.register("brightness")
def brightness(config: AugmentConfig, seed: int) -> keras.layers.Layer | None:
    """Shift brightness by up to ±``brightness`` of the value range."""
    from keras import layers

    if not config.brightness:
        return None
    return layers.RandomBrightness(config.brightness, value_range=(0, 255), seed=seed)


@AUGMENT_OPS.register("brightness_factor")
def brightness_factor(config: AugmentConfig, seed: int) -> keras.layers.Layer | None:
    """Multiply by a factor drawn per image from ``brightness_factor`` ([low, high])."""
    if config.brightness_factor is None:
        return None
    import keras
    import tensorflow as tf

    low, high = config.brightness_factor

    def scale(images: Any) -> Any:
        factors = tf.random.uniform([tf.shape(images)[0], 1, 1, 1], low, high, seed=seed)
        return tf.clip_by_value(images * factors, 0.0, 255.0)

    return keras.layers.Lambda(scale, name="brightness_factor")
