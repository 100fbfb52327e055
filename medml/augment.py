"""Random image augmentation with Keras 3 preprocessing layers (no ImageDataGenerator).

One augmenter, built from the recipe's ``train.augment`` settings, serves both uses:
training-time augmentation in the tf.data pipeline, and the ``augment_oversample`` balancing
strategy, which tops minority classes up with augmented copies. The settings follow the seeds:
rotation ±25°, horizontal flip, translation, Gaussian blur, zoom and brightness 0.7–1.3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medml.config import AugmentConfig

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
        c = self.config
        return bool(
            c.rotation_degrees
            or c.horizontal_flip
            or c.translate
            or c.zoom
            or c.blur_sigma
            or c.brightness
        )

    def layers(self) -> keras.Sequential:
        """The Keras pipeline (built on first use)."""
        if self._model is None:
            self._model = _build(self.config, self.seed)
        return self._model

    def __call__(self, images):  # noqa: ANN001, ANN204 - array or tensor in, tensor out
        """Augment a batch ``(n, h, w, c)`` with values in [0, 255]; returns float32 in [0, 255]."""
        import keras

        if not self.enabled:
            return keras.ops.cast(images, "float32")
        out = self.layers()(keras.ops.cast(images, "float32"), training=True)
        return keras.ops.clip(out, 0.0, 255.0)


def _build(config: AugmentConfig, seed: int) -> keras.Sequential:
    import keras
    from keras import layers

    stack: list[keras.layers.Layer] = []
    if config.horizontal_flip:
        stack.append(layers.RandomFlip("horizontal", seed=seed))
    if config.rotation_degrees:
        stack.append(
            layers.RandomRotation(
                config.rotation_degrees / 360.0, fill_mode="constant", seed=seed + 1
            )
        )
    if config.translate:
        stack.append(
            layers.RandomTranslation(
                config.translate, config.translate, fill_mode="constant", seed=seed + 2
            )
        )
    if config.zoom:
        stack.append(layers.RandomZoom(config.zoom, fill_mode="constant", seed=seed + 3))
    if config.blur_sigma:
        stack.append(
            layers.RandomGaussianBlur(
                factor=1.0,
                kernel_size=3,
                sigma=(0.0, config.blur_sigma),
                value_range=(0, 255),
                seed=seed + 4,
            )
        )
    if config.brightness:
        stack.append(
            layers.RandomBrightness(config.brightness, value_range=(0, 255), seed=seed + 5)
        )
    return keras.Sequential(stack, name="rand_augment")
