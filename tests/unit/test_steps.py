"""The step spec is the one declaration of each step: the CLI, dvc.yaml and the missing-input
messages agree with it (the DAG's task ids are checked in tests/dags)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medml import runs
from medml.cli import app
from medml.errors import RunError
from medml.steps import DATA, STEPS, data_steps, producer_of
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = "${pipeline.run_dir}/"


def _run_paths(entries: list) -> set[str]:
    """The run-directory paths among a dvc.yaml stage's deps/outs (relative to the run)."""
    paths = set()
    for entry in entries or []:
        path = next(iter(entry)) if isinstance(entry, dict) else entry
        if path.startswith(RUN_DIR):
            paths.add(path.removeprefix(RUN_DIR))
    return paths


def _covers(declared: str, path: str) -> bool:
    """``declared`` is ``path`` or a folder holding it (``{fold}`` matches any fold)."""
    head = declared.split("{fold}")[0].rstrip("/_").removesuffix("/fold")
    return (
        path == declared
        or path.startswith(declared + "/")
        or "{fold}" in declared
        and (path == head or path.startswith(head + "/"))
    )


def _stages() -> dict:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage for name, stage in stages.items() if name != "synth"}


def test_dvc_stages_are_the_steps_in_order() -> None:
    assert list(_stages()) == list(STEPS)


@pytest.mark.parametrize("name", list(STEPS))
def test_dvc_stage_deps_and_outs_agree_with_the_step(name: str) -> None:
    stage, spec = _stages()[name], STEPS[name]
    outs = _run_paths(stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []))
    for out in outs:
        assert any(_covers(p, out) for p in spec.produces), f"{name}: dvc out {out} not produced"
    deps = _run_paths(stage.get("deps", []))
    needed = {p for p in spec.needs if p != "run.json"}  # run.json: pinned by --source/--recipe
    for need in needed:
        assert any(_covers(dep, need) or _covers(need, dep) for dep in deps), (
            f"{name}: needs {need}, which dvc.yaml does not list as a dependency"
        )
    for dep in deps:
        assert any(_covers(need, dep) for need in needed), f"{name}: dvc dep {dep} not needed"
    assert f" {name} --run-dir" in stage["cmd"]


def test_every_step_is_a_cli_command_with_its_help() -> None:
    runner = CliRunner()
    for spec in STEPS.values():
        result = runner.invoke(app, [spec.name, "--help"])
        assert result.exit_code == 0, result.output
        assert " ".join(spec.help.split()[:4]) in " ".join(result.output.split())


def test_data_steps_are_the_first_four_in_order() -> None:
    assert [s.name for s in data_steps()] == ["ingest", "validate", "split", "preprocess"]
    assert all(s.stage == DATA for s in data_steps())


def test_every_input_has_a_producer_declared_before_it() -> None:
    order = list(STEPS)
    for index, spec in enumerate(STEPS.values()):
        files = spec.files(0)
        for need in (n for n in files.needs if n not in files.optional):
            producer = producer_of(need).split()[0]
            if producer == "init":
                assert need == "run.json"
                continue
            assert order.index(producer) < index, f"{spec.name} needs {need} from {producer}"


@pytest.mark.parametrize(
    ("path", "producer"),
    [("folds", "train"), ("folds/fold_2/model.keras", "train --fold 2"), ("shards", "preprocess"),
     ("validation/validation.json", "validate"), ("run.json", "init")],
)  # fmt: skip
def test_producer_of(path: str, producer: str) -> None:
    assert producer_of(path) == producer


def test_a_step_run_too_early_names_the_step_that_makes_its_input(
    phantom_dir: Path, tmp_path: Path
) -> None:
    ctx = runs.init_run(tmp_path / "run", phantom_dir, "kidney-ct", overrides=TINY)
    with pytest.raises(RunError, match=r"manifest.parquet is missing; run the `ingest` step first"):
        STEPS["validate"](ctx.layout.root)
    with pytest.raises(RunError, match=r"shards is missing; run the `preprocess` step first"):
        STEPS["train"](ctx.layout.root, 0)
