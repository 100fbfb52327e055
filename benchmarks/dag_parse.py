"""DAG-file parse time: what the DAG processor pays for each medml DAG file.

For each file in ``dags/`` (``medml_common.py`` excluded: it is imported by the others), a fresh
interpreter imports ``airflow.sdk`` first — as the DAG processor has it loaded already — then
times executing the DAG file alone. Median of ``--repeats`` fresh processes per file (target:
<= 1 s on 2 cores; Airflow's guidance is to keep top-level code light).

    .venv/bin/python benchmarks/dag_parse.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DAGS = Path(__file__).resolve().parent.parent / "dags"
PROBE = """
import runpy, sys, time
sys.path.insert(0, sys.argv[1])
import airflow.sdk  # noqa: F401  (loaded already in the DAG processor)
started = time.perf_counter()
runpy.run_path(sys.argv[2])
print(time.perf_counter() - started)
roots = {m.split(".")[0] for m in sys.modules}
print(",".join(sorted(roots & {"kubernetes", "tensorflow", "keras", "mlflow", "boto3"})) or "-")
"""


def parse_seconds(path: Path, home: str) -> tuple[float, str]:
    """Seconds to execute one DAG file after ``import airflow.sdk``, and heavy packages loaded."""
    env = {**os.environ, "AIRFLOW_HOME": home, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    result = subprocess.run([sys.executable, "-c", PROBE, str(DAGS), str(path)], env=env,
                            capture_output=True, text=True, check=True)  # fmt: skip
    seconds, heavy = result.stdout.strip().splitlines()[-2:]
    return float(seconds), heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}  repeats: {args.repeats}  python {sys.version.split()[0]}")
    print(f"{'DAG file':<22}{'median s':>10}{'max s':>8}  heavy imports at parse")
    with tempfile.TemporaryDirectory() as home:
        for path in sorted(DAGS.glob("medml_*.py")):
            if path.name == "medml_common.py":
                continue
            runs = [parse_seconds(path, home) for _ in range(args.repeats)]
            times = [seconds for seconds, _ in runs]
            print(f"{path.name:<22}{statistics.median(times):>10.3f}{max(times):>8.3f}  "
                  f"{runs[-1][1]}")  # fmt: skip


if __name__ == "__main__":
    main()
