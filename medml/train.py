"""Train one fold: balance the fold's training part, fit a Keras model, log it to MLflow.

Fold ``k`` trains on the rows of the other folds and validates (early stopping) on fold ``k``.
The holdout test rows are never loaded here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medml.augment import RandAugment
from medml.balance import BalancePlan, Rows, plan_balance
from medml.config import Recipe, TrainConfig
from medml.errors import RunError
from medml.io import publish_dir, write_json
from medml.layout import ARTIFACTS, FoldFiles
from medml.preprocess import ShardRows, load_images, load_index
from medml.split import TRAIN
from medml.tracking import KIND_TAG, RUN_KEY_TAG, Tracking


@dataclass(frozen=True)
class FoldResult:
    """What :func:`train_fold` wrote and measured."""

    fold: int
    model_path: Path
    history_path: Path
    mlflow_run_id: str | None
    epochs: int
    val_loss: float
    val_accuracy: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for XCom and the CLI)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Accelerator:
    """How a fold trains on this machine: distribution strategy, precision policy and XLA.

    One GPU or none: the default strategy. Several GPUs in one pod: ``MirroredStrategy`` (the
    global batch is ``train.batch_size`` per replica). ``train.mixed_precision`` and
    ``train.jit_compile`` default to ``auto``: on when a GPU is visible, off on CPU.
    """

    strategy: Any
    gpus: int
    policy: str
    jit_compile: bool

    @classmethod
    def detect(cls, cfg: TrainConfig) -> Accelerator:
        """Inspect the visible GPUs and resolve the recipe's ``auto`` settings."""
        import tensorflow as tf

        gpus = len(tf.config.list_physical_devices("GPU"))
        strategy = tf.distribute.MirroredStrategy() if gpus > 1 else tf.distribute.get_strategy()
        mixed = gpus > 0 if cfg.mixed_precision == "auto" else bool(cfg.mixed_precision)
        jit = gpus > 0 if cfg.jit_compile == "auto" else bool(cfg.jit_compile)
        return cls(strategy, gpus, "mixed_float16" if mixed else "float32", jit)

    @property
    def replicas(self) -> int:
        """Model replicas trained in sync (GPUs under ``MirroredStrategy``, else 1)."""
        return int(self.strategy.num_replicas_in_sync)

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Build and compile models inside this: strategy scope and dtype policy."""
        import keras

        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.policy)
        try:
            with self.strategy.scope():
                yield
        finally:
            keras.config.set_dtype_policy(previous)

    def as_params(self) -> dict[str, str]:
        """What to log with the fold's run."""
        return {"gpus": str(self.gpus), "replicas": str(self.replicas),
                "precision_policy": self.policy, "jit_compile": str(self.jit_compile)}  # fmt: skip


def fold_rows(index: Any, fold: int) -> tuple[Any, Any]:
    """Training and validation rows of ``fold`` (holdout rows are in neither).

    Raises:
        RunError: ``fold`` does not exist in the split.
    """
    train_part = index[index["split"] == TRAIN]
    folds = sorted(int(f) for f in train_part["fold"].unique())
    if fold not in folds:
        raise RunError(f"fold {fold} does not exist; this split has folds {folds}")
    return train_part[train_part["fold"] != fold], train_part[train_part["fold"] == fold]


def make_dataset(
    images: np.ndarray | Rows,
    labels: np.ndarray,
    *,
    batch_size: int,
    training: bool,
    seed: int = 0,
    balanced_batches: bool = False,
    augment: RandAugment | None = None,
    augment_copies: RandAugment | None = None,
    copies_from: int | None = None,
    one_hot: int | None = None,
) -> Any:
    """A tf.data pipeline of uint8 image batches, read from the shards or from an array.

    The pipeline runs over row positions: positions are shuffled (seeded) or, with
    ``balanced_batches``, drawn from one repeating stream per class with equal probability;
    each batch of positions is then gathered from ``images`` in parallel (``AUTOTUNE``). With
    :class:`~medml.preprocess.ShardRows` the images stay in the shards (read per batch, the
    validation rows too), so memory is O(batch) whatever the dataset size. ``augment`` runs per
    batch in parallel; the order is deterministic for a given seed;
    ``one_hot=n`` yields one-hot labels (for label smoothing). ``augment_copies`` runs on the
    copies of each training batch only (positions from ``copies_from`` on, as
    :class:`~medml.balance.CopiedRows` lays them out for augmentation oversampling), before
    ``augment``.

    Raises:
        ValueError: ``augment_copies`` without ``copies_from``.
    """
    import tensorflow as tf

    autotune = tf.data.AUTOTUNE
    labels = np.asarray(labels, dtype=np.int64)
    data = _positions(labels, training=training, balanced_batches=balanced_batches, seed=seed)
    if isinstance(images, np.ndarray):
        gather, shape = images.__getitem__, images.shape[1:]
    else:
        gather, shape = images.gather, images.image_shape
    if augment_copies is not None and copies_from is None:
        raise ValueError("augment_copies needs copies_from: the position of the first copy")
    with_copies = training and augment_copies is not None

    def fetch(batch: Any) -> tuple[Any, ...]:
        x, y = tf.numpy_function(
            lambda p: (gather(p), labels[p]), [batch], (tf.uint8, tf.int64), stateful=False
        )
        x.set_shape((None, *shape))
        y.set_shape((None,))
        return (x, y, batch) if with_copies else (x, y)

    data = data.batch(batch_size).map(fetch, num_parallel_calls=autotune)
    if with_copies:
        data = data.map(_copies_augmented(copies_from, augment_copies), num_parallel_calls=autotune)
    if training and augment is not None and augment.enabled:
        data = data.map(lambda x, y: (augment(x), y), num_parallel_calls=autotune)
    if one_hot is not None:
        data = data.map(lambda x, y: (x, tf.one_hot(y, one_hot)), num_parallel_calls=autotune)
    options = tf.data.Options()
    options.deterministic = True  # parallel maps keep the seeded order
    return data.with_options(options).prefetch(autotune)


def _positions(labels: np.ndarray, *, training: bool, balanced_batches: bool, seed: int) -> Any:
    """The row positions a pipeline reads: in order, shuffled (seeded) or, with
    ``balanced_batches``, drawn from one repeating shuffled stream per class, equally."""
    import tensorflow as tf

    positions = np.arange(len(labels), dtype=np.int64)
    if training and balanced_batches:
        streams = [
            tf.data.Dataset.from_tensor_slices(positions[labels == c])
            .shuffle(int((labels == c).sum()), seed=seed + int(c), reshuffle_each_iteration=True)
            .repeat()
            for c in np.unique(labels)
        ]
        weights = [1.0 / len(streams)] * len(streams)
        return tf.data.Dataset.sample_from_datasets(streams, weights=weights, seed=seed)
    data = tf.data.Dataset.from_tensor_slices(positions)
    if training:
        data = data.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return data


def _copies_augmented(copies_from: int, augment: RandAugment) -> Any:
    """A batch map that augments only the copies (positions from ``copies_from`` on):
    gathered, augmented, rounded back to uint8 and scattered into the batch."""
    import tensorflow as tf

    def augment_the_copies(x: Any, y: Any, positions: Any) -> tuple[Any, Any]:
        where = tf.where(positions >= copies_from)

        def augmented() -> Any:
            made = augment(tf.gather_nd(x, where))
            made = tf.cast(tf.clip_by_value(tf.round(made), 0, 255), tf.uint8)
            return tf.tensor_scatter_nd_update(x, where, made)

        return tf.cond(tf.size(where) > 0, augmented, lambda: x), y

    return augment_the_copies


@dataclass
class FoldData:
    """One fold's training and validation inputs, after balancing the training part.

    Attributes:
        x_train: training images: rows read from the shards (plus synthetic rows made on read), or
            an array after an array sampler.
        y_train: training class indices (after balancing).
        x_val: validation images (the fold's own rows; never balanced).
        y_val: validation class indices.
        plan: how the training part was balanced.
        added_from: position in ``x_train`` of the first row a sampler added (after the rows
            the plan's indices load); ``len(y_train)`` when none was added.
        counts_before: images per class in the fold's training part before balancing.
    """

    x_train: np.ndarray | Rows
    y_train: np.ndarray
    x_val: ShardRows
    y_val: np.ndarray
    plan: BalancePlan
    added_from: int
    counts_before: np.ndarray

    def class_counts(self) -> dict[str, Any]:
        """Images per class before and after balancing, and the loss weights (history.json:
        the run overview draws them)."""
        n_classes = len(self.counts_before)
        weights = self.plan.class_weight
        return {
            "before": self.counts_before.tolist(),
            "after": np.bincount(self.y_train, minlength=n_classes).tolist(),
            "class_weight": None if weights is None else [weights[k] for k in range(n_classes)],
        }

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.x_val.image_shape


def load_fold_data(shards_dir: Path, fold: int, recipe: Recipe) -> FoldData:
    """Read a fold's rows and balance its training part (never the validation rows)."""
    cfg = recipe.train
    train_rows, val_rows = fold_rows(load_index(shards_dir), fold)
    n_classes = len(recipe.data.classes)
    labels = train_rows["label_index"].to_numpy()
    plan = plan_balance(labels, n_classes, cfg, seed=cfg.seed + fold)
    train_rows = train_rows.iloc[plan.indices]
    y_train = train_rows["label_index"].to_numpy(dtype=np.int64)
    added_from = len(y_train)
    # Rows stay in the shards (read per batch); the streaming samplers (SMOTE, augmentation
    # oversampling) add images made per batch. Only an array sampler (a custom strategy's
    # fit_resample) loads this fold's training images.
    x_train: np.ndarray | Rows = ShardRows(shards_dir, train_rows)
    if plan.capabilities.adds_rows_on_read:  # images made per batch, never all in memory
        x_train = plan.rows_sampler.fit(x_train, y_train).rows(x_train)
        y_train = plan.rows_sampler.y_
    elif plan.capabilities.resamples_loaded_images:
        x_train, y_train = plan.array_sampler.fit_resample(
            load_images(shards_dir, train_rows), y_train
        )
    y_val = val_rows["label_index"].to_numpy(dtype=np.int64)
    return FoldData(x_train, y_train, ShardRows(shards_dir, val_rows), y_val, plan, added_from,
                    np.bincount(labels, minlength=n_classes))  # fmt: skip


def compile_model(
    recipe: Recipe, input_shape: tuple[int, int, int], accelerator: Accelerator, *, name: str
) -> Any:
    """Build the recipe's model and compile it inside the accelerator's scope."""
    import keras

    from medml.models import build_model

    cfg = recipe.train
    with accelerator.scope():
        model = build_model(input_shape, len(recipe.data.classes), cfg, name=name)
        model.compile(
            optimizer=keras.optimizers.Adam(cfg.learning_rate),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
            if cfg.label_smoothing > 0
            else "sparse_categorical_crossentropy",
            metrics=["accuracy", *training_metrics(cfg, len(recipe.data.classes))],
            jit_compile=accelerator.jit_compile,
        )
    return model


def learning_rate_control(cfg: TrainConfig) -> Any:
    """A callback for ``train.learning_rate_decay`` and ``train.reduce_lr_on_plateau`` (None
    when neither is set).

    Both act on one base rate, as Keras 2's ``Adam(decay=…)`` with ``ReduceLROnPlateau`` did
    (seed 001): the plateau rule multiplies the base by ``factor`` after ``patience`` epochs
    without a ``val_loss`` improvement of 1e-4; every step uses base / (1 + decay · step).
    """
    import keras

    if not cfg.learning_rate_decay and cfg.reduce_lr_on_plateau is None:
        return None
    decay, plateau = cfg.learning_rate_decay, cfg.reduce_lr_on_plateau

    class LearningRateControl(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.base, self.best, self.wait = cfg.learning_rate, float("inf"), 0

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            step = float(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            self.model.optimizer.learning_rate = self.base / (1.0 + decay * step)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs if logs is not None else {}
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )
            loss = logs.get("val_loss")
            if plateau is None or loss is None:
                return
            if loss < self.best - 1e-4:
                self.best, self.wait = loss, 0
                return
            self.wait += 1
            if self.wait >= plateau.patience:
                self.base, self.wait = max(self.base * plateau.factor, plateau.min_lr), 0

    return LearningRateControl()


def training_metrics(cfg: TrainConfig, n_classes: int) -> list[Any]:
    """Keras metrics for ``train.extra_metrics`` (labels are sparse unless label smoothing
    one-hot encodes them, so class-wise metrics get one-hot labels through a thin wrapper)."""
    import keras

    one_hot_labels = cfg.label_smoothing > 0
    made = []
    for name in cfg.extra_metrics:
        if name == "f1":
            metric = keras.metrics.F1Score(average="macro", name="f1")
        elif name == "auc":
            metric = keras.metrics.AUC(multi_label=True, num_labels=n_classes, name="auc")
        elif name == "precision":
            metric = keras.metrics.Precision(name="precision")
        else:
            metric = keras.metrics.Recall(name="recall")
        made.append(metric if one_hot_labels else _one_hot_labels()(metric, n_classes))
    return made


def _one_hot_labels() -> type:
    """A metric wrapper that one-hot encodes sparse labels for a class-wise Keras metric."""
    import keras

    class OneHotLabels(keras.metrics.Metric):
        def __init__(self, inner: Any, n_classes: int, **kwargs: Any) -> None:
            super().__init__(name=inner.name, **kwargs)
            self.inner, self.n_classes = inner, n_classes

        def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
            labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
            self.inner.update_state(keras.ops.one_hot(labels, self.n_classes), y_pred,
                                    sample_weight)  # fmt: skip

        def result(self) -> Any:
            return self.inner.result()

        def reset_state(self) -> None:
            self.inner.reset_state()

    return OneHotLabels


def fit(
    model: Any, data: FoldData, recipe: Recipe, accelerator: Accelerator, *, seed: int,
    log_epochs: bool = False,
) -> tuple[dict[str, list[float]], float]:  # fmt: skip
    """Fit with early stopping on the fold's validation rows; returns history and seconds."""
    import keras

    cfg = recipe.train
    n_classes = len(recipe.data.classes)
    batch_size = cfg.batch_size * accelerator.replicas
    steps = -(-len(data.y_train) // batch_size)
    needs = data.plan.capabilities
    balanced = needs.balanced_batches
    callbacks: list[keras.callbacks.Callback] = [
        throughput_logger(steps * batch_size if balanced else len(data.y_train)),
        epoch_progress(cfg.epochs),
        keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=cfg.patience,
            restore_best_weights=cfg.keep_best_epoch,
            start_from_epoch=min(cfg.min_epochs, cfg.epochs),  # small CNNs plateau at first
        ),
    ]
    if (control := learning_rate_control(cfg)) is not None:
        callbacks.append(control)
    if log_epochs:  # per-epoch metrics (throughput included), optimizer params, model summary
        import mlflow

        callbacks.append(mlflow.keras.MlflowCallback())
    one_hot = n_classes if cfg.label_smoothing > 0 else None
    augment = RandAugment(cfg.augment, seed=seed) if cfg.augment_in_training else None
    copied = needs.augments_copies_per_batch
    copies = RandAugment(cfg.augment, seed=seed + 1) if copied else None
    train_data = make_dataset(
        data.x_train, data.y_train, batch_size=batch_size, training=True, seed=seed,
        balanced_batches=balanced, augment=augment, augment_copies=copies,
        copies_from=data.added_from if copied else None, one_hot=one_hot,
    )  # fmt: skip
    val_data = make_dataset(
        data.x_val, data.y_val, batch_size=batch_size, training=False, one_hot=one_hot
    )
    from medml.models import one_trace_per_model_is_expected

    started = time.perf_counter()
    with one_trace_per_model_is_expected():  # folds trained one after another in one process
        history = model.fit(
            train_data,
            validation_data=val_data,
            epochs=cfg.epochs,
            steps_per_epoch=steps if balanced else None,
            class_weight=data.plan.class_weight,
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline shuffles (seeded)
            verbose=0,  # epoch_progress prints one line per epoch
        )
    return history.history, time.perf_counter() - started


def save_fold(
    model: Any,
    history: dict[str, list[float]],
    seconds: float,
    files: FoldFiles,
    fold: int,
    class_counts: dict[str, Any] | None = None,
    *,
    keep_best_epoch: bool = True,
    first_candidate_epoch: int = 0,
) -> FoldResult:
    """Publish the fold folder: the model and the history (best epoch, scores, and the class
    counts before/after balancing), marked complete."""
    losses = history["val_loss"]
    start = min(first_candidate_epoch, len(losses))  # early stopping ignores earlier epochs
    best = start + int(np.argmin(losses[start:])) if start < len(losses) else len(losses) - 1
    kept = best if keep_best_epoch else len(losses) - 1
    summary = {
        "fold": fold,
        "epochs_run": len(history["loss"]),
        "best_epoch": best + 1,
        "kept_epoch": kept + 1,  # the epoch whose weights the model has
        "val_loss": float(history["val_loss"][kept]),
        "val_accuracy": float(history["val_accuracy"][kept]),
        "train_seconds": round(seconds, 2),
        "history": {k: [float(v) for v in vals] for k, vals in history.items()},
        "class_counts": class_counts,
    }
    with publish_dir(files.root) as staging:
        model.save(FoldFiles(staging).model)
        write_json(FoldFiles(staging).history, summary)
    return FoldResult(fold, files.model, files.history, None, summary["epochs_run"],
                      summary["val_loss"], summary["val_accuracy"])  # fmt: skip


def fold_params(
    recipe: Recipe, fold: int, data: FoldData, accelerator: Accelerator
) -> dict[str, str]:
    """What the fold's MLflow run records as params."""
    n_classes = len(recipe.data.classes)
    return {
        **recipe.flat_params(),
        "fold": str(fold),
        "train_images": str(len(data.y_train)),
        "val_images": str(len(data.y_val)),
        "class_weight": str(data.plan.class_weight),
        "train_class_counts": str(np.bincount(data.y_train, minlength=n_classes).tolist()),
        **accelerator.as_params(),
    }


def train_fold(
    shards_dir: Path,
    fold: int,
    out_dir: Path,
    recipe: Recipe,
    *,
    tracking: Tracking | None = None,
    parent_run_id: str | None = None,
    run_key: str = "",
    accelerator: Accelerator | None = None,
) -> FoldResult:
    """Train the model for one fold and save it into ``out_dir`` (see :class:`FoldFiles`).

    Args:
        shards_dir: output of preprocess.
        fold: which fold to hold out for validation.
        out_dir: fold output directory (model, history).
        recipe: the run's recipe.
        tracking: MLflow store to log to; ``None`` logs nothing.
        parent_run_id: MLflow parent run of the pipeline run.
        run_key: identifies the pipeline run (tagged on the MLflow run).
        accelerator: strategy/precision/XLA to train with; default
            :meth:`Accelerator.detect` on this machine's devices.

    Returns:
        Paths and the validation scores of the kept epoch.
    """
    import keras

    cfg = recipe.train
    seed = cfg.seed + fold
    data = load_fold_data(shards_dir, fold, recipe)
    keras.utils.set_random_seed(seed)
    accelerator = accelerator or Accelerator.detect(recipe.train)
    model = compile_model(recipe, data.input_shape, accelerator, name=f"fold_{fold}")
    if tracking is None:
        history, seconds = fit(model, data, recipe, accelerator, seed=seed)
        return save_fold(model, history, seconds, FoldFiles(Path(out_dir)), fold,
                         data.class_counts(), keep_best_epoch=cfg.keep_best_epoch,
                         first_candidate_epoch=min(cfg.min_epochs, cfg.epochs))  # fmt: skip
    import mlflow

    tags = {RUN_KEY_TAG: run_key, KIND_TAG: "fold", "fold": str(fold)}
    tracking.close_orphans(recipe.registry.experiment, tags)  # a killed earlier attempt
    with tracking.run(recipe.registry.experiment, run_name=f"fold-{fold}", tags=tags,
                      parent_run_id=parent_run_id) as run_id:  # fmt: skip
        mlflow.log_params(fold_params(recipe, fold, data, accelerator))
        history, seconds = fit(model, data, recipe, accelerator, seed=seed, log_epochs=True)
        result = save_fold(model, history, seconds, FoldFiles(Path(out_dir)), fold,
                           data.class_counts(), keep_best_epoch=cfg.keep_best_epoch,
                         first_candidate_epoch=min(cfg.min_epochs, cfg.epochs))  # fmt: skip
        best = {"best_val_loss": result.val_loss, "best_val_accuracy": result.val_accuracy}
        mlflow.log_metrics({**best, "train_seconds": seconds})
        mlflow.log_artifact(str(result.history_path))
        from medml.serving import pinned_requirements

        mlflow.keras.log_model(model, name=ARTIFACTS.model, signature=tensor_signature(model),
                               pip_requirements=pinned_requirements())  # fmt: skip
    return dataclasses.replace(result, mlflow_run_id=run_id)


def tensor_signature(model: Any) -> Any:
    """The fold model's MLflow signature: a batch of preprocessed uint8 images in, as the
    shards hold them (rescaling is a layer of the model), one probability per class out."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    shape = (-1, *(int(d) for d in model.input_shape[1:]))
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), shape)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, int(model.output_shape[-1])))]),
    )


def throughput_logger(images_per_epoch: int) -> Any:
    """A Keras callback adding ``images_per_second`` (training part of each epoch) to the logs.

    It must come before the loggers in the callback list: they (and the History) see it.
    """
    import keras

    class ThroughputLogger(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self._started = time.perf_counter()
            self._train_seconds: float | None = None

        def on_test_begin(self, logs: dict[str, float] | None = None) -> None:
            if getattr(self, "_started", None) is not None and self._train_seconds is None:
                self._train_seconds = time.perf_counter() - self._started

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            seconds = self._train_seconds or (time.perf_counter() - self._started)
            if logs is not None:
                logs["images_per_second"] = images_per_epoch / max(seconds, 1e-9)

    return ThroughputLogger()


def epoch_progress(epochs: int, echo: Callable[[str], None] | None = None) -> Any:
    """A Keras callback printing one line per epoch: the model (``fold_0``), the epoch, its
    losses and metrics, the seconds it took and the most time left (early stopping may end
    sooner). One line, not a progress bar: task logs and pod logs show it as it comes."""
    import keras

    say = echo or (lambda line: print(line, flush=True))

    class EpochProgress(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            done = epoch + 1
            per_epoch = (time.perf_counter() - self._started) / done
            shown = {key: value for key, value in (logs or {}).items() if key != "learning_rate"}
            first = [key for key in ("loss", "val_loss") if key in shown]
            order = [*first, *(key for key in shown if key not in first)]
            scores = " ".join(f"{key} {_number(shown[key])}" for key in order)
            say(
                f"{self.model.name} epoch {done}/{epochs}: {scores} | {per_epoch:.1f} s/epoch, "
                f"at most {_duration(per_epoch * (epochs - done))} left"
            )

    return EpochProgress()


def _number(value: Any) -> str:
    """A logged value in 4 significant digits (a custom metric may log something else)."""
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value).replace("\n", " ")[:40]


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m {rest:02d}s" if minutes else f"{rest}s"
