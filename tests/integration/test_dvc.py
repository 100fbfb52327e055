"""dvc.yaml's stages call the medml CLI; a second `dvc repro` with nothing changed does no work."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, venv_env

pytestmark = pytest.mark.integration


def _run(cmd: list[str], cwd: Path) -> str:
    result = subprocess.run(
        cmd, cwd=cwd, env=venv_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{cmd}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result.stdout + result.stderr


def test_dvc_repro_then_nothing_to_do(tmp_path: Path) -> None:
    repo = tmp_path / "clone"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO_ROOT / name, repo / name)
    shutil.copytree(REPO_ROOT / "recipes", repo / "recipes")
    shutil.copytree(
        REPO_ROOT / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache")
    )
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pipeline"]["synth_n"] = 120
    params["image"]["size"] = 32
    params["split"]["folds"] = 2
    params["data"]["min_images_per_class"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    _run(["git", "init", "-q"], repo)

    first = _run(["dvc", "repro"], repo)
    for stage in ("synth", "ingest", "validate", "split", "preprocess"):
        assert f"Running stage '{stage}'" in first
    assert (repo / "data" / "dvc-run" / "shards" / "index.parquet").is_file()

    second = _run(["dvc", "repro"], repo)
    for stage in ("synth", "ingest", "validate", "split", "preprocess"):
        assert f"Stage '{stage}' didn't change, skipping" in second
    assert "Running stage" not in second

    params["image"]["size"] = 24  # only preprocess depends on image settings
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    third = _run(["dvc", "repro"], repo)
    assert "Stage 'preprocess' didn't change" not in third  # re-run (or restored from run cache)
    assert "Stage 'split' didn't change, skipping" in third
    meta = json.loads((repo / "data" / "dvc-run" / "shards" / "meta.json").read_text())
    assert meta["size"] == 24


def test_dvc_push_then_pull_into_a_fresh_clone(s3_env: str, tmp_path: Path) -> None:
    from medml.data.sources import s3_client

    s3_client().create_bucket(Bucket="medml-dvc")

    def clone(name: str) -> Path:
        repo = tmp_path / name
        repo.mkdir()
        for file in ("dvc.yaml", "params.yaml", ".dvcignore", "Makefile"):
            shutil.copy(REPO_ROOT / file, repo / file)
        shutil.copytree(REPO_ROOT / "recipes", repo / "recipes")
        shutil.copytree(
            REPO_ROOT / ".dvc",
            repo / ".dvc",
            ignore=shutil.ignore_patterns("tmp", "cache", "config.local"),
        )
        (repo / ".venv").symlink_to(REPO_ROOT / ".venv")
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["pipeline"]["synth_n"] = 80
        params["image"]["size"] = 24
        params["split"]["folds"] = 2
        params["data"]["min_images_per_class"] = 3
        (repo / "params.yaml").write_text(yaml.safe_dump(params))
        _run(["git", "init", "-q"], repo)
        # The remote comes from the environment, as an operator would configure it.
        env_setup = ["make", "-s", "dvc-remote", "MEDML_DVC_REMOTE=s3://medml-dvc/cache",
                     f"MEDML_S3_ENDPOINT_URL={s3_env}"]  # fmt: skip
        _run(env_setup, repo)
        return repo

    first = clone("first")
    _run(["dvc", "repro"], first)
    _run(["dvc", "push"], first)

    second = clone("second")
    shutil.copy(first / "dvc.lock", second / "dvc.lock")
    _run(["dvc", "pull"], second)
    shards = Path("data") / "dvc-run" / "shards"
    originals = sorted((first / shards).iterdir())
    assert originals
    for file in originals:
        assert (second / shards / file.name).read_bytes() == file.read_bytes()
    assert "endpointurl" not in (second / ".dvc" / "config").read_text()  # stays in config.local
