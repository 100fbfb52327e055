"""The demo's progress lines, read from `airflow dags test` output in Airflow 3's own format."""

from __future__ import annotations

from medml.local_airflow import DagTestProgress

RUN = "manual__2026-11-24T05:21:55.936473+00:00"
LINES = [
    "2026-11-24 05:22:34.189665+00:00 [info     ] DAG bundles loaded: dags-folder "
    f"[airflow.dag_processing.bundles.manager.DagBundlesManager] dag_id=medml_retrain "
    f"loc=manager.py:304 map_index=-1 run_id={RUN} task_id=register try_number=1\n",
    "2026-11-24T05:22:01.348805Z [info     ] TaskInstance Finished: dag_id=medml_retrain, "
    f"task_id=prepare, run_id={RUN}, map_index=-1, ti_id=01a20c00, run_start_date=2026-11-24 "
    "05:21:56, run_end_date=2026-11-24 05:22:00, run_duration=4.1, state=success, "
    "executor=LocalExecutor(parallelism=2)\n",
    "2026-11-24T05:22:26.993380Z [info     ] TaskInstance Finished: dag_id=medml_retrain, "
    f"task_id=train, run_id={RUN}, map_index=1, ti_id=01a20c01, run_start_date=2026-11-24 "
    "05:22:13, run_end_date=2026-11-24 05:22:26, run_duration=13.2, state=failed, "
    "executor=LocalExecutor(parallelism=2)\n",
    "2026-11-24T05:22:39.927333Z [error    ] Successfully registered model 'x'. [task.stderr]\n",
]


def test_finished_tasks_become_one_line_each_and_the_run_id_is_kept() -> None:
    progress = DagTestProgress()
    lines = [message for line in LINES if (message := progress(line))]
    assert lines == ["  done: prepare", "  failed: train [fold 1]"]
    assert progress.run_id == RUN
    assert progress.reported == {("prepare", ""), ("train", "1")}
