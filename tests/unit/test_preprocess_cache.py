"""Preprocess re-uses DVC's cache for unchanged data, like `dvc repro`'s run cache."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from medml import runs, steps
from medml.dvc_cache import DvcCache, dvc_md5
from tests.conftest import TINY, venv_env


def _data_steps(run_dir: Path, source: Path, cache: Path, *overrides: str) -> dict:
    runs.init_run(run_dir, source, "kidney-ct", overrides=[*TINY, *overrides])
    for step in (steps.ingest, steps.validate, steps.split):
        step(run_dir)
    return steps.preprocess(run_dir, cache_dir=cache)


def test_second_run_on_the_same_data_is_a_cache_hit(phantom_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "dvc-cache"
    first = _data_steps(tmp_path / "a", phantom_dir, cache)
    second = _data_steps(tmp_path / "b", phantom_dir, cache)
    assert (first["cache"], second["cache"]) == ("miss", "hit")
    assert first["cache_key"] == second["cache_key"]
    assert first["dvc_md5"] == second["dvc_md5"] == dvc_md5(tmp_path / "b" / "shards")
    for file in (tmp_path / "a" / "shards").iterdir():
        assert file.read_bytes() == (tmp_path / "b" / "shards" / file.name).read_bytes()
    other = _data_steps(tmp_path / "c", phantom_dir, cache, "image.size=24")  # settings changed
    assert other["cache"] == "miss" and other["cache_key"] != first["cache_key"]


def test_objects_are_in_dvc_layout_and_a_lost_object_is_a_miss(
    phantom_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "dvc-cache"
    first = _data_steps(tmp_path / "a", phantom_dir, cache)
    digest = first["dvc_md5"]
    tree = cache / "files" / "md5" / digest[:2] / digest[2:]
    assert tree.is_file()  # the `.dir` listing, exactly where DVC keeps it
    store = DvcCache(cache)
    assert store.lookup(first["cache_key"])["hash"] == digest
    for obj in (cache / "files" / "md5").rglob("*"):  # e.g. `dvc gc` removed the objects
        if obj.is_file() and not obj.name.endswith(".dir"):
            obj.chmod(0o644)
            obj.unlink()
    assert store.lookup(first["cache_key"]) is None
    again = steps.preprocess(tmp_path / "a", cache_dir=cache)
    assert again["cache"] == "miss" and again["dvc_md5"] == digest


def test_snapshot_hash_is_the_one_dvc_records(phantom_dir: Path, tmp_path: Path) -> None:
    """The `data_hash` tag on a model version is what `dvc add` writes for the snapshot."""
    runs.init_run(tmp_path / "run", phantom_dir, "kidney-ct", overrides=TINY)
    ingested = steps.ingest(tmp_path / "run")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(phantom_dir, repo / "snapshot")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "add", "-q", "snapshot"]):
        subprocess.run(cmd, cwd=repo, env=venv_env(), check=True)
    recorded = (repo / "snapshot.dvc").read_text()
    assert f"md5: {ingested['dvc_md5']}" in recorded


def _dotted(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        name = f"{prefix}{key}"
        keys |= _dotted(value, f"{name}.") if isinstance(value, dict) else {name}
    return keys


def test_dvc_preprocess_stage_covers_what_the_cache_key_covers() -> None:
    """dvc.yaml's preprocess stage and the shards' cache key depend on the same settings."""
    import yaml

    from medml.preprocess import PREPROCESS_SETTINGS
    from tests.conftest import REPO_ROOT

    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["preprocess"]
    params = _dotted(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()))
    # The recipe file holds every setting; params.yaml's overrides of them are listed too.
    assert "recipes/${recipe}.yaml" in stage["deps"]
    overridden = {k for k in params if any(k.startswith(p) for p in PREPROCESS_SETTINGS)}
    assert overridden <= set(stage["params"]), overridden - set(stage["params"])
    assert set(stage["params"]) <= overridden | {"recipe"}


def test_every_preprocess_setting_changes_the_cache_key(tmp_path: Path) -> None:
    """A change to any image setting or to the class order gives another key (no stale shards)."""
    import pandas as pd

    from medml.config import ImageConfig, load_recipe

    splits = tmp_path / "splits.parquet"
    pd.DataFrame({"sha256": ["a", "b"], "label": ["Cyst", "Stone"], "split": ["train", "test"],
                  "fold": [0, -1]}).to_parquet(splits)  # fmt: skip
    base = load_recipe("kidney-ct")
    changed = {
        "size": 40, "channels": 3, "aspect": "letterbox", "clahe": True, "ct_windows": ["lung"],
        "shard_size": 64, "workers": 1,
    }  # fmt: skip
    assert set(changed) == set(ImageConfig.model_fields), "a new image setting needs a case here"
    keys = {steps.shards_cache_key(splits, base)}
    for field, value in changed.items():
        recipe = load_recipe("kidney-ct", overrides=[f"image.{field}={value}"])
        keys.add(steps.shards_cache_key(splits, recipe))
    reordered = base.model_copy(update={"data": base.data.model_copy(
        update={"classes": list(reversed(base.data.classes))})})  # fmt: skip
    keys.add(steps.shards_cache_key(splits, reordered))
    assert len(keys) == len(changed) + 2


def _corrupt_in_place(path: Path) -> None:
    """Overwrite bytes in the middle of ``path``, keeping its size (a bad disk, a bad copy)."""
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.seek(size // 2)
        handle.write(b"\xff" * 64)
    assert path.stat().st_size == size


def test_a_shard_corrupted_in_place_is_caught_before_training_and_in_the_cache(
    phantom_dir: Path, tmp_path: Path
) -> None:
    """Same-size damage to a shard never trains; because shards are hard links into the DVC
    cache, the damage is in the cache too: the next preprocess finds it, drops the entry and
    rebuilds, and a later run of the same data gets good bytes from the cache."""
    import pytest

    from medml.errors import RunError

    cache = tmp_path / "dvc-cache"
    good = _data_steps(tmp_path / "a", phantom_dir, cache)
    shard = tmp_path / "a" / "shards" / "shard-00000.npy"
    intact = shard.read_bytes()
    steps.train(tmp_path / "a", 0)  # trains (and remembers the shards it found intact)
    _corrupt_in_place(shard)
    with pytest.raises(RunError, match=r"differ from the bytes `preprocess` wrote \(shard-00000"):
        steps.train(tmp_path / "a", 0)
    again = steps.preprocess(tmp_path / "a", cache_dir=cache)
    assert again["cache"].startswith("miss; 1 cached shard file(s) were corrupted")
    assert shard.read_bytes() == intact and again["dvc_md5"] == good["dvc_md5"]
    later = _data_steps(tmp_path / "b", phantom_dir, cache)
    assert later["cache"] == "hit"
    assert (tmp_path / "b" / "shards" / "shard-00000.npy").read_bytes() == intact
