"""DAG integrity: the DAG files import cleanly, are wired as intended and parse fast."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DAGS_DIR = REPO_ROOT / "dags"
HEAVY = {"tensorflow", "keras", "cv2", "mlflow", "great_expectations", "sklearn", "pandas", "medml"}


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory):
    import os
    import sys

    os.environ["AIRFLOW_HOME"] = str(tmp_path_factory.mktemp("airflow-home"))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS_DIR)
    if str(DAGS_DIR) not in sys.path:  # as Airflow does for its DAGs folder (medml_common)
        sys.path.append(str(DAGS_DIR))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == {"medml_retrain", "medml_promote", "medml_predict"}


@pytest.mark.parametrize("dag_id", ["medml_retrain", "medml_promote", "medml_predict"])
def test_every_dag_is_documented_tagged_and_retried(dagbag, dag_id: str) -> None:
    from medml_common import START_DATE

    dag = dagbag.dags[dag_id]
    assert dag.doc_md and "medml" in dag.tags and dag.catchup is False
    assert dag.start_date == START_DATE  # the shared defaults module
    exempt = {"prepare", "validate", "approve", "promote"}  # bad input, a human, a refusal
    for task in dag.tasks:
        if task.task_id not in exempt:
            assert task.retries >= 1, task.task_id


def test_retrain_runs_weekly_and_when_a_snapshot_lands(dagbag) -> None:
    timetable = dagbag.dags["medml_retrain"].timetable
    assert type(timetable).__name__ == "AssetOrTimeSchedule"
    assert timetable.asset_condition.name == "medml_snapshots"
    assert timetable.timetable._expression == "0 3 * * 1"


def test_promote_waits_for_a_human_and_records_rejections(dagbag) -> None:
    dag = dagbag.dags["medml_promote"]
    assert dag.schedule is None if hasattr(dag, "schedule") else True
    approve = dag.get_task("approve")
    assert type(approve).__name__ == "ApprovalOperator"
    assert "render_review" in approve.upstream_task_ids
    assert dag.get_task("promote").upstream_task_ids == {"approve"}
    rejection = dag.get_task("record_rejection")
    assert rejection.trigger_rule == "all_skipped" and "promote" in rejection.upstream_task_ids
    promote = dag.get_task("promote")
    assert promote.retries == 0  # a refusal is recorded once, never retried
    announce = dag.get_task("announce")  # a leaf after promote: a refusal fails the run
    assert announce.upstream_task_ids == {"promote"} and not announce.downstream_task_ids


def test_retrain_params_are_what_the_docs_name(dagbag) -> None:
    assert set(dagbag.dags["medml_retrain"].params.keys()) == {
        "source", "recipe", "overrides", "run_dir"
    }  # fmt: skip


def test_every_s3_task_takes_credentials_from_the_connection() -> None:
    """ingest, fold_pods and collect_folds all hand the `medml_s3` connection over first."""
    tree = ast.parse((DAGS_DIR / "medml_retrain.py").read_text())
    calls = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        and any(isinstance(c, ast.Call) and getattr(c.func, "id", "") == "export_s3_connection"
                for c in ast.walk(node))
    }  # fmt: skip
    assert {"ingest", "fold_pods", "collect_folds"} <= calls


def test_training_is_mapped_over_folds(dagbag) -> None:
    dag = dagbag.dags["medml_retrain"]
    train = dag.get_task("train")
    assert type(train).__name__.endswith("MappedOperator")
    upstream = {t.task_id for t in train.upstream_list}
    assert {"folds", "prepare"} <= upstream
    order = ["prepare", "ingest", "validate", "split", "preprocess", "folds"]
    for before, after in zip(order[1:], order[2:], strict=False):
        assert before in dag.get_task(after).upstream_task_ids
    assert "train" in dag.get_task("evaluate").upstream_task_ids
    assert "evaluate" in dag.get_task("register").upstream_task_ids


@pytest.mark.parametrize(
    ("backend", "path"),
    [("local", ["train"]), ("kubernetes", ["fold_pods", "train_pod", "collect_folds"])],
)
def test_backend_branch_reaches_its_training_tasks(
    dagbag, backend: str, path: list[str], phantom_dir: Path, tmp_path: Path,
) -> None:  # fmt: skip
    """The branch returns a task directly downstream of it, and that path leads to evaluate."""
    from medml import runs

    dag = dagbag.dags["medml_retrain"]
    chooser = dag.get_task("choose_backend")
    runs.init_run(tmp_path / "run", phantom_dir, "kidney-ct",
                      overrides=[f"train.backend={backend}"])  # fmt: skip
    chosen = chooser.python_callable(str(tmp_path / "run"))
    assert chosen == path[0] and chosen in chooser.downstream_task_ids
    for before, after in zip(path, [*path[1:], "evaluate"], strict=True):
        assert before in dag.get_task(after).upstream_task_ids, (before, after)


@pytest.mark.parametrize("dag_file", sorted(DAGS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_no_heavy_imports_at_top_level(dag_file: Path) -> None:
    tree = ast.parse(dag_file.read_text())
    top_level = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module.split(".")[0])
    assert not top_level & HEAVY, f"{dag_file.name} imports {top_level & HEAVY} at top level"


def test_medml_library_never_imports_airflow() -> None:
    for path in (REPO_ROOT / "medml").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n.split(".")[0] == "airflow" for n in names), path


def test_a_run_without_source_is_skipped_not_failed(dagbag, monkeypatch) -> None:
    """The run Airflow starts on unpausing, before MEDML_SOURCE is set, skips with the reason."""
    from airflow.sdk.exceptions import AirflowSkipException

    monkeypatch.delenv("MEDML_SOURCE", raising=False)
    prepare = dagbag.dags["medml_retrain"].get_task("prepare").python_callable
    params = {"source": "", "recipe": "kidney-ct", "overrides": [], "run_dir": ""}
    with pytest.raises(AirflowSkipException, match=r"set \$MEDML_SOURCE"):
        prepare(params=params, ds="2026-01-05", run_id="scheduled__2026-01-05")


def test_register_publishes_the_models_asset(dagbag) -> None:
    register = dagbag.dags["medml_retrain"].get_task("register")
    assert [asset.name for asset in register.outlets] == ["medml_models"]


def test_every_step_is_a_task_that_calls_it_after_the_steps_it_needs(dagbag) -> None:
    """The retrain DAG has one task per step of medml.steps (task id = step name), each body
    calls that step, and each step's task runs after the tasks of the steps it needs."""
    from medml.steps import STEPS, producer_of

    dag = dagbag.dags["medml_retrain"]
    source = ast.parse((DAGS_DIR / "medml_retrain.py").read_text())
    bodies = {node.name: ast.unparse(node) for node in ast.walk(source)
              if isinstance(node, ast.FunctionDef)}  # fmt: skip
    for name, spec in STEPS.items():
        assert name in dag.task_ids, name
        assert f"steps.{name}(" in bodies[name], f"task {name} does not call medml.steps.{name}"
        upstream = dag.get_task(name).get_flat_relative_ids(upstream=True)
        for need in spec.files(0).needs:
            producer = producer_of(need).split()[0]
            assert producer == "init" or producer in upstream, (name, need, producer)
