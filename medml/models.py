"""Model builders. Models take raw uint8 pixels (rescaling is a layer), output softmax."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

MODELS = ("small_cnn",)


def build_small_cnn(
    input_shape: tuple[int, int, int],
    n_classes: int,
    *,
    dropout: float = 0.3,
    filters: tuple[int, ...] = (16, 32, 64, 64),
    name: str = "small_cnn",
) -> keras.Model:
    """The small CNN of seeds 002/004: conv blocks with max pooling, dropout, softmax head.

    Args:
        input_shape: ``(height, width, channels)`` of the uint8 input.
        n_classes: number of output classes.
        dropout: dropout rate before the dense layers.
        filters: filters per conv block (one block per entry).
        name: model name (fold models need distinct names inside an ensemble).

    Raises:
        ValueError: bad ``n_classes`` or ``dropout``.
    """
    import keras
    from keras import layers

    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    for i, n_filters in enumerate(filters):
        x = layers.Conv2D(n_filters, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.GlobalMaxPooling2D()(x)  # small lesions: keep the strongest response
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(64, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


def build_model(
    kind: str, input_shape: tuple[int, int, int], n_classes: int, *, dropout: float, name: str
) -> keras.Model:
    """Build a model by recipe name.

    Raises:
        ValueError: unknown model name.
    """
    if kind == "small_cnn":
        return build_small_cnn(input_shape, n_classes, dropout=dropout, name=name)
    raise ValueError(f"unknown model {kind!r}; choose one of {MODELS}")


def build_ensemble(members: list[keras.Model], *, name: str = "fold_ensemble") -> keras.Model:
    """One model that averages the members' softmax outputs (seed 001's fold averaging).

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
    return keras.Model(inputs, averaged, name=name)
