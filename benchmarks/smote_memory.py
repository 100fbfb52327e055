"""SMOTE memory at size: medml's StreamingSMOTE on 20,000 images of 224x224x3.

Writes an imbalanced set of uint8 images as preprocess's shards (``shard-*.npy`` and
``meta.json``), then, in a fresh process, reads them as training does (``ShardRows``: ``pread``
into each batch, nothing memory-mapped), fits ``StreamingSMOTE`` and reads every synthetic image
once in training-sized batches, printing seconds and peak RSS.
imbalanced-learn's in-memory SMOTE on the same data is not run — its working set is printed
from ``PixelSMOTE.estimate_mb`` (the float64 input copy plus the resampled output).

    .venv/bin/python benchmarks/smote_memory.py [--n 20000] [--size 224] [--batch 64]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

COUNTS = (0.55, 0.25, 0.12, 0.08)  # kidney-CT-like imbalance over 4 classes


SHARD_ROWS = 2048


def write_shards(shards: Path, n: int, size: int) -> np.ndarray:
    """Class-shaped images written as preprocess's shards, chunk by chunk; returns the labels."""
    from medml.io import write_json
    from medml.layout import ShardFiles, shard_name

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(len(COUNTS)), [int(n * c) for c in COUNTS])[:n]
    y = np.concatenate([y, np.zeros(n - len(y), np.int64)])
    files = ShardFiles(shards)
    shards.mkdir(parents=True)
    names = []
    for number, first in enumerate(range(0, n, SHARD_ROWS)):
        last = min(first + SHARD_ROWS, n)
        out = np.lib.format.open_memmap(files.shard(number), mode="w+", dtype=np.uint8,
                                        shape=(last - first, size, size, 3))  # fmt: skip
        for start in range(first, last, 512):
            stop = min(start + 512, last)
            chunk = rng.integers(0, 80, size=(stop - start, size, size, 3), dtype=np.uint8)
            for i, label in enumerate(y[start:stop]):
                top = size // 8 + int(label) * size // 6 + int(rng.integers(0, size // 16))
                chunk[i, top : top + size // 5, size // 4 : size // 2] = 200
            out[start - first : stop - first] = chunk
        out.flush()
        del out
        names.append(shard_name(number))
    write_json(files.meta, {"size": size, "channels": 3, "shards": names, "images": n})
    return y


class AnonymousPeak:
    """Peak of the process's anonymous resident memory (``RssAnon``: heap and arrays, without
    the libraries' mapped code), sampled every 20 ms."""

    def __init__(self) -> None:
        import threading

        self.peak_kb, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))

    def stop(self) -> float:
        """Stop sampling; the peak in MB."""
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024


def measure(path: Path, labels: Path, batch: int) -> None:
    """In this process: fit, read every synthetic image once, print seconds and peak memory."""
    import pandas as pd

    from medml.balance import PixelSMOTE, StreamingSMOTE
    from medml.preprocess import ShardRows

    anonymous = AnonymousPeak()
    y = np.load(labels)
    positions = np.arange(len(y))
    index = pd.DataFrame({"shard": positions // SHARD_ROWS, "offset": positions % SHARD_ROWS})
    rows = ShardRows(path, index)
    started = time.perf_counter()
    sampler = StreamingSMOTE(random_state=0).fit(rows, y)
    fitted = time.perf_counter() - started
    synthetic = sampler.rows(rows)
    for start in range(len(y), len(synthetic), batch):
        synthetic.gather(np.arange(start, min(start + batch, len(synthetic))))
    total = time.perf_counter() - started
    made = len(synthetic) - len(y)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    heap = anonymous.stop()
    features = int(np.prod(rows.image_shape))
    print(f"images: {len(y)} x {rows.image_shape}  synthetic: {made}  class counts: "
          f"{np.bincount(y).tolist()} -> {np.bincount(sampler.y_).tolist()}")  # fmt: skip
    print(f"StreamingSMOTE fit {fitted:.1f}s, fit + every synthetic image read once "
          f"(batches of {batch}) {total:.1f}s")  # fmt: skip
    print(f"peak RSS {peak:.0f} MB ({heap:.0f} MB of it anonymous: heap and arrays)")
    needed = PixelSMOTE().estimate_mb(y, features)
    print(f"imbalanced-learn SMOTE on the same data would need ~{needed / 1024:.1f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(Path(args.measure[0]), Path(args.measure[1]), args.batch)
        return
    with tempfile.TemporaryDirectory() as tmp:
        images, labels = Path(tmp) / "shards", Path(tmp) / "labels.npy"
        started = time.perf_counter()
        np.save(labels, write_shards(images, args.n, args.size))
        written = sum(f.stat().st_size for f in images.glob("*.npy"))
        print(f"wrote {written / 2**30:.2f} GiB of shards in {time.perf_counter() - started:.0f}s")
        subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--measure",
                        str(images), str(labels)], check=True)  # fmt: skip


if __name__ == "__main__":
    main()
