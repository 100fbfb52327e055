"""Training throughput: the seed notebooks' input pipeline against medml's, per model.

For the small CNN (seeds 002/004) and DenseNet121 (seed 001's head), at 224x224 RGB, prints
training images/s for

- (a) seed-style: float32 NumPy batches from a Python generator (what ``ImageDataGenerator``
  ``.flow`` hands Keras), float32 compute, no XLA;
- (b) medml: ``medml.train.make_dataset`` (uint8 rows gathered per batch — read from the
  shards in training, from an in-memory array here —, mapped with ``AUTOTUNE``, prefetched;
  the model casts and rescales on the device), with mixed precision and XLA when a GPU is
  visible (``medml.train.Accelerator``: ``auto`` settings),

side by side, and the ratio; and

- (c) plain Keras: ``model.fit`` on the same uint8 NumPy arrays held in memory, with the same
  model, batch size and settings as (b), in the same run: ``overhead`` is (b)/(c), what medml's
  input pipeline costs against the simplest way to feed Keras (target >= 0.9).

The first epoch of each (tracing, XLA compilation, cuDNN autotune) is not timed. Random
pixels: throughput does not depend on content.

    .venv/bin/python benchmarks/train_throughput.py [--images 512] [--batch-size 32] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _seed_generator(x: np.ndarray, y: np.ndarray, batch: int) -> Iterator[tuple]:
    while True:
        for start in range(0, len(x), batch):
            yield x[start : start + batch].astype(np.float32), y[start : start + batch]


def _images_per_second(model, data, steps: int | None, epochs: int, images: int,
                       **fit: object) -> float:  # fmt: skip
    from medml.train import throughput_logger

    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False, **fit)  # warm-up
    logger = throughput_logger(images)
    history = model.fit(data, steps_per_epoch=steps, epochs=epochs, verbose=0,
                        callbacks=[logger], shuffle=False, **fit)  # fmt: skip
    return float(np.median(history.history["images_per_second"]))


def measure(kind: str, size: int, images: int, batch: int, epochs: int) -> dict[str, float]:
    """Images/s of the seed-style and the medml pipeline for one model."""
    import keras
    import tensorflow as tf

    from medml.config import TrainConfig
    from medml.models import build_model
    from medml.train import Accelerator, make_dataset

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(images, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, 4, size=images).astype(np.int64)
    steps = images // batch

    def compiled(jit: bool) -> keras.Model:
        model = build_model((size, size, 3), 4, TrainConfig(model=kind, dropout=0.3), name=kind)
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                      jit_compile=jit)  # fmt: skip
        return model

    keras.utils.set_random_seed(0)
    seed = _images_per_second(
        compiled(False), _seed_generator(x, y, batch), steps, epochs, steps * batch
    )
    tf.keras.backend.clear_session()
    accelerator = Accelerator.detect(TrainConfig())
    with accelerator.scope():
        model = compiled(accelerator.jit_compile)
    data = make_dataset(x, y, batch_size=batch * accelerator.replicas, training=True).repeat()
    medml = _images_per_second(model, data, steps // accelerator.replicas, epochs, steps * batch)
    tf.keras.backend.clear_session()
    with accelerator.scope():
        model = compiled(accelerator.jit_compile)
    keep = steps * batch  # whole batches, as (b) trains on
    plain = _images_per_second(model, x[:keep], None, epochs, keep, y=y[:keep],
                               batch_size=batch * accelerator.replicas)  # fmt: skip
    tf.keras.backend.clear_session()
    return {"seed": seed, "medml": medml, "plain": plain, "policy": accelerator.policy,
            "jit": accelerator.jit_compile, "gpus": accelerator.gpus}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (after a warm-up)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--models", default="small_cnn,densenet121")
    args = parser.parse_args()

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    print(f"devices: {', '.join(names) or f'CPU only ({os.cpu_count()} cores), no GPU'}")
    print(f"{args.images} images {args.size}x{args.size}x3, batch {args.batch_size}, "
          f"{args.epochs} timed epoch(s) after a warm-up")  # fmt: skip
    print(f"{'model':<14}{'seed-style img/s':>18}{'medml img/s':>14}{'ratio':>8}"
          f"{'plain fit img/s':>17}{'overhead':>10}  medml settings")  # fmt: skip
    for kind in args.models.split(","):
        started = time.perf_counter()
        r = measure(kind, args.size, args.images, args.batch_size, args.epochs)
        print(
            f"{kind:<14}{r['seed']:>18.1f}{r['medml']:>14.1f}{r['medml'] / r['seed']:>7.2f}x"
            f"{r['plain']:>17.1f}{r['medml'] / r['plain']:>9.2f}x  "
            f"{r['policy']}, XLA {'on' if r['jit'] else 'off'}, {r['gpus']} GPU(s)  "
            f"[{time.perf_counter() - started:.0f} s]",
            flush=True,
        )
    print(
        "overhead = medml's input pipeline / plain model.fit on in-memory NumPy arrays, same "
        "model, batch and settings (target >= 0.9)"
    )


if __name__ == "__main__":
    main()
