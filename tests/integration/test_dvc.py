"""DVC the way its docs say, in a real `git clone` of this repository: `dvc repro` runs every
stage (data → train → evaluate → register) through the project's environment, an unchanged
repro does nothing, `dvc exp run --set-param`, `dvc metrics diff` and `dvc plots show` work, and
`dvc push`/`dvc pull` through an S3 remote restore a fresh clone."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, venv_env

pytestmark = [pytest.mark.slow, pytest.mark.integration]
STAGES = ("synth", "ingest", "validate", "split", "preprocess", "train", "evaluate", "register")
GIT = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@e"}  # fmt: skip


def _run(cmd: list[str], cwd: Path, **env: str) -> str:
    result = subprocess.run(cmd, cwd=cwd, env={**venv_env(), **GIT, **env}, capture_output=True,
                            text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, f"{cmd}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def _clone(source: Path, target: Path) -> Path:
    """A real clone, with the project's environment where `make setup` would put it."""
    _run(["git", "clone", "-q", str(source), str(target)], source.parent)
    os.symlink(REPO_ROOT / ".venv", target / ".venv")
    return target


def _tiny(repo: Path) -> dict:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pipeline"]["synth_n"] = 120
    params["image"]["size"] = 32
    params["split"]["folds"] = 2
    params["data"]["min_images_per_class"] = 3
    params["train"] |= {"epochs": 2, "batch_size": 16}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    return params


def test_repro_experiments_metrics_plots_and_a_fresh_clone(tmp_path: Path, s3_env: str) -> None:
    repo = _clone(REPO_ROOT, tmp_path / "clone")
    params = _tiny(repo)
    _run(["git", "commit", "-qam", "tiny settings"], repo)

    first = _run([".venv/bin/dvc", "repro"], repo)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first, stage
    run_dir = repo / "data" / "dvc-run"
    assert json.loads((run_dir / "registry" / "registration.json").read_text())["version"] == "1"
    status = _run(["git", "status", "--porcelain", "--untracked-files=all"], repo)
    assert not [line for line in status.splitlines() if line.startswith("??")], status
    shown = _run([".venv/bin/dvc", "metrics", "show"], repo)  # the headline, one screen wide
    header = shown.splitlines()[0]
    assert "scores.json" in shown and "balanced_accuracy" in header and "ci95" not in shown
    assert len(header.split()) <= 16, header

    second = _run([".venv/bin/dvc", "repro"], repo)
    assert "Running stage" not in second  # nothing changed, nothing runs

    params["image"]["size"] = 24  # only preprocess and what follows depend on image settings
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    third = _run([".venv/bin/dvc", "repro"], repo)
    assert "Stage 'split' didn't change, skipping" in third
    for stage in ("preprocess", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in third, stage
    assert json.loads((run_dir / "shards" / "meta.json").read_text())["size"] == 24

    _run(["git", "add", "-A"], repo)  # dvc.lock is tracked, as DVC expects
    _run(["git", "commit", "-qm", "results"], repo)
    experiment = _run([".venv/bin/dvc", "exp", "run", "--set-param", "train.epochs=3"], repo)
    assert "Running stage 'train'" in experiment and "Running stage 'ingest'" not in experiment
    diff = _run([".venv/bin/dvc", "metrics", "diff", "--all"], repo)
    row = next(line for line in diff.splitlines() if " balanced_accuracy " in line)
    path, _, before, after, *_ = row.split()  # path, metric, HEAD, workspace, change
    assert path.endswith("scores.json") and 0 <= float(before) <= 1 and 0 <= float(after) <= 1
    shown = _run([".venv/bin/dvc", "plots", "show", "-o", str(tmp_path / "plots")], repo)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "confusion_matrix.png" in page and "roc_curves.png" in page, shown[-500:]

    # dvc push / dvc pull through an S3 remote (a moto server here) restore a fresh clone.
    from medml.data.sources import s3_client

    s3_client().create_bucket(Bucket="dvc-store")
    _run(["git", "checkout", "-q", "--", "."], repo)  # back to the committed results
    _run([".venv/bin/dvc", "checkout", "-q"], repo)
    remote = ["remote", "add", "--local", "-d", "storage", "s3://dvc-store/medml"]
    for repo_dir in (repo,):
        _run([".venv/bin/dvc", *remote], repo_dir)
        _run([".venv/bin/dvc", "remote", "modify", "--local", "storage", "endpointurl", s3_env],
             repo_dir)  # fmt: skip
    _run([".venv/bin/dvc", "push"], repo)
    fresh = _clone(repo, tmp_path / "fresh")
    _run([".venv/bin/dvc", *remote], fresh)
    _run([".venv/bin/dvc", "remote", "modify", "--local", "storage", "endpointurl", s3_env], fresh)
    _run([".venv/bin/dvc", "pull"], fresh)
    restored = fresh / "data" / "dvc-run"
    for path in ("shards/meta.json", "folds/fold_0/model.keras", "registry/registration.json"):
        assert (restored / path).is_file(), path
    status = _run([".venv/bin/dvc", "status"], fresh)
    assert "up to date" in status.lower(), status[-1500:]
