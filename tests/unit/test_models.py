from __future__ import annotations

import numpy as np
import pytest

from medml.models import build_ensemble, build_small_cnn


def test_ensemble_averages_member_softmax() -> None:
    members = [build_small_cnn((16, 16, 1), 3, name=f"fold_{i}") for i in range(3)]
    ensemble = build_ensemble(members)
    x = np.random.default_rng(0).integers(0, 255, size=(5, 16, 16, 1)).astype("uint8")
    expected = np.mean([m.predict(x, verbose=0) for m in members], axis=0)
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, rtol=1e-5)


def test_builders_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_classes must be at least 2, got 1"):
        build_small_cnn((16, 16, 1), 1)
    with pytest.raises(ValueError, match="dropout must be in"):
        build_small_cnn((16, 16, 1), 2, dropout=1.5)
    with pytest.raises(ValueError, match="at least one member"):
        build_ensemble([])


@pytest.mark.parametrize("kind", ["densenet121", "efficientnet_b0"])
def test_backbones_load_weights_only_from_a_local_file(kind: str, tmp_path) -> None:
    import keras

    from medml.models import build_pretrainable

    backbone = {"densenet121": keras.applications.DenseNet121,
                "efficientnet_b0": keras.applications.EfficientNetB0}[kind](
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="max"
    )  # fmt: skip
    for variable in backbone.weights[:3]:  # recognisable values that must come back
        variable.assign(np.full(variable.shape, 0.125, dtype=variable.dtype))
    weights = tmp_path / f"{kind}_notop.weights.h5"
    backbone.save_weights(weights)

    model = build_pretrainable(kind, (32, 32, 1), 4, weights=weights, trainable_layers=5)
    inner = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    if kind == "densenet121":  # a bare file name is looked up in $MEDML_HOME/weights/
        from medml.io import medml_home

        (medml_home() / "weights").mkdir(parents=True)
        weights.rename(medml_home() / "weights" / weights.name)
        by_name = build_pretrainable(kind, (32, 32, 1), 4, weights=weights.name)
        named_inner = next(layer for layer in by_name.layers if isinstance(layer, keras.Model))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(named_inner.weights[0]), 0.125)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(inner.weights[0]), 0.125)
    assert [layer.trainable for layer in inner.layers[-5:]] == [True] * 5
    assert not any(layer.trainable for layer in inner.layers[:-5])
    head = [layer.__class__.__name__ for layer in model.layers[-4:]]
    assert head == ["BatchNormalization", "Dense", "BatchNormalization", "Dense"]
    assert model.layers[-3].units == 2048 and model.layers[-3].kernel_regularizer is not None
    x = np.random.default_rng(0).integers(0, 255, size=(2, 32, 32, 1)).astype("uint8")
    np.testing.assert_allclose(model.predict(x, verbose=0).sum(axis=1), 1.0, rtol=1e-5)


def test_backbone_refuses_downloads_and_missing_files(tmp_path) -> None:
    from medml.config import ConfigError, load_recipe
    from medml.models import build_pretrainable

    with pytest.raises(ValueError, match="never does"):
        build_pretrainable("densenet121", (32, 32, 3), 2, weights="imagenet")
    with pytest.raises(ConfigError, match=r"missing\.h5 not found; medml never downloads"):
        build_pretrainable("densenet121", (32, 32, 3), 2, weights=tmp_path / "missing.h5")
    with pytest.raises(ConfigError, match="train.weights"):
        load_recipe("capsule-endoscopy", overrides=["train.weights=imagenet"])
    with pytest.raises(ValueError, match="at least 32x32"):
        build_pretrainable("densenet121", (24, 24, 3), 2)


# The seeds' networks as their write-ups build them (Keras Sequential), softmax over 2 classes:
# seed 002 is Chollet's cats-vs-dogs network (3,453,121 parameters with a 1-unit sigmoid head);
# seed 004 is TensorFlow's image-classification tutorial's network with dropout (10,641,441).
SEED_NETWORKS = {
    "chest-xray-seed002": (
        [("Conv2D", 32, "valid"), ("MaxPooling2D",), ("Conv2D", 64, "valid"), ("MaxPooling2D",),
         ("Conv2D", 128, "valid"), ("MaxPooling2D",), ("Conv2D", 128, "valid"), ("MaxPooling2D",),
         ("Flatten",), ("Dropout", 0.5), ("Dense", 512), ("Dense", 2)],
        3_453_121 + 513,
    ),
    "cats-dogs-seed004": (
        [("Conv2D", 16, "same"), ("MaxPooling2D",), ("Dropout", 0.2), ("Conv2D", 32, "same"),
         ("MaxPooling2D",), ("Conv2D", 64, "same"), ("MaxPooling2D",), ("Dropout", 0.2),
         ("Flatten",), ("Dense", 512), ("Dense", 2)],
        10_641_441 + 513,
    ),
}  # fmt: skip


def _layer_list(model) -> list[tuple]:
    described = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("InputLayer", "Rescaling"):
            continue
        if kind == "Conv2D":
            described.append((kind, layer.filters, layer.padding))
        elif kind == "Dense":
            described.append((kind, layer.units))
        elif kind == "Dropout":
            described.append((kind, layer.rate))
        else:
            described.append((kind,))
    return described


@pytest.mark.parametrize("recipe_name", sorted(SEED_NETWORKS))
def test_the_seeds_networks_are_recipe_data(recipe_name: str) -> None:
    from medml.config import load_recipe
    from medml.models import build_model

    recipe = load_recipe(recipe_name)
    layers, parameters = SEED_NETWORKS[recipe_name]
    size, channels = recipe.image.size, recipe.image.channels
    model = build_model((size, size, channels), len(recipe.data.classes), recipe.train, name="m")
    assert (size, channels) == (150, 3)
    assert _layer_list(model) == layers
    assert model.count_params() == parameters


def test_a_declared_cnn_that_shrinks_below_one_pixel_is_refused() -> None:
    from medml.config import CNNConfig, ConvBlock
    from medml.models import build_cnn

    spec = CNNConfig(blocks=[ConvBlock(filters=8, padding="valid")] * 5, head="flatten")
    with pytest.raises(ValueError, match=r"train.cnn.blocks\[3\]: the feature map is 2x2"):
        build_cnn((32, 32, 1), 2, spec)


def test_the_ensembles_temperature_scales_the_average_it_was_fitted_on() -> None:
    from medml.calibration import apply_temperature

    members = [build_small_cnn((16, 16, 1), 3, name=f"fold_{i}") for i in range(3)]
    x = np.random.default_rng(0).integers(0, 255, size=(5, 16, 16, 1)).astype("uint8")
    averaged = np.mean([m.predict(x, verbose=0) for m in members], axis=0)
    ensemble = build_ensemble(members, temperature=0.4)
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), apply_temperature(averaged, 0.4),
                               rtol=1e-4, atol=1e-6)  # fmt: skip
