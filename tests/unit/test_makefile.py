"""``make clean`` removes the demo workspace and generated data but never a tracked file (the
data folders keep their tracked ``.gitignore``)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(
    shutil.which("make") is None or shutil.which("git") is None, reason="needs make and git"
)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def _clean_commands() -> list[list[str]]:
    """The commands of the ``clean`` recipe, as ``make -n`` prints them."""
    dry = subprocess.run(
        ["make", "-n", "--no-print-directory", "clean"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,  # (under `make test` a nested make names its folder)
    ).stdout
    return [shlex.split(line) for line in dry.splitlines() if line.strip()]


def _removed_paths(commands: list[list[str]]) -> list[str]:
    """Paths the recipe deletes outright (``rm``); ``git clean`` deletes only untracked files."""
    removed: list[str] = []
    for words in commands:
        if words[0] == "rm":
            removed += [w for w in words[1:] if not w.startswith("-")]
        elif words[:2] != ["git", "clean"]:
            pytest.fail(f"make clean runs {words}: teach this test what it deletes")
    return removed


def test_make_clean_deletes_no_tracked_path() -> None:
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    removed = _removed_paths(_clean_commands())
    assert removed, "make clean removes nothing outright?"
    for path in removed:
        assert not _git(REPO_ROOT, "ls-files", "--", path), f"make clean rm -rf's tracked {path}"


def test_make_clean_keeps_tracked_files_and_removes_the_rest(tmp_path: Path) -> None:
    """The real recipe, run in a scratch repository holding the data folders' tracked files
    (taken from this checkout when it is one) and generated files of every kind."""
    folders = ("data/dvc-run", "data/phantom")  # generated data, each with a tracked .gitignore
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO_ROOT / "Makefile", repo / "Makefile")
    _git(repo, "init", "-q")
    tracked = ["Makefile", "data/phantom/README.md"]  # a tracked file that is not .gitignore
    if (REPO_ROOT / ".git").exists():
        tracked += _git(REPO_ROOT, "ls-files", "--", *folders).split()
    else:
        tracked += [f"{folder}/.gitignore" for folder in folders]
    for name in tracked[1:]:
        source, target = REPO_ROOT / name, repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_file():
            shutil.copy(source, target)
        else:
            target.write_text(f"{name}\n")
    _git(repo, "add", "--", *tracked)
    generated = [
        "data/dvc-run/manifest.parquet",  # ignored by data/dvc-run/.gitignore
        "data/dvc-run/shards/shard-00000.npy",
        "data/dvc-run/steps/ingest.json",  # untracked, not ignored
        "data/dvc-run/run.json",
        "data/phantom/kidney-ct/Normal/P00001_s00.jpg",
        ".medml/demo/mlflow.db",
        ".pytest_cache/v/cache/lastfailed",
    ]
    for name in generated:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("generated\n")
    before = {name: (repo / name).read_bytes() for name in tracked}

    subprocess.run(["make", "clean"], cwd=repo, check=True, capture_output=True, text=True)

    assert {name: (repo / name).read_bytes() for name in tracked if (repo / name).exists()} == (
        before
    )
    assert not [name for name in generated if (repo / name).exists()]
    status = _git(repo, "status", "--porcelain", "--ignored", "--untracked-files=all")
    assert not [line for line in status.splitlines() if line[:2] in ("??", "!!")]
