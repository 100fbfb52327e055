"""A whole `medml run` at the real datasets' sizes: time, images/s and peak RSS per step.

Phantom sets shaped like the real ones (generated once and cached under ``--cache``):

- ``kidney-ct``: 12,446 slices at 512×512 (folder per class);
- ``capsule-endoscopy``: 47,238 frames at 336×336 (CSV manifest);
- ``chest-xray``: 5,856 radiographs at 1,500×1,500 (train/val/test folders).

Each step runs as its own ``medml`` process (``init``, ``ingest``, ``validate``, ``split``,
``preprocess``, ``train``, ``evaluate``, ``register``), so its peak RSS is its own (from
``wait4``). Training is the recipe's model for ``--epochs`` (default 1: the figure of interest is
the data path and memory, not accuracy). Prints a table and the ratio of
ingest + validate + split to preprocess (issue 17's target: ≤ 1).

``--dvc`` runs the data stages through ``dvc repro`` instead, as a user of the repository would:
a ``git clone`` of this repository (the project's ``.venv`` linked in), ``params.yaml`` set to
the dataset's recipe with its own settings, the phantom hard-linked where ``pipeline.source``
points, and ``dvc repro --single-item <stage>`` timed per stage (DVC's own work included:
hashing the dependencies, caching the outputs).

``--repeat`` then runs the data steps again on a new run in the same ``MEDML_HOME``: a
scheduled retrain of an unchanged dataset, which reuses the first run's hashes and decode
verdicts (:mod:`medml.data.reuse`), its validation and split (:mod:`medml.step_reuse`) and
its shards (the DVC run cache); it prints what each step reused and the data steps' time as a
share of the cold run's (issue 26's target: ≤ 25 %).

    .venv/bin/python benchmarks/end_to_end.py [--dataset kidney-ct] [--n N] [--epochs 1]
        [--cache ~/.cache/medml-bench] [--until preprocess] [--dvc] [--repeat]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {"kidney-ct": (12446, 512), "capsule-endoscopy": (47238, 336), "chest-xray": (5856, 1500)}
STEPS = ("ingest", "validate", "split", "preprocess", "train", "evaluate", "register")
DATA_STEPS = STEPS[:4]
MEDML = str(Path(sys.executable).with_name("medml"))
REPO_ROOT = Path(__file__).resolve().parent.parent


def phantom(dataset: str, n: int, side: int, cache: Path) -> Path:
    """The cached phantom set (generated on first use)."""
    root = cache / f"{dataset}-{n}-{side}"
    if not (root / ".complete").is_file():
        if root.exists():
            shutil.rmtree(root)
        started = time.perf_counter()
        subprocess.run([MEDML, "synth", "--recipe", dataset, "--out", str(root), "--n", str(n),
                        "--size", str(side)], check=True)  # fmt: skip
        (root / ".complete").write_text("")
        print(f"generated {n} images at {side}px in {time.perf_counter() - started:.0f}s")
    return root


def timed(
    cmd: list[str], env: dict[str, str], cwd: Path | None = None, said: list[str] | None = None
) -> tuple[float, float]:
    """Run ``cmd``; its wall seconds and peak RSS in MB (its largest process: wait4 counts
    the descendants it waited for). Its output's "reused" line, if any, is added to ``said``."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{err.read().decode()[-3000:]}")
        if said is not None:
            said += [line.strip() for line in out.read().decode().splitlines() if "reused" in line]
    return seconds, usage.ru_maxrss / 1024


def dvc_clone(dataset: str, source: Path, work: Path, epochs: int) -> Path:
    """A clone of this repository whose params.yaml runs ``dataset``'s recipe on ``source``."""
    import yaml

    from medml.config import flatten, load_recipe

    repo = work / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(repo)], check=True)
    (repo / ".venv").symlink_to(REPO_ROOT / ".venv")
    params_path = repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    own = flatten(load_recipe(dataset).model_dump(mode="json"))
    for section in ("data", "image", "split", "train", "registry"):
        for key in list(params.get(section, {})):
            if f"{section}.{key}" in own:
                params[section][key] = own[f"{section}.{key}"]
    params["recipe"] = dataset
    params["train"]["epochs"] = epochs
    target = repo / params["pipeline"]["source"]
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(source), str(target)], check=True)  # hard links: no copy
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(SIZES), default="kidney-ct")
    parser.add_argument("--n", type=int, help="images (default: the real dataset's count)")
    parser.add_argument("--side", type=int, help="image side (default: the real dataset's)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--until",
        choices=STEPS,
        default=STEPS[-1],
        help="last step to run (e.g. preprocess: the data steps only)",
    )
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "medml-bench")
    parser.add_argument("--dvc", action="store_true", help="the data stages through dvc repro")
    parser.add_argument(
        "--repeat",
        action="store_true",
        help="then the data steps again in the same MEDML_HOME (what a scheduled retrain of "
        "an unchanged dataset reuses: medml.data.reuse)",
    )
    args = parser.parse_args()
    n, side = args.n or SIZES[args.dataset][0], args.side or SIZES[args.dataset][1]
    source = phantom(args.dataset, n, side, args.cache)
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "MEDML_HOME": home, "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.pop("MLFLOW_TRACKING_URI", None)
        print(f"cores: {os.cpu_count()}  dataset: {args.dataset}  images: {n} at {side}px  "
              f"epochs: {args.epochs}{'  (dvc repro)' if args.dvc else ''}")  # fmt: skip
        print(f"{'step':<12}{'seconds':>9}{'images/s':>10}{'peak RSS MB':>13}")
        seconds = {}
        if args.dvc:
            repo = dvc_clone(args.dataset, source, Path(home), args.epochs)
            dvc = str(REPO_ROOT / ".venv" / "bin" / "dvc")
            for step in DATA_STEPS:
                seconds[step], peak = timed([dvc, "repro", "--single-item", step], env, repo)
                _row(step, seconds[step], n, peak)
            _ratio(seconds)
            return
        steps = STEPS[: STEPS.index(args.until) + 1]
        cold = _run_steps(Path(home) / "run", steps, source, args, env, n)
        if args.repeat:
            print("again, on the unchanged dataset (a scheduled retrain; same MEDML_HOME):")
            again = _run_steps(Path(home) / "run-again", DATA_STEPS, source, args, env, n)
            before, after = (sum(t[s] for s in DATA_STEPS) for t in (cold, again))
            print(
                f"data steps: cold {before:.1f} s, unchanged {after:.1f} s = "
                f"{after / before:.0%} of cold (target <= 25%)"
            )


def _run_steps(
    run: Path, steps: tuple[str, ...], source: Path, args: argparse.Namespace,
    env: dict[str, str], n: int,
) -> dict[str, float]:  # fmt: skip
    subprocess.run([MEDML, "init", "--run-dir", str(run), "--source", str(source),
                    "--recipe", args.dataset, "--set", f"train.epochs={args.epochs}",
                    "--set", "registry.gate.require_better_than_chance=false"],
                   env=env, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    seconds: dict[str, float] = {}
    for step in steps:
        said: list[str] = []
        seconds[step], peak = timed([MEDML, step, "--run-dir", str(run)], env, said=said)
        _row(step, seconds[step], n, peak)
        for line in said:
            print(f"    {line}")
    _ratio(seconds)
    return seconds


def _row(step: str, seconds: float, images: int, peak_mb: float) -> None:
    print(f"{step:<12}{seconds:>9.1f}{images / seconds:>10.0f}{peak_mb:>13.0f}", flush=True)


def _ratio(seconds: dict[str, float]) -> None:
    if "preprocess" in seconds:
        data = seconds["ingest"] + seconds["validate"] + seconds["split"]
        print(
            f"ingest+validate+split : preprocess = {data / seconds['preprocess']:.2f} (target <= 1)"
        )


if __name__ == "__main__":
    main()
