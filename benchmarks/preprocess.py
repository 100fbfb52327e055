"""Preprocess throughput and memory: medml's preprocess vs the seed notebooks' loop.

Prints, for N phantom JPEGs (default 5,000 at 512x512, resized to 128x128):

- images/s and peak RSS of the seed-style loop (``cv2.imread`` + ``cv2.resize`` per file in one
  Python loop, appended to a list, then ``np.array``) and of ``medml.preprocess``; the ratio;
- the decode ceiling: one thread per core doing nothing but medml's own decode of each file
  (read, libjpeg at the reduced scale), so medml's figure can be read against what the cores
  can do at all;
- medml's peak RSS when the same files are listed 10 times (50,000 rows), against 5,000 rows:
  preprocess streams shard by shard, so memory should not grow with the dataset;
- the time of an unchanged ``dvc repro`` as a fraction of the cold run;
- what verifying every shard's SHA-256 before training costs (``medml.io.corrupted_files``):
  the first check after preprocess, then an incremental one on unchanged shards, each as a
  fraction of preprocess's time.

Each measurement runs in its own process so peak RSS is its own. The seed loop, the ceiling and
medml run in turn ``--repeats`` times (the order rotating) and the medians are compared, so a
slow spell of a shared machine does not land on one side only.

    .venv/bin/python benchmarks/preprocess.py [--n 5000] [--source-size 512] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_seed_loop(splits: str, size: int) -> dict[str, float]:
    """The seed notebooks' loop, verbatim in spirit (seed 000)."""
    import cv2
    import numpy as np

    from medml.data.ingest import absolute_paths

    # The table's roots are relative to the table's folder, not to this process's directory.
    paths = absolute_paths(pd.read_parquet(splits), Path(splits).parent)
    started = time.perf_counter()
    images = []
    for path in paths:
        image = cv2.imread(path)
        if image is None:
            raise SystemExit(f"seed loop: cv2.imread cannot read {path}")
        image = cv2.resize(image, (size, size))
        images.append(image)
    array = np.array(images)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "images": len(array), "peak_rss_mb": _peak_rss_mb()}


def child_medml(splits: str, size: int, out: str) -> dict[str, float]:
    """medml's preprocess step (parallel decode, streaming shards)."""
    from medml.config import load_recipe
    from medml.io import corrupted_files
    from medml.preprocess import preprocess

    recipe = load_recipe("kidney-ct", overrides=[f"image.size={size}", "image.channels=3"])
    started = time.perf_counter()
    result = preprocess(Path(splits), Path(out), recipe)
    seconds = time.perf_counter() - started
    checks = []  # what training pays to verify every shard's bytes: first, then incrementally
    time.sleep(2.1)  # shards younger than medml.io's settle time are never taken as verified
    for _ in range(2):
        started = time.perf_counter()
        assert corrupted_files(Path(out)) == []
        checks.append(time.perf_counter() - started)
    return {"seconds": seconds, "images": result.images, "peak_rss_mb": _peak_rss_mb(),
            "check_first": checks[0], "check_again": checks[1]}  # fmt: skip


def child_decode_ceiling(splits: str, size: int) -> dict[str, float]:
    """What the cores can decode at all: one thread per core doing only medml's decode
    (``LoadImage.decode``: read, libjpeg at the reduced scale); nothing converted or written.
    """
    from concurrent.futures import ThreadPoolExecutor

    import cv2

    from medml.data.ingest import absolute_paths
    from medml.preprocess import LoadImage

    table = pd.read_parquet(splits)
    paths = absolute_paths(table, Path(splits).parent)
    load = LoadImage(size, 3)
    cv2.setNumThreads(0)

    def decode(rows: range) -> None:
        for k in rows:
            load.decode(paths[k])

    started = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(
            pool.map(decode, [range(i, min(i + 32, len(paths))) for i in range(0, len(paths), 32)])
        )
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "images": len(paths), "peak_rss_mb": _peak_rss_mb()}


def _run_child(*args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _splits_for(root: Path, copies: int, path: Path) -> Path:
    from medml.config import load_recipe
    from medml.data.ingest import ingest

    manifest = pd.read_parquet(
        ingest(root, path.with_name("manifest.parquet"), load_recipe("kidney-ct")).manifest
    )
    table = pd.concat([manifest] * copies, ignore_index=True)
    table = table.assign(label_index=0, split="train", fold=0)
    table.to_parquet(path, index=False)
    return path


def _dvc_ratio(workdir: Path, n: int) -> tuple[float, float]:
    repo = workdir / "dvc-repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "recipes", repo / "recipes")
    shutil.copytree(REPO / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    params = (repo / "params.yaml").read_text().replace("synth_n: 600", f"synth_n: {n}")
    (repo / "params.yaml").write_text(params)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    os.symlink(REPO / ".venv", repo / ".venv")  # the stages call .venv/bin/medml
    timings = []
    for _ in range(2):  # the data stages: up to preprocess (training is not measured here)
        started = time.perf_counter()
        done = subprocess.run(["dvc", "repro", "-q", "preprocess"], cwd=repo, env=env,
                              capture_output=True, text=True)  # fmt: skip
        timings.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"dvc repro failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return timings[0], timings[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--source-size", type=int, default=512)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--scale-copies", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="alternating seed/medml runs")
    parser.add_argument(
        "--dvc-n", type=int, default=0, help="images for the DVC timing (0: --n; >= ~200)"
    )
    parser.add_argument("--child", nargs="*")
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "seed":
            result = child_seed_loop(rest[0], int(rest[1]))
        elif kind == "ceiling":
            result = child_decode_ceiling(rest[0], int(rest[1]))
        else:
            result = child_medml(rest[0], int(rest[1]), rest[2])
        print(json.dumps(result))
        return

    from medml.data.synthetic import synth_kidney_ct

    with tempfile.TemporaryDirectory(prefix="medml-bench-") as tmp:
        work = Path(tmp)
        os.environ["MEDML_HOME"] = str(work / "home")  # the children's verified-shard tables
        print(
            f"generating {args.n} phantom JPEGs at {args.source_size}x{args.source_size} ...",
            flush=True,
        )
        data = synth_kidney_ct(work / "data", n=args.n, seed=0, image_size=args.source_size).root
        # Same start for both sides: the generated files written back to disk and in the page
        # cache, so neither pays for the other's writeback or for cold reads.
        os.sync()
        for path in data.rglob("*"):
            if path.is_file():
                path.read_bytes()
        small = _splits_for(data, 1, work / "splits.parquet")
        large = _splits_for(data, args.scale_copies, work / "splits-large.parquet")
        runs: dict[str, list[dict[str, float]]] = {"seed": [], "ceiling": [], "medml": []}
        for repeat in range(args.repeats):
            kinds = list(runs)[repeat % 3 :] + list(runs)[: repeat % 3]  # no side always first
            for kind in kinds:
                out = [str(work / f"shards-{repeat}")] if kind == "medml" else []
                runs[kind].append(_run_child(kind, str(small), str(args.size), *out))
            shutil.rmtree(work / f"shards-{repeat}")
        seeds, ceilings, medmls = runs["seed"], runs["ceiling"], runs["medml"]
        medml_large = _run_child("medml", str(large), str(args.size), str(work / "shards-large"))
        cold, warm = _dvc_ratio(work, args.dvc_n or args.n)

    def rate(r: dict[str, float]) -> float:
        return r["images"] / r["seconds"]

    def row(name: str, runs: list[dict[str, float]]) -> str:
        rates = sorted(rate(r) for r in runs)
        peak = max(r["peak_rss_mb"] for r in runs)
        spread = f"{rates[0]:.0f}-{rates[-1]:.0f}"
        return f"{name:28}{statistics.median(rates):>10.0f}{spread:>14}{peak:>13.0f}"

    seed_rate = statistics.median(rate(r) for r in seeds)
    medml_rate = statistics.median(rate(r) for r in medmls)
    medml = max(medmls, key=lambda r: r["peak_rss_mb"])
    print(f"\ncores: {os.cpu_count()}  images: {args.n}  {args.source_size}px -> {args.size}px RGB")
    print(f"{'':28}{'images/s':>10}{'range':>14}{'peak RSS MB':>13}   ({args.repeats} runs each)")
    print(row("seed loop (imread+resize)", seeds))
    print(row("medml preprocess", medmls))
    print(row("decode ceiling (no output)", ceilings))
    ceiling_rate = statistics.median(rate(r) for r in ceilings)
    print(f"throughput ratio medml/seed (medians): {medml_rate / seed_rate:.2f}x  (target >= 4x)")
    print(
        f"decode ceiling/seed: {ceiling_rate / seed_rate:.2f}x; medml reaches "
        f"{medml_rate / ceiling_rate:.0%} of what {os.cpu_count()} threads decode writing nothing"
    )
    first = statistics.median(r["check_first"] / r["seconds"] for r in medmls)
    again = statistics.median(r["check_again"] / r["seconds"] for r in medmls)
    print(
        f"shard SHA-256 check before training: first {first:.1%} of preprocess time, "
        f"incremental (unchanged shards) {again:.1%} (target <= 10%)"
    )
    n_large = int(medml_large["images"])
    ratio = medml_large["peak_rss_mb"] / medml["peak_rss_mb"]
    print(
        f"medml peak RSS at {n_large} rows: {medml_large['peak_rss_mb']:.0f} MB = {ratio:.2f}x "
        f"the {args.n}-row peak (target <= 1.2x); {rate(medml_large):.0f} images/s"
    )
    print(
        f"dvc repro with {args.dvc_n or args.n} images: cold {cold:.1f}s, unchanged {warm:.2f}s = "
        f"{warm / cold:.1%} of cold (target <= 5%)"
    )


if __name__ == "__main__":
    main()
