"""Shared fixtures: tiny phantom datasets and recipes made in tmp paths, an isolated workspace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medml.config import Recipe, load_recipe
from medml.data.synthetic import synth_kidney_ct

REPO_ROOT = Path(__file__).resolve().parent.parent

# Tiny settings that still exercise every code path.
TINY = [
    "image.size=32",
    "split.folds=2",
    "train.epochs=2",
    "train.batch_size=16",
    "data.min_images_per_class=2",
]


@pytest.fixture(autouse=True)
def _isolated_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own MEDML_HOME (MLflow store, runs) and quiet TF/GX."""
    monkeypatch.setenv("MEDML_HOME", str(tmp_path / "medml-home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MEDML_ARTIFACT_ROOT", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small kidney-CT phantom set (120 images, several slices per patient); do not modify."""
    root = tmp_path_factory.mktemp("phantom") / "kidney-ct"
    synth_kidney_ct(root, n=120, seed=3, image_size=64)
    return root


@pytest.fixture
def tiny_recipe() -> Recipe:
    """The kidney-CT recipe shrunk for fast tests."""
    return load_recipe("kidney-ct", overrides=TINY)


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under root, to prove inputs were not touched."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def venv_env() -> dict[str, str]:
    """Environment for subprocesses: the venv's bin first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(os.sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env
