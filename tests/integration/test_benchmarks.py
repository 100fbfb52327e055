"""Every script in ``benchmarks/`` runs at a tiny size and prints its figures, so a benchmark
that no longer runs (a moved path, a renamed setting, a changed API) fails CI's slow suite
instead of the next person who wants its numbers. ~2 min on 2 cores."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.integration]

BENCHMARKS = REPO_ROOT / "benchmarks"

# script -> runs: (arguments, a line of figures its output must hold); "{tmp}" is a scratch
# folder. The sizes are the smallest each script's data steps accept (the kidney-CT recipe
# wants >= 10 images and >= 4 patients per class).
RUNS: dict[str, list[tuple[list[str], str]]] = {
    "dag_parse.py": [(["--repeats", "1"], r"medml_retrain\.py +\d+\.\d+ +\d+\.\d+ ")],
    "dicom_ingest.py": [
        (
            ["--images", "48", "--side", "64", "--per-patient", "4", "--workdir", "{tmp}/work"],
            r"preprocess +\d+\.\d+ +\d+ +\d+",
        )
    ],
    "end_to_end.py": [
        (
            [
                "--n",
                "120",
                "--side",
                "64",
                "--epochs",
                "1",
                "--cache",
                "{tmp}",
                "--until",
                "preprocess",
                "--repeat",
            ],  # fmt: skip
            r"again, on the unchanged dataset.*\n(.*\n)*validate .*\n +.*unchanged since run "
            r"(.*\n)*ingest\+validate\+split : preprocess = \d+\.\d+(.*\n)*data steps: cold "
            r"\d+\.\d s, unchanged \d+\.\d s = \d+% of cold",
        ),
        (
            ["--n", "120", "--side", "64", "--cache", "{tmp}", "--dvc"],
            r"preprocess +\d+\.\d+ +\d+ +\d+\n.*preprocess = \d+\.\d+",
        ),
    ],
    "input_wait.py": [
        (
            ["--n", "120", "--side", "64", "--size", "32", "--epochs", "1"],
            r"augment_oversample +\d+ +\d+ +\d+ +\d+ +\d+\.\d%",
        )
    ],
    "preprocess.py": [
        (
            [
                "--n",
                "120",
                "--source-size",
                "64",
                "--size",
                "32",
                "--scale-copies",
                "2",
                "--repeats",
                "1",
                "--dvc-n",
                "200",
            ],  # fmt: skip
            r"throughput ratio medml/seed \(medians\): \d+\.\d+x(.*\n)+shard SHA-256 check before "
            r"training: first \d+\.\d%(.*\n)+dvc repro with 200 images: cold \d+\.\d+s",
        )
    ],
    "recipe_memory.py": [
        (
            ["--recipes", "kidney-ct", "--n", "120", "--workdir", "{tmp}/work"],
            r"kidney-ct +64 +32  small_cnn +\d+\.\d+ +\d+  yes",
        )
    ],
    "smote_memory.py": [
        (["--n", "200", "--size", "32", "--batch", "16"], r"StreamingSMOTE fit \d+\.\d+s")
    ],
    "train_throughput.py": [
        (
            [
                "--images",
                "64",
                "--batch-size",
                "32",
                "--epochs",
                "1",
                "--size",
                "32",
                "--models",
                "small_cnn",
            ],  # fmt: skip
            r"small_cnn +\d+\.\d+ +\d+\.\d+ +\d+\.\d+x +\d+\.\d+ +\d+\.\d+x",
        )
    ],
}

# What the tiny runs leave out, and why (each is a plain `medml` call or a model build that other
# tests cover; the benchmark's own code runs above).
NOT_RUN = {
    "train_throughput.py --models densenet121": "building and tracing DenseNet121 takes ~2 min "
    "on 2 cores even at 32x32 with 64 images",
    "end_to_end.py train/evaluate/register steps": "`medml train|evaluate|register --run-dir` "
    "(~40 s of TensorFlow at any size); tests/integration/test_medml_run.py runs them",
}


def test_every_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    scripts = sorted(path.name for path in BENCHMARKS.glob("*.py"))
    assert scripts == sorted(RUNS), "list each benchmark script in RUNS (or say why not)"
    failures, timings = [], []
    for script, runs in RUNS.items():
        for number, (arguments, figures) in enumerate(runs):
            scratch = tmp_path / f"{Path(script).stem}-{number}"
            scratch.mkdir()
            command = [sys.executable, str(BENCHMARKS / script),
                       *(a.replace("{tmp}", str(scratch)) for a in arguments)]  # fmt: skip
            started = time.perf_counter()
            done = subprocess.run(command, cwd=scratch, capture_output=True, text=True,
                                  timeout=300)  # fmt: skip
            timings.append(f"{script} {' '.join(arguments)}: {time.perf_counter() - started:.0f}s")
            output = done.stdout + done.stderr
            if done.returncode != 0:
                failures.append(f"{script} exited {done.returncode}:\n{output[-2000:]}")
            elif not re.search(figures, done.stdout):
                failures.append(f"{script} printed no figures /{figures}/:\n{done.stdout[-2000:]}")
    print("\n".join(timings))
    assert not failures, "\n\n".join(failures)
