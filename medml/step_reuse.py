"""Reuse a data step's outputs when its inputs and code are unchanged.

A scheduled retrain of an unchanged dataset used to validate and split it again: Great
Expectations, the decode check and the near-duplicate search, about half of the cold data
steps. :class:`StepReuse` keeps a finished step's outputs under
``$MEDML_HOME/cache/steps/<step>/<key>/`` (plain copies, never links: a run's files can be
changed without touching the kept ones), where the key hashes the step's input table (every
row, in order), the settings it reads and the source of the code that computes it. A later run
with the same key gets a copy of the outputs and says which run made them. Deleting
``$MEDML_HOME/cache`` is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pandas as pd

from medml.io import COMPLETE_MARKER, publish_dir

_FACTS = "reuse.json"


def content_key(
    step: str, table: pd.DataFrame, settings: Mapping[str, Any], *, modules: Sequence[str],
    libraries: Sequence[str] = (), files: Sequence[Path] = (),
) -> str:  # fmt: skip
    """The key of a step's outputs: ``table``'s columns and every row (in order), the
    ``settings`` (JSON), the source files of ``modules`` (found, not imported) and other
    ``files`` (templates), and the installed versions of ``libraries``."""
    digest = hashlib.sha256(f"medml {step}\n".encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(json.dumps(list(map(str, table.columns))).encode())
    digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    for name in modules:
        spec = find_spec(name)
        origin = spec.origin if spec is not None else None
        digest.update(Path(origin).read_bytes() if origin else name.encode())
    for path in files:
        digest.update(Path(path).read_bytes())
    for name in libraries:
        try:
            digest.update(f"{name}=={version(name)}".encode())
        except PackageNotFoundError:
            digest.update(f"{name}==".encode())
    return digest.hexdigest()


class StepReuse:
    """The kept outputs of one step for one key.

    Args:
        home: ``$MEDML_HOME``.
        step: the step's name.
        key: :func:`content_key` of this run's inputs.
    """

    def __init__(self, home: Path, step: str, key: str) -> None:
        self.root = Path(home) / "cache" / "steps" / step / key

    def restore(self, outputs: Mapping[str, Path], run_root: Path) -> dict[str, Any] | None:
        """Copy the kept outputs to ``outputs`` (name → path in this run) and return the facts
        of the run that made them; ``None`` when nothing complete is kept. Paths of the run
        that made them, inside its JSON files, become this run's (``run_root``)."""
        if not self.root.exists():
            return None
        try:
            facts = json.loads((self.root / _FACTS).read_text())
            intact = (
                facts.get("key") == self.root.name
                and Path(str(facts.get("run_root", ""))).is_absolute()
                and all((self.root / name).exists() for name in outputs)
                and _digests(self.root) == facts.get("files")
            )
        except (OSError, ValueError, AttributeError):  # unreadable, or dropped meanwhile
            intact, facts = False, {}
        if not intact:  # changed, broken or another key's: dropped, so the step keeps anew
            shutil.rmtree(self.root, ignore_errors=True)
            return None
        try:
            for name, target in outputs.items():
                self._copy_out(self.root / name, target, str(facts["run_root"]), str(run_root))
        except (FileNotFoundError, shutil.Error):  # dropped by another process meanwhile
            return None
        return facts

    @staticmethod
    def _copy_out(kept: Path, target: Path, old_root: str, run_root: str) -> None:
        if kept.is_dir():
            with publish_dir(target) as staging:
                shutil.copytree(kept, staging, dirs_exist_ok=True)
                _relocate(staging, old_root, run_root)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(kept, tmp)
            _relocate_file(Path(tmp), old_root, run_root, target.suffix)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def keep(self, outputs: Mapping[str, Path], run_root: Path, run_key: str) -> None:
        """Keep a copy of ``outputs`` (name → path in this run), made by run ``run_key``.
        Best effort: a full or read-only cache costs the reuse, never the step."""
        if (self.root / _FACTS).is_file():
            return
        try:
            self.root.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{self.root.name}.", dir=self.root.parent))
            for name, source in outputs.items():
                if source.is_dir():
                    shutil.copytree(source, staging / name,
                                    ignore=shutil.ignore_patterns(COMPLETE_MARKER))  # fmt: skip
                else:
                    shutil.copyfile(source, staging / name)
            facts = {"key": self.root.name, "run_key": run_key, "run_root": str(run_root),
                     "kept_at": time.time(), "files": _digests(staging)}  # fmt: skip
            (staging / _FACTS).write_text(json.dumps(facts))
            os.rename(staging, self.root)  # fails if another run kept it first: theirs stays
        except OSError:
            pass
        finally:
            if "staging" in locals() and staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def _digests(root: Path) -> dict[str, str]:
    """SHA-256 of every kept file (``reuse.json`` aside), by relative path."""
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*"))
            if path.is_file() and path.name != _FACTS}  # fmt: skip


def _relocate(folder: Path, old: str, new: str) -> None:
    for path in folder.rglob("*.json"):
        if path.name != COMPLETE_MARKER:
            _relocate_file(path, old, new, ".json")


def _relocate_file(path: Path, old: str, new: str, suffix: str) -> None:
    if suffix != ".json" or old == new:
        return
    text = path.read_text(encoding="utf-8")
    inside_old, inside_new = (json.dumps(f"{root}/")[1:-1] for root in (old, new))
    if inside_old in text:  # only paths inside the old run (not a sibling with a longer name)
        path.write_text(text.replace(inside_old, inside_new), encoding="utf-8")


def reused_line(facts: Mapping[str, Any]) -> str:
    """``"unchanged since run <key> (<UTC time>): reused"``."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(facts.get("kept_at", 0))))
    return f"unchanged since run {facts.get('run_key', '?')} ({when}): reused"
