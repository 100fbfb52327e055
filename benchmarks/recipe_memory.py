"""Peak memory of every shipped recipe's training step, at the recipe's own image size and batch.

For each recipe: a phantom of its dataset's shape, its data steps (in this process), then one
fold's training in a fresh process (``medml train --fold 0``, as the DAG's fold task runs it) for
one epoch of a small phantom: a few batches at the recipe's real image size, batch size, model,
balancing and augmentation. Prints the peak RSS of that process (``wait4``), against a 2 GB
budget. A recipe whose ImageNet weights file is not on this machine trains from random weights
(the same network, so the same memory) and says so.

    .venv/bin/python benchmarks/recipe_memory.py [--recipes a,b] [--n 200] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_MB = 2048


def train_peak(run_dir: Path, env: dict[str, str]) -> tuple[float, float, int]:
    """Seconds, peak RSS (MB) and exit code of ``medml train --fold 0`` in a fresh process."""
    medml = Path(sys.executable).with_name("medml")
    command = [str(medml), "train", "--run-dir", str(run_dir), "--fold", "0"]
    started = time.perf_counter()
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: nothing blocks the child
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = code = os.waitstatus_to_exitcode(status)
        if code:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-2000:])
    return time.perf_counter() - started, usage.ru_maxrss / 1024, code


def prepare(name: str, work: Path, n: int) -> tuple[Path, str, dict]:
    """A phantom and an initialised run with its data steps done; what changed, and the recipe."""
    from medml import pipeline, runs
    from medml.config import load_recipe
    from medml.data.synthetic import synthesize
    from medml.errors import ConfigError
    from medml.models import local_weights

    recipe = load_recipe(name)
    data = synthesize(name, work / "data", n=n, seed=1, image_size=max(64, recipe.image.size))
    budget = ["train.epochs=1", "train.min_epochs=0", "data.min_images_per_class=2"]
    note = ""
    try:
        local_weights(recipe.train.weights)
    except ConfigError:
        budget.append("train.weights=null")
        note = "random init (weights file absent)"
    ctx = runs.init_run(work / "run", data.root, name, overrides=budget)
    pipeline.run_data_steps(ctx, echo=lambda _: None)
    shape = {"size": recipe.image.size, "batch": recipe.train.batch_size,
             "model": recipe.train.model, "balance": recipe.train.balance}  # fmt: skip
    return ctx.layout.root, note, shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="", help="comma-separated (default: every one)")
    parser.add_argument("--n", type=int, default=200, help="phantom images per recipe")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    from medml.config import RECIPES_DIR

    names = args.recipes.split(",") if args.recipes else sorted(
        path.stem for path in RECIPES_DIR.glob("*.yaml"))  # fmt: skip
    root = args.workdir or Path(tempfile.mkdtemp(prefix="recipe-memory-"))
    env = {**os.environ, "MEDML_HOME": str(root / "home"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    os.environ["MEDML_HOME"] = env["MEDML_HOME"]
    print(
        f"{'recipe':<28}{'size':>5}{'batch':>6}  {'model':<14}{'train s':>8}{'peak MB':>9}  "
        f"{'<= 2 GB':<8}note"
    )
    over = []
    for name in names:
        run_dir, note, shape = prepare(name, root / name, args.n)
        seconds, peak, code = train_peak(run_dir, env)
        fits = "yes" if peak <= BUDGET_MB else "NO"
        if code:
            fits, note = "failed", f"exit {code}"
        elif peak > BUDGET_MB:
            over.append(name)
        print(
            f"{name:<28}{shape['size']:>5}{shape['batch']:>6}  {shape['model']:<14}"
            f"{seconds:>8.1f}{peak:>9.0f}  {fits:<8}{note}",
            flush=True,
        )
    print(f"over the {BUDGET_MB} MB budget: {', '.join(over) or 'none'}")


if __name__ == "__main__":
    main()
