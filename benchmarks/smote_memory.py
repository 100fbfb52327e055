"""SMOTE memory at size: medml's StreamingSMOTE on 20,000 images of 224x224x3.

Writes an imbalanced set of uint8 images to a memory-mapped file (the shards' format: one
``.npy`` read with ``mmap_mode="r"``), then, in a fresh process, fits ``StreamingSMOTE`` on it and
reads every synthetic image once in training-sized batches, printing seconds and peak RSS.
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


class MemmapRows:
    """Rows of a memory-mapped ``(n, size, size, 3)`` uint8 array."""

    def __init__(self, path: Path) -> None:
        self.array = np.load(path, mmap_mode="r")
        self.image_shape = self.array.shape[1:]

    def __len__(self) -> int:
        return len(self.array)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        return np.asarray(self.array[np.sort(positions)])[np.argsort(np.argsort(positions))]


def write_images(path: Path, n: int, size: int) -> np.ndarray:
    """Class-shaped images written chunk by chunk; returns the labels."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(len(COUNTS)), [int(n * c) for c in COUNTS])[:n]
    y = np.concatenate([y, np.zeros(n - len(y), np.int64)])
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    for start in range(0, n, 512):
        stop = min(start + 512, n)
        chunk = rng.integers(0, 80, size=(stop - start, size, size, 3), dtype=np.uint8)
        for i, label in enumerate(y[start:stop]):
            top = size // 8 + int(label) * size // 6 + int(rng.integers(0, size // 16))
            chunk[i, top : top + size // 5, size // 4 : size // 2] = 200
        out[start:stop] = chunk
    out.flush()
    return y


class AnonymousPeak:
    """Peak of the process's anonymous resident memory (``RssAnon``: heap and arrays, not the
    memory-mapped image pages, which the kernel can drop at will), sampled every 20 ms."""

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
    from medml.balance import PixelSMOTE, StreamingSMOTE

    anonymous = AnonymousPeak()
    rows, y = MemmapRows(path), np.load(labels)
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
    print(f"peak memory: {heap:.0f} MB anonymous (heap, arrays); {peak:.0f} MB RSS including "
          "the memory-mapped image pages it touched (page cache, reclaimable)")  # fmt: skip
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
        images, labels = Path(tmp) / "images.npy", Path(tmp) / "labels.npy"
        started = time.perf_counter()
        np.save(labels, write_images(images, args.n, args.size))
        print(
            f"wrote {images.stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - started:.0f}s"
        )
        subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--measure",
                        str(images), str(labels)], check=True)  # fmt: skip


if __name__ == "__main__":
    main()
