"""A step's outputs count only once the step finished: killed after any one of its writes,
the next step refuses to start and names the step to run again (issue: integrity end to end).

A kill is simulated in-process: every file or folder a step publishes lands with one
``os.replace``; the wrapper lets the k-th one happen and then raises, as a SIGKILL right after
that write would leave the run directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from medml import runs
from medml.errors import RunError
from medml.steps import STEPS
from tests.conftest import TINY


class Killed(BaseException):
    """The process died here (not an Exception: nothing may catch it)."""


def _counting_replace(monkeypatch: pytest.MonkeyPatch, kill_after: int | None) -> list[int]:
    real, count = os.replace, [0]

    def replace(src: object, dst: object) -> None:
        real(src, dst)
        count[0] += 1
        if count[0] == kill_after:
            raise Killed

    monkeypatch.setattr(os, "replace", replace)
    return count


def _run_until(base: Path, phantom: Path, last: str) -> Path:
    runs.init_run(base, phantom, "kidney-ct", overrides=TINY)
    for name in STEPS:
        STEPS[name](base)
        if name == last:
            return base
    raise AssertionError(last)


def _kill_at_each_write(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, base: Path, step: str, after: str,
    call: tuple = (), after_call: tuple | None = None, shared_home: Path | None = None,
) -> int:  # fmt: skip
    """Run ``step`` on copies of ``base``, killed after its 1st, 2nd, … write; each time
    ``after`` must refuse and name ``step``. Returns the number of writes of a full run.
    With ``shared_home`` every run uses that ``MEDML_HOME`` (its kept outputs: a restore is
    what gets killed)."""
    full = tmp_path / "full"
    shutil.copytree(base, full)
    with monkeypatch.context() as patch:  # each run its own caches: no cache hits
        patch.setenv("MEDML_DVC_CACHE", str(tmp_path / "cache-full"))
        patch.setenv("MEDML_HOME", str(shared_home or tmp_path / "home-full"))  # kept outputs
        writes = _counting_replace(patch, None)
        STEPS[step](full, *call)
        total = writes[0]
    assert total >= 2  # its outputs, then its record
    for kill_after in range(1, total):  # the last write is the record: the step finished
        killed = tmp_path / f"killed-{kill_after}"
        shutil.copytree(base, killed)
        with monkeypatch.context() as patch:
            patch.setenv("MEDML_DVC_CACHE", str(tmp_path / f"cache-{kill_after}"))
            patch.setenv("MEDML_HOME", str(shared_home or tmp_path / f"home-{kill_after}"))
            _counting_replace(patch, kill_after)
            with pytest.raises(Killed):
                STEPS[step](killed, *call)
        with pytest.raises(RunError, match=rf"run the `{step}[^`]*` step"):
            STEPS[after](killed, *(after_call or ((0,) if STEPS[after].per_fold else ())))
    return total


@pytest.mark.parametrize(("step", "after", "before"), [
    ("ingest", "validate", None), ("validate", "split", "ingest"),
    ("split", "preprocess", "validate"),
    ("preprocess", "train", "split"),
])  # fmt: skip
def test_a_step_killed_after_any_write_is_not_taken_for_finished(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, phantom_dir: Path, step: str, after: str,
    before: str | None,
) -> None:  # fmt: skip
    base = tmp_path / "base"
    if before is None:
        runs.init_run(base, phantom_dir, "kidney-ct", overrides=TINY)
    else:
        _run_until(base, phantom_dir, before)
    assert _kill_at_each_write(monkeypatch, tmp_path, base, step, after) >= 2


@pytest.mark.parametrize(("step", "after", "before"), [
    ("validate", "split", "ingest"), ("split", "preprocess", "validate"),
])  # fmt: skip
def test_a_step_killed_while_it_restores_kept_outputs_is_not_taken_for_finished(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, phantom_dir: Path, step: str, after: str,
    before: str,
) -> None:  # fmt: skip
    home = tmp_path / "home"
    monkeypatch.setenv("MEDML_HOME", str(home))
    base = _run_until(tmp_path / "base", phantom_dir, before)
    shutil.copytree(base, tmp_path / "first")
    STEPS[step](tmp_path / "first")  # keeps its outputs in the shared home
    assert "reused" in STEPS[step](shutil.copytree(base, tmp_path / "second"))
    assert _kill_at_each_write(monkeypatch, tmp_path, base, step, after, shared_home=home) >= 2


def test_a_failed_gate_is_not_a_finished_validate(tmp_path: Path, phantom_dir: Path) -> None:
    """Validation publishes its report when the gate fails (for the data engineer), but split
    refuses to run on it."""
    from medml.errors import DataGateFailed

    base = tmp_path / "run"
    runs.init_run(base, phantom_dir, "kidney-ct",
                  overrides=[*TINY, "data.min_images_per_class=100000"])  # fmt: skip
    STEPS["ingest"](base)
    with pytest.raises(DataGateFailed):
        STEPS["validate"](base)
    assert (base / "validation" / "validation.json").is_file()
    with pytest.raises(RunError, match=r"no validate.json .*run the `validate` step again"):
        STEPS["split"](base)


def test_an_output_changed_after_its_step_finished_is_refused(
    tmp_path: Path, phantom_dir: Path
) -> None:
    base = _run_until(tmp_path / "run", phantom_dir, "split")
    splits = base / "splits.parquet"
    splits.write_bytes(splits.read_bytes()[:-1] + b"\0")  # same size, one byte changed
    with pytest.raises(RunError, match=r"splits.parquet changed since the `split` step"):
        STEPS["preprocess"](base)


def test_a_step_run_again_and_failing_withdraws_its_old_record(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, phantom_dir: Path
) -> None:
    base = _run_until(tmp_path / "run", phantom_dir, "split")
    with monkeypatch.context() as patch:
        _counting_replace(patch, 1)
        with pytest.raises(Killed):
            STEPS["split"](base)  # a retry that dies half-way
    with pytest.raises(RunError, match=r"run the `split` step again"):
        STEPS["preprocess"](base)


@pytest.mark.slow
def test_a_fold_killed_after_any_write_is_not_evaluated(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, phantom_dir: Path
) -> None:
    base = _run_until(tmp_path / "base", phantom_dir, "preprocess")
    STEPS["train"](base, 1)
    assert _kill_at_each_write(monkeypatch, tmp_path, base, "train", "evaluate", (0,)) >= 2


@pytest.mark.slow
def test_an_evaluation_killed_after_any_write_is_not_registered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, phantom_dir: Path
) -> None:
    from medml.tracking import Tracking

    base = _run_until(tmp_path / "base", phantom_dir, "preprocess")
    for fold in (0, 1):
        STEPS["train"](base, fold)
    total = _kill_at_each_write(monkeypatch, tmp_path, base, "evaluate", "register",
                                after_call=(Tracking.from_env(),))  # fmt: skip
    assert total >= 2


@pytest.mark.slow
def test_a_fold_model_replaced_after_evaluation_is_not_registered(
    tmp_path: Path, phantom_dir: Path
) -> None:
    """Copying one fold's model over another keeps both folders' markers: registration
    checks every fold's bytes, so the version is the models that were evaluated."""
    from medml.tracking import Tracking

    base = _run_until(tmp_path / "run", phantom_dir, "preprocess")
    for fold in (0, 1):
        STEPS["train"](base, fold)
    STEPS["evaluate"](base)
    fold_0, fold_1 = base / "folds" / "fold_0", base / "folds" / "fold_1"
    model = fold_0 / "model.keras"
    intact = model.read_bytes()
    model.write_bytes(intact[:-8] + bytes(8))  # same size, other bytes
    with pytest.raises(RunError, match=r"fold_0: model.keras differ from what `train --fold 0`"):
        STEPS["register"](base, Tracking.from_env())
    model.write_bytes((fold_1 / "model.keras").read_bytes())  # another fold's model
    # refused by its size (evaluate's inputs changed) or, when the sizes match, its SHA-256
    either = r"fold_0: model.keras differ from what `train --fold 0`|folds changed since `evaluate`"
    with pytest.raises(RunError, match=either):
        STEPS["register"](base, Tracking.from_env())


def test_a_step_run_again_upstream_makes_everything_after_it_out_of_date(
    tmp_path: Path, phantom_dir: Path
) -> None:
    """New images and `medml ingest` again: the steps after it finished on the old manifest,
    so the next step refuses them and a resumed run keeps ingest only."""
    from medml.pipeline import _Resume

    source = tmp_path / "source"
    shutil.copytree(phantom_dir, source)
    base = tmp_path / "run"
    runs.init_run(base, source, "kidney-ct", overrides=TINY)
    for name in ("ingest", "validate", "split"):
        STEPS[name](base)
    extra = next((source / "Normal").iterdir())
    shutil.copy(extra, extra.with_name("late-" + extra.name))
    with open(source / "groups.csv", "a") as groups:
        groups.write(f"Normal/late-{extra.name},late-patient\n")
    STEPS["ingest"](base)
    with pytest.raises(RunError, match=r"out of date: manifest.parquet changed since `validate`"):
        STEPS["preprocess"](base)
    said: list[str] = []
    resume = _Resume(runs.load_context(base), said.append)
    assert resume.keeps(STEPS["ingest"]) and not resume.keeps(STEPS["validate"])
    assert said == ["[ingest] finished earlier in this run; kept"]


def test_a_step_result_reads_as_one_line_of_counts() -> None:
    from medml.pipeline import one_line

    result = {"dvc_md5": "0123456789abcdef0123456789abcdef.dir", "images": 1200,
              "manifest": "/tmp/run/manifest.parquet", "cache": "miss", "seconds": 0.123456,
              "class_counts": {"Normal": 3}, "complete": True}  # fmt: skip
    assert one_line(result) == "images=1200 cache=miss seconds=0.1235 complete=True"
    assert one_line({"manifest": "/tmp/m.parquet"}) == "done"


def test_one_line_reads_numpy_scalars_and_keeps_to_one_line() -> None:
    import numpy as np

    from medml.pipeline import one_line

    result = {"images": np.int64(7), "fraction": np.float32(0.5), "ok": np.bool_(True),
              "note": "two\nlines"}  # fmt: skip
    assert one_line(result) == "images=7 fraction=0.5 ok=True"
