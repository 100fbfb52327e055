"""Does the input pipeline stall training on this machine? Input-wait share per balancing mode.

Trains fold 0 of a real run (medml's own data steps on a kidney-CT phantom: memory-mapped
shards, the recipe's model and batch size) three ways, after a warm-up epoch:

- **pipeline only**: the training ``tf.data`` pipeline iterated without a model (images/s it
  can deliver);
- **training**: ``model.fit`` on that pipeline, as ``medml train`` runs it;
- **ideal input**: ``model.fit`` on the same batches already in memory (a cached pipeline, so
  reading costs nothing).

input-wait share = 1 − training / ideal: the fraction of training time spent waiting for (or
competing with) the input pipeline. Per ``train.balance`` mode, since SMOTE interpolates and
augmentation oversampling augments in the pipeline, per batch.

    .venv/bin/python benchmarks/input_wait.py [--n 4000] [--side 256] [--size 64]
        [--modes class_weight,smote,augment_oversample] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
MEDML = str(Path(sys.executable).with_name("medml"))


def _prepare(work: Path, n: int, side: int, size: int) -> Path:
    """A run directory through preprocess (phantom → ingest → validate → split → shards)."""
    env = {**os.environ, "MEDML_HOME": str(work / "home")}
    quiet = {"env": env, "check": True, "stdout": subprocess.DEVNULL}
    subprocess.run([MEDML, "synth", "--recipe", "kidney-ct", "--out", str(work / "data"),
                    "--n", str(n), "--size", str(side)], **quiet)  # fmt: skip
    run = work / "run"
    subprocess.run([MEDML, "init", "--run-dir", str(run), "--source", str(work / "data"),
                    "--recipe", "kidney-ct", "--set", f"image.size={size}"], **quiet)  # fmt: skip
    for step in ("ingest", "validate", "split", "preprocess"):
        subprocess.run([MEDML, step, "--run-dir", str(run)], **quiet, stderr=subprocess.DEVNULL)
    return run


def _images_per_second(model, data, epochs: int, images: int) -> float:
    from medml.train import throughput_logger

    history = model.fit(data, epochs=epochs, verbose=0, shuffle=False,
                        callbacks=[throughput_logger(images)])  # fmt: skip
    return float(max(history.history["images_per_second"]))


def measure(run: Path, mode: str, epochs: int) -> dict[str, float]:
    """Images/s of the pipeline alone, of training on it, and of training on cached batches."""
    import keras

    from medml.augment import RandAugment
    from medml.config import with_settings
    from medml.runs import load_context
    from medml.train import Accelerator, compile_model, load_fold_data, make_dataset

    ctx = load_context(run)
    recipe = with_settings(ctx.recipe, {"train.balance": mode}, source="--modes")
    data = load_fold_data(ctx.layout.shards, 0, recipe)
    cfg = recipe.train
    accelerator = Accelerator.detect(cfg)
    copied = data.plan.capabilities.augments_copies_per_batch
    copies = RandAugment(cfg.augment, seed=1) if copied else None
    augment = RandAugment(cfg.augment, seed=0) if cfg.augment_in_training else None
    pipeline = make_dataset(data.x_train, data.y_train, batch_size=cfg.batch_size, training=True,
                            seed=0, augment=augment, augment_copies=copies,
                            copies_from=data.added_from if copied else None)  # fmt: skip
    images = len(data.y_train)
    for _ in pipeline:  # warm-up (tracing, page cache)
        pass
    started = time.perf_counter()
    for _ in pipeline:
        pass
    alone = images / (time.perf_counter() - started)

    keras.utils.set_random_seed(0)
    model = compile_model(recipe, data.input_shape, accelerator, name="probe")
    model.fit(pipeline, epochs=1, verbose=0, shuffle=False)  # warm-up
    training = _images_per_second(model, pipeline, epochs, images)
    cached = pipeline.cache()
    model.fit(cached, epochs=1, verbose=0, shuffle=False)  # fills the cache (and warms up)
    ideal = _images_per_second(model, cached, epochs, images)
    keras.backend.clear_session()
    return {"images": images, "alone": alone, "training": training, "ideal": ideal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="phantom images")
    parser.add_argument("--side", type=int, default=256, help="phantom image side")
    parser.add_argument("--size", type=int, default=64, help="image.size (model input)")
    parser.add_argument("--modes", default="class_weight,smote,augment_oversample")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (the best counts)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = _prepare(Path(tmp), args.n, args.side, args.size)
        os.environ["MEDML_HOME"] = str(Path(tmp) / "home")
        print(f"cores: {os.cpu_count()}  kidney-ct phantom: {args.n} images, model input "
              f"{args.size}px, small_cnn, fold 0 of 3")  # fmt: skip
        print(f"{'train.balance':<20}{'images':>8}{'pipeline img/s':>16}{'train img/s':>13}"
              f"{'ideal img/s':>13}{'input wait':>12}")  # fmt: skip
        for mode in args.modes.split(","):
            r = measure(run, mode, args.epochs)
            wait = max(0.0, 1 - r["training"] / r["ideal"])
            print(f"{mode:<20}{r['images']:>8}{r['alone']:>16.0f}{r['training']:>13.0f}"
                  f"{r['ideal']:>13.0f}{wait:>11.1%}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
