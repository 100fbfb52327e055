"""Model builders. Models take raw uint8 pixels (rescaling is a layer), output softmax.

``train.model`` names a builder in :data:`medml.extensions.MODELS`; a builder is registered
with ``@MODELS.register(name)`` and called as ``builder(input_shape, n_classes, cfg, name=…)``
with the recipe's :class:`~medml.config.TrainConfig`. Keras is imported only inside builders.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from medml.config import CNNConfig, ConvBlock, TrainConfig, refuse_download
from medml.errors import ConfigError
from medml.extensions import MODELS

if TYPE_CHECKING:
    import keras

# Seed 001's head on DenseNet121: max pooling, BatchNorm, Dense(2048, relu, L1L2(0.01)),
# BatchNorm, softmax.
HEAD_UNITS = 2048
HEAD_L1L2 = 0.01
_IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DenseNet's "torch" preprocessing
_IMAGENET_STD = (0.229, 0.224, 0.225)
# The pretrainable backbones: medml's name → the keras.applications builder.
_APPLICATIONS = {"densenet121": "DenseNet121", "efficientnet_b0": "EfficientNetB0"}


def build_small_cnn(
    input_shape: tuple[int, int, int],
    n_classes: int,
    *,
    dropout: float = 0.3,
    filters: tuple[int, ...] = (16, 32, 64, 64),
    name: str = "small_cnn",
) -> keras.Model:
    """medml's small CNN: same-padded conv blocks with max pooling, global max pooling (small
    lesions: keep the strongest response), dropout, Dense 64, dropout, softmax.

    Args:
        input_shape: ``(height, width, channels)`` of the uint8 input.
        n_classes: number of output classes.
        dropout: dropout rate before and after the dense layer.
        filters: filters per conv block (one block per entry).
        name: model name (fold models need distinct names inside an ensemble).

    Raises:
        ValueError: bad ``n_classes`` or ``dropout``.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    spec = CNNConfig(blocks=[ConvBlock(filters=f) for f in filters], head="global_max",
                     dropout=dropout, dense=[64], dense_dropout=dropout)  # fmt: skip
    return build_cnn(input_shape, n_classes, spec, name=name)


def build_cnn(
    input_shape: tuple[int, int, int], n_classes: int, spec: CNNConfig, *, name: str = "cnn"
) -> keras.Model:
    """A plain CNN from its declaration (:class:`~medml.config.CNNConfig`): per block Conv2D
    (ReLU) → pooling → dropout; then flatten or global pooling → dropout → dense layers (ReLU,
    each followed by dropout) → softmax.

    Raises:
        ValueError: fewer than 2 classes, or the blocks shrink the image below 1 pixel.
    """
    import keras
    from keras import layers

    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    pools = {"max": layers.MaxPooling2D, "average": layers.AveragePooling2D}
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    for i, block in enumerate(spec.blocks):
        if min(x.shape[1], x.shape[2]) < (block.kernel if block.padding == "valid" else 1):
            raise ValueError(
                f"train.cnn.blocks[{i}]: the feature map is {x.shape[1]}x{x.shape[2]}, too small "
                f"for a valid {block.kernel}x{block.kernel} convolution; use a larger "
                "image.size, fewer blocks or padding: same"
            )
        x = layers.Conv2D(block.filters, block.kernel, padding=block.padding,
                          activation="relu", name=f"conv{i}")(x)  # fmt: skip
        if block.pool is not None:
            x = pools[block.pool](name=f"pool{i}")(x)
        if block.dropout:
            x = layers.Dropout(block.dropout, name=f"dropout{i}")(x)
    heads = {"flatten": layers.Flatten, "global_max": layers.GlobalMaxPooling2D,
             "global_average": layers.GlobalAveragePooling2D}  # fmt: skip
    x = heads[spec.head](name=spec.head)(x)
    if spec.dropout:
        x = layers.Dropout(spec.dropout, name="head_dropout")(x)
    for k, units in enumerate(spec.dense):
        x = layers.Dense(units, activation="relu", name=f"dense{k}")(x)
        if spec.dense_dropout:
            x = layers.Dropout(spec.dense_dropout, name=f"dense_dropout{k}")(x)
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(
        x
    )
    return keras.Model(inputs, outputs, name=name)


def build_pretrainable(
    kind: str,
    input_shape: tuple[int, int, int],
    n_classes: int,
    *,
    weights: str | Path | None = None,
    trainable_layers: int | None = None,
    name: str = "model",
) -> keras.Model:
    """DenseNet121 (seed 001) or EfficientNetB0 backbone with seed 001's classification head.

    The model takes uint8 pixels; grayscale input is repeated to three channels and the
    backbone's own input normalisation is part of the model. The softmax layer computes in
    float32, so the model is safe to build under a ``mixed_float16`` policy.

    Args:
        kind: ``densenet121`` or ``efficientnet_b0``.
        input_shape: ``(height, width, channels)``; sides of at least 32.
        n_classes: number of output classes.
        weights: path of a local Keras weights file for the backbone without its top (e.g.
            ``densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5``); ``None`` trains from
            scratch. Nothing is ever downloaded.
        trainable_layers: train only the last this many backbone layers (the rest frozen,
            BatchNorm in inference mode); ``None`` trains every layer.
        name: model name.

    Raises:
        ValueError: unknown ``kind`` or bad ``n_classes``.
        ConfigError: a too-small input, ``weights="imagenet"``, or no file at ``weights``.
    """
    import keras

    _check_pretrainable(kind, input_shape, n_classes)
    backbone = _backbone(kind, input_shape, local_weights(weights), trainable_layers)
    inputs = keras.Input(shape=input_shape, name="pixels")
    outputs = _seed001_head(backbone(_backbone_input(kind, inputs)), n_classes)
    return keras.Model(inputs, outputs, name=name)


def _check_pretrainable(kind: str, input_shape: tuple[int, int, int], n_classes: int) -> None:
    """Refuse an unknown backbone, a too-small input or fewer than 2 classes.

    Raises:
        ValueError: unknown ``kind`` or bad ``n_classes``.
        ConfigError: sides below 32 pixels.
    """
    if kind not in _APPLICATIONS:
        raise ValueError(f"unknown backbone {kind!r}; choose one of {sorted(_APPLICATIONS)}")
    if min(input_shape[:2]) < 32:
        raise ConfigError(
            f"{kind} needs images of at least 32x32, got {input_shape[:2]}; raise image.size"
        )
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")


def _backbone(
    kind: str,
    input_shape: tuple[int, int, int],
    weights_path: str | None,
    trainable_layers: int | None,
) -> keras.Model:
    """The Keras application without its top (max pooled, three channels), all but its last
    ``trainable_layers`` layers frozen (``None``: none frozen)."""
    import keras

    backbone = getattr(keras.applications, _APPLICATIONS[kind])(
        include_top=False,
        weights=weights_path,
        input_shape=(*input_shape[:2], 3),
        pooling="max",
    )
    if trainable_layers is not None:
        for layer in backbone.layers[: max(0, len(backbone.layers) - trainable_layers)]:
            layer.trainable = False
    return backbone


def _backbone_input(kind: str, inputs: keras.KerasTensor) -> keras.KerasTensor:
    """uint8 pixels as the backbone expects them: grayscale repeated to three channels, then
    DenseNet's ImageNet normalisation (EfficientNet normalises [0, 255] input itself)."""
    from keras import layers

    x = layers.Concatenate(name="to_rgb")([inputs] * 3) if inputs.shape[-1] == 1 else inputs
    if kind == "densenet121":
        x = layers.Rescaling(1.0 / 255.0)(x)
        x = layers.Normalization(
            mean=list(_IMAGENET_MEAN), variance=[s * s for s in _IMAGENET_STD], name="imagenet"
        )(x)
    else:  # EfficientNet rescales and normalises [0, 255] input itself
        x = layers.Rescaling(1.0, name="to_float")(x)
    return x


def _seed001_head(x: keras.KerasTensor, n_classes: int) -> keras.KerasTensor:
    """Seed 001's classification head: BatchNorm, Dense(2048, relu, L1L2(0.01)), BatchNorm,
    softmax (computed in float32, so safe under ``mixed_float16``)."""
    import keras
    from keras import layers

    x = layers.BatchNormalization()(x)
    x = layers.Dense(
        HEAD_UNITS, activation="relu",
        kernel_regularizer=keras.regularizers.L1L2(l1=HEAD_L1L2, l2=HEAD_L1L2),
    )(x)  # fmt: skip
    x = layers.BatchNormalization()(x)
    return layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(x)


def local_weights(weights: str | Path | None) -> str | None:
    """The weights file: a path as given, or a bare file name under ``$MEDML_HOME/weights/``."""
    if weights is None:
        return None
    refuse_download(weights)
    if not str(weights).strip():
        raise ConfigError("train.weights is empty: give the weights file's path, or null to "
                          "start from random weights")  # fmt: skip
    from medml.io import medml_home

    given = Path(weights).expanduser()
    candidates = [given] if given.is_absolute() else [given, medml_home() / "weights" / given]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        odd = [path for path in candidates if path.exists()]  # a folder, a FIFO, a device
        if odd:
            raise ConfigError(f"train.weights: {odd[0]} is not a regular file; give the Keras "
                              "weights file itself (.h5 or .weights.h5)")  # fmt: skip
        tried = " or ".join(str(path) for path in candidates)
        raise ConfigError(
            f"pretrained weights file {tried} not found; medml never downloads weights: make "
            "the Keras application's notop weights file once on a connected machine (see "
            "docs/recipes.md) and copy it there, or set train.weights: null"
        )
    return str(found)


def _not_a_retracing_warning(record: logging.LogRecord) -> bool:
    return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def one_trace_per_model_is_expected() -> Iterator[None]:
    """Drops TensorFlow's "N out of the last M calls … triggered tf.function retracing"
    warning within the block. TF counts traces per Python code object, so K fold models, each
    traced once when it trains or predicts, look to it like one function retraced K times,
    and the advice it prints (shapes, loops) does not apply."""
    logger = logging.getLogger("tensorflow")
    logger.addFilter(_not_a_retracing_warning)
    try:
        yield
    finally:
        logger.removeFilter(_not_a_retracing_warning)


def build_model(
    input_shape: tuple[int, int, int], n_classes: int, cfg: TrainConfig, *, name: str
) -> keras.Model:
    """Build the recipe's model (``train.model``, a name in :data:`~medml.extensions.MODELS`).

    Raises:
        ConfigError: unknown model name ("did you mean …").
    """
    return MODELS.get(cfg.model)(input_shape, n_classes, cfg, name=name)


@MODELS.register("small_cnn")
def small_cnn(
    input_shape: tuple[int, int, int], n_classes: int, cfg: TrainConfig, *, name: str
) -> keras.Model:
    """:func:`build_small_cnn` with the recipe's dropout."""
    return build_small_cnn(input_shape, n_classes, dropout=cfg.dropout, name=name)


@MODELS.register("cnn")
def cnn(
    input_shape: tuple[int, int, int], n_classes: int, cfg: TrainConfig, *, name: str
) -> keras.Model:
    """:func:`build_cnn` with the recipe's declared architecture (``train.cnn``)."""
    return build_cnn(input_shape, n_classes, cfg.cnn, name=name)


def _backbone_builder(kind: str) -> Callable[..., keras.Model]:
    def build(
        input_shape: tuple[int, int, int], n_classes: int, cfg: TrainConfig, *, name: str
    ) -> keras.Model:
        return build_pretrainable(kind, input_shape, n_classes, weights=cfg.weights,
                                  trainable_layers=cfg.trainable_layers, name=name)  # fmt: skip

    build.__doc__ = f"{kind} backbone with seed 001's head (:func:`build_pretrainable`)."
    return build


densenet121 = MODELS.register("densenet121")(_backbone_builder("densenet121"))
efficientnet_b0 = MODELS.register("efficientnet_b0")(_backbone_builder("efficientnet_b0"))


def build_ensemble(
    members: list[keras.Model], *, name: str = "fold_ensemble", temperature: float = 1.0
) -> keras.Model:
    """One model that averages the members' softmax outputs (seed 001's fold averaging), then
    calibrates the average by ``temperature`` (:mod:`medml.calibration`; 1 leaves it as is):
    the output the temperature was fitted on.

    Raises:
        ValueError: no members, or members with different input shapes.
    """
    import keras
    from keras import layers

    if not members:
        raise ValueError("an ensemble needs at least one member model")
    shapes = {tuple(m.input_shape[1:]) for m in members}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members have different input shapes: {sorted(shapes)}")
    inputs = keras.Input(shape=shapes.pop(), name="pixels")
    outputs = [member(inputs) for member in members]
    averaged = (
        outputs[0] if len(outputs) == 1 else layers.Average(name="mean_probabilities")(outputs)
    )
    if temperature != 1.0:
        averaged = temperature_layer()(temperature, name="calibrated")(averaged)
    return keras.Model(inputs, averaged, name=name)


def load_ensemble(path: Path) -> keras.Model:
    """Load a saved :func:`build_ensemble` model (its calibration layer included)."""
    import keras

    custom = {"TemperatureScaling": temperature_layer()}
    return keras.models.load_model(path, compile=False, custom_objects=custom)


_TEMPERATURE_LAYER: list[type] = []


def temperature_layer() -> type:
    """The Keras layer ``softmax(log(p) / T)`` (defined on first use: Keras loads lazily)."""
    if _TEMPERATURE_LAYER:
        return _TEMPERATURE_LAYER[0]
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="medml")
    class TemperatureScaling(keras.layers.Layer):
        """Divide log-probabilities by a fitted temperature and re-normalise."""

        def __init__(self, temperature: float = 1.0, **kwargs: object) -> None:
            super().__init__(**kwargs)
            self.temperature = float(temperature)

        def call(self, probabilities: object) -> object:
            logits = ops.log(ops.clip(probabilities, 1e-12, 1.0)) / self.temperature
            return ops.softmax(logits, axis=-1)

        def get_config(self) -> dict[str, object]:
            return {**super().get_config(), "temperature": self.temperature}

    _TEMPERATURE_LAYER.append(TemperatureScaling)
    return TemperatureScaling
