"""One fold trains with every balancing strategy, and balancing only sees that fold's train part."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import medml.train as train_module
from medml.config import Recipe
from medml.data.ingest import ingest
from medml.data.validate import validate
from medml.errors import RunError
from medml.extensions import BALANCERS
from medml.preprocess import load_index, preprocess
from medml.split import split


@pytest.fixture(scope="module")
def shards(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medml.config import load_recipe
    from tests.conftest import TINY

    recipe = load_recipe("kidney-ct", overrides=TINY)
    work = tmp_path_factory.mktemp("shards")
    manifest = ingest(phantom_dir, work / "manifest.parquet", recipe).manifest
    clean = validate(manifest, work / "validation", recipe).clean_manifest
    splits = split(clean, work / "splits.parquet", recipe).splits
    return preprocess(splits, work / "shards", recipe).shards_dir


@pytest.mark.parametrize("strategy", BALANCERS.names())
def test_balancing_sees_only_the_folds_training_rows(
    strategy: str, shards: Path, tiny_recipe: Recipe, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    seen: dict[str, np.ndarray] = {}
    real_plan = train_module.plan_balance

    def recording_plan(y_train, *args, **kwargs):
        seen["y"] = np.asarray(y_train)
        return real_plan(y_train, *args, **kwargs)

    monkeypatch.setattr(train_module, "plan_balance", recording_plan)
    recipe = tiny_recipe.model_copy(
        update={"train": tiny_recipe.train.model_copy(update={"balance": strategy, "epochs": 1})}
    )
    result = train_module.train_fold(shards, 1, tmp_path / "fold", recipe)

    index = load_index(shards)
    expected = index[(index["split"] == "train") & (index["fold"] != 1)]
    np.testing.assert_array_equal(seen["y"], expected["label_index"].to_numpy())
    assert result.model_path.is_file()
    history = json.loads(result.history_path.read_text())
    assert history["epochs_run"] == 1


@pytest.mark.parametrize(("keep_best_epoch", "min_epochs"), [(True, 0), (False, 0), (True, 2)])
def test_the_kept_epoch_is_the_best_or_the_last(
    keep_best_epoch: bool, min_epochs: int, shards: Path, tiny_recipe: Recipe, tmp_path: Path
) -> None:
    """The weights saved are the epoch history.json names: the lowest val_loss from
    ``min_epochs`` on (early stopping ignores the epochs before), or the last."""
    import keras

    from medml.preprocess import load_images

    train = tiny_recipe.train.model_copy(update={
        "epochs": 4, "min_epochs": min_epochs, "patience": 4, "learning_rate": 0.02,
        "keep_best_epoch": keep_best_epoch,
    })  # fmt: skip
    recipe = tiny_recipe.model_copy(update={"train": train})
    result = train_module.train_fold(shards, 0, tmp_path / "fold", recipe)
    summary = json.loads(result.history_path.read_text())
    losses = summary["history"]["val_loss"]
    kept = summary["kept_epoch"]
    best = min_epochs + int(np.argmin(losses[min_epochs:])) + 1
    assert kept == (best if keep_best_epoch else len(losses))
    _, val_rows = train_module.fold_rows(load_index(shards), 0)
    model = keras.models.load_model(result.model_path)
    y = val_rows["label_index"].to_numpy()
    probabilities = model.predict(load_images(shards, val_rows), verbose=0)
    loss = float(keras.losses.sparse_categorical_crossentropy(y, probabilities).numpy().mean())
    assert loss == pytest.approx(losses[kept - 1], abs=2e-3)  # these weights are that epoch's
    assert summary["val_loss"] == losses[kept - 1]


def test_unknown_fold_is_a_clear_error(shards: Path, tiny_recipe: Recipe, tmp_path: Path) -> None:
    with pytest.raises(RunError, match=r"fold 7 does not exist; this split has folds \[0, 1\]"):
        train_module.train_fold(shards, 7, tmp_path / "fold", tiny_recipe)


def test_balanced_batches_are_class_balanced() -> None:
    y = np.array([0] * 90 + [1] * 10)
    x = np.zeros((100, 4, 4, 1), np.uint8)
    data = train_module.make_dataset(
        x, y, batch_size=50, training=True, seed=0, balanced_batches=True
    )
    labels = np.concatenate([batch_y.numpy() for _, batch_y in data.take(20)])
    assert 0.4 < labels.mean() < 0.6  # minority drawn as often as the majority


def test_densenet_fold_with_label_smoothing_mixed_precision_and_throughput(
    shards: Path, tiny_recipe: Recipe, tmp_path: Path
) -> None:
    """Seed 001's setup (DenseNet121 head, label smoothing 0.1), forced mixed precision on CPU."""
    import keras

    train_cfg = tiny_recipe.train.model_copy(
        update={"model": "densenet121", "label_smoothing": 0.1, "epochs": 2,
                "mixed_precision": True, "jit_compile": False, "trainable_layers": 20}
    )  # fmt: skip
    recipe = tiny_recipe.model_copy(update={"train": train_cfg})
    result = train_module.train_fold(shards, 0, tmp_path / "fold", recipe)

    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    model = keras.saving.load_model(result.model_path, compile=False)
    assert any(layer.dtype_policy.name == "mixed_float16" for layer in model.layers)
    assert model.get_layer("probabilities").dtype_policy.name == "float32"
    history = json.loads(result.history_path.read_text())["history"]
    assert len(history["images_per_second"]) == 2 and min(history["images_per_second"]) > 0
    assert np.isfinite(history["loss"]).all()


def test_accelerator_defaults_follow_the_visible_devices(tiny_recipe: Recipe) -> None:
    import tensorflow as tf

    accelerator = train_module.Accelerator.detect(tiny_recipe.train)
    gpus = len(tf.config.list_physical_devices("GPU"))
    assert accelerator.gpus == gpus
    assert accelerator.policy == ("mixed_float16" if gpus else "float32")
    assert accelerator.jit_compile is bool(gpus)
    assert accelerator.replicas == max(1, gpus if gpus > 1 else 1)
    forced = train_module.Accelerator.detect(
        tiny_recipe.train.model_copy(update={"mixed_precision": False, "jit_compile": True})
    )
    assert (forced.policy, forced.jit_compile) == ("float32", True)


_MIRRORED = """
import json, sys
from pathlib import Path
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from medml.config import load_recipe
from medml.train import Accelerator, train_fold
shards, out, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
accelerator = Accelerator(strategy, gpus=0, policy="float32", jit_compile=False)
recipe = load_recipe("kidney-ct", overrides=overrides)
result = train_fold(Path(shards), 0, Path(out), recipe, accelerator=accelerator)
print(json.dumps({"replicas": accelerator.replicas, "epochs": result.epochs}))
"""


def test_a_fold_trains_under_mirrored_strategy(shards: Path, tmp_path: Path) -> None:
    """Two replicas (logical CPUs stand in for a pod's GPUs): variables, optimizer and metrics
    are created in the strategy's scope, and the global batch is split across replicas."""
    import subprocess
    import sys

    from tests.conftest import TINY, venv_env

    overrides = json.dumps([*TINY, "train.epochs=1"])
    result = subprocess.run(
        [sys.executable, "-c", _MIRRORED, str(shards), str(tmp_path / "fold"), overrides],
        env=venv_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"replicas": 2, "epochs": 1}
    assert (tmp_path / "fold" / "model.keras").is_file()


def test_batches_stream_from_the_shards_like_from_memory(shards: Path) -> None:
    """Same seed, same batches, whether rows are gathered from the memory-mapped shards or
    from a loaded array; a fold without a pixel-level sampler never loads its images."""
    from medml.preprocess import ShardRows, load_images

    rows = load_index(shards).sample(frac=1.0, random_state=0)
    labels = rows["label_index"].to_numpy()
    batches = []
    for images in (ShardRows(shards, rows), load_images(shards, rows)):
        data = train_module.make_dataset(images, labels, batch_size=8, training=True, seed=3)
        batches.append([(x.numpy(), y.numpy()) for x, y in data])
    assert len(batches[0]) == -(-len(rows) // 8)
    for (x_a, y_a), (x_b, y_b) in zip(*batches, strict=True):
        np.testing.assert_array_equal(x_a, x_b)
        np.testing.assert_array_equal(y_a, y_b)


def test_fold_images_stay_in_the_shards(
    shards: Path, tiny_recipe: Recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("class_weight training must not load the fold's images")

    monkeypatch.setattr(train_module, "load_images", refuse)
    recipe = tiny_recipe.model_copy(
        update={"train": tiny_recipe.train.model_copy(update={"epochs": 1})}
    )
    assert train_module.train_fold(shards, 0, tmp_path / "fold", recipe).model_path.is_file()


def test_learning_rate_decay_and_plateau_act_on_one_base_rate() -> None:
    """Keras 2's Adam(decay=…) with ReduceLROnPlateau (seed 001), and F1 in the history."""
    import keras

    from medml.config import load_recipe
    from medml.train import Accelerator, compile_model, learning_rate_control

    recipe = load_recipe("kidney-ct", overrides=[
        "train.extra_metrics=[f1]", "train.learning_rate_decay=0.01",
        "train.reduce_lr_on_plateau={factor: 0.1, patience: 1}",
    ])  # fmt: skip
    keras.utils.set_random_seed(0)
    model = compile_model(recipe, (16, 16, 1), Accelerator.detect(recipe.train), name="lr")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (64, 16, 16, 1)).astype("uint8"), rng.integers(0, 4, 64)
    val = (rng.integers(0, 255, (32, 16, 16, 1)).astype("uint8"), rng.integers(0, 4, 32))
    control = learning_rate_control(recipe.train)
    history = model.fit(x, y, batch_size=16, validation_data=val, epochs=4, verbose=0,
                        callbacks=[control]).history  # fmt: skip
    assert "f1" in history and "val_f1" in history
    rates, losses = history["learning_rate"], history["val_loss"]
    steps = 4 * np.arange(1, 5) - 1  # the step of each epoch's last batch
    base = 1e-3
    for epoch in range(4):
        assert rates[epoch] == pytest.approx(base / (1 + 0.01 * steps[epoch]), rel=1e-4)
        if epoch and losses[epoch] >= min(losses[:epoch]) - 1e-4:
            base *= 0.1  # patience 1: one epoch without improvement cuts the base rate
    assert learning_rate_control(load_recipe("kidney-ct").train) is None


def test_each_epoch_prints_one_line_with_its_scores_and_the_time_left(
    shards: Path, tiny_recipe: Recipe, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    train_module.train_fold(shards, 0, tmp_path / "fold", tiny_recipe)
    lines = [line for line in capsys.readouterr().out.splitlines() if " epoch " in line]
    epochs = tiny_recipe.train.epochs
    assert len(lines) <= epochs and lines, lines  # early stopping may end sooner
    pattern = (r"fold_0 epoch (\d+)/(\d+): loss [\d.e+-]+ val_loss [\d.e+-]+ .*\| "
               r"[\d.]+ s/epoch, at most (\d+m \d\ds|\d+s) left")  # fmt: skip
    for number, line in enumerate(lines, start=1):
        match = re.fullmatch(pattern, line)
        assert match and match.groups()[:2] == (str(number), str(epochs)), line
    assert lines[-1].endswith("at most 0s left") or len(lines) < epochs
