"""
### medml_retrain: retrain, evaluate and register a medical image classifier

Runs the medml lifecycle for one data snapshot (the run's logical date):

`prepare → ingest → validate → split → preprocess → train[fold 0..k-1] → evaluate → register`
→ `report`

* **Params / conf**: `source` (dataset root or `s3://bucket/prefix/{ds}/`; `{ds}` is replaced
  by the logical date, so each run reads its own snapshot; empty means `$MEDML_SOURCE`),
  `recipe` (e.g. `kidney-ct`), `overrides` (list of `key=value`, e.g. `["train.epochs=2"]`),
  `run_dir` (empty: `$MEDML_RUN_ROOT/<ds>/<run_id>`, default root `$MEDML_HOME/runs`).
* Workers that share no disk (Celery workers, each with its own `MEDML_HOME`): set
  `MEDML_RUN_ROOT=s3://bucket/runs/` and every task works on a local mirror of the S3 run
  directory, downloading what its step reads and uploading what it writes (`medml.run_store`).
* Training is mapped over the folds: each fold is its own task instance — in the worker
  (`train.backend: local`, default) or one GPU pod per fold (`train.backend: kubernetes`,
  `KubernetesPodOperator` — imported only when a pod task runs, so parsing stays fast — with
  the pod spec from `medml.k8s`, running
  `medml train --run-dir s3://… --fold K`: the run's shards are shared with the pods through
  the S3 run store `train.kubernetes.run_store` / `$MEDML_RUN_STORE`, and `collect_folds`
  brings the fold models back for `evaluate`).
* S3 credentials/endpoint come from the Airflow connection `medml_s3` (login, password, extra
  `endpoint_url`, `region_name`) or the worker's environment.
* The model version gets alias `challenger` only if it passes the recipe's gate.
* Every task is one call into medml (`medml.steps` declares each step once); the same steps
  back the `medml` CLI and `dvc.yaml`.

Trigger a run for a past date with `airflow dags test medml_retrain 2026-01-05 -c '{...}'`.
"""

from __future__ import annotations

import os

from airflow.sdk import Asset, Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable
from medml_common import DEFAULT_ARGS, START_DATE, FoldPodOperator, export_s3_connection

# Updated whenever a run registers a model version (extra: model, version, alias, gate), so
# downstream DAGs (e.g. batch prediction or a deployment) can be scheduled on new models.
# An "x-" scheme is user-defined (AIP-60): Airflow keeps it as is, whereas any other unknown
# scheme makes it load every provider's URI handlers (boto3 among them) to parse this file.
MODELS = Asset(name="medml_models", uri="x-medml://registry/models")
# The data producer marks this asset updated when a new snapshot lands (see docs/operations.md);
# each update triggers a retraining run, on top of the weekly schedule.
SNAPSHOTS = Asset(
    name="medml_snapshots",
    uri=os.environ.get("MEDML_SNAPSHOT_ASSET", "file:///data/medml/snapshots/kidney-ct"),
)


@dag(
    dag_id="medml_retrain",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 3 * * 1", timezone="UTC"), assets=SNAPSHOTS
    ),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=2,
    tags=["medml", "training"],
    doc_md=__doc__,
    default_args=DEFAULT_ARGS,
    params={
        "source": Param("", type="string", description="Dataset root; {ds} = logical date."),
        "recipe": Param("kidney-ct", type="string", description="Recipe name or YAML path."),
        "overrides": Param([], type="array", description="key=value overrides."),
        "run_dir": Param("", type="string", description="Run directory (empty: automatic)."),
    },
)
def medml_retrain() -> None:
    """Wire the medml steps (medml.steps: one task per step); all work happens in medml."""

    @task(retries=0)
    def prepare(
        params: dict | None = None,
        ds: str | None = None,
        run_id: str | None = None,
        dag_run=None,
    ) -> str:
        from medml import runs

        ds = ds or dag_run.run_after.date().isoformat()  # asset-triggered runs have no ds
        source = (params["source"] or os.environ.get("MEDML_SOURCE", "")).format(ds=ds)
        if not source:  # e.g. the run Airflow starts on unpausing, before MEDML_SOURCE is set
            raise AirflowSkipException(
                "no dataset source: set $MEDML_SOURCE on the workers (e.g. "
                "s3://bucket/prefix/{ds}/) or pass conf {'source': ...}; skipping this run"
            )
        run_dir = params["run_dir"] or runs.new_run_dir("medml_retrain", ds, run_id)
        ctx = runs.init_run(
            run_dir,
            source,
            params["recipe"],
            overrides=params["overrides"],
            logical_date=ds,
            run_key=runs.make_run_key("medml_retrain", run_id),
        )
        return ctx.location

    @task
    def ingest(run_dir: str) -> dict:
        from medml import steps

        export_s3_connection()
        return steps.ingest(run_dir)

    @task(retries=0)
    def validate(run_dir: str) -> dict:
        from medml import steps

        return steps.validate(run_dir)

    @task
    def split(run_dir: str) -> dict:
        from medml import steps

        return steps.split(run_dir)

    @task
    def preprocess(run_dir: str) -> dict:
        from medml import steps

        return steps.preprocess(run_dir)

    @task
    def folds(run_dir: str) -> list[int]:
        from medml import runs

        return runs.load_context(run_dir).folds

    @task.branch
    def choose_backend(run_dir: str) -> str:
        from medml import runs

        backend = runs.load_context(run_dir).recipe.train.backend
        return "fold_pods" if backend == "kubernetes" else "train"

    @task
    def fold_pods(run_dir: str) -> list[dict]:
        from medml import pipeline, runs
        from medml.k8s import fold_pod_kwargs

        ctx = runs.load_context(run_dir)
        config = ctx.recipe.train.kubernetes
        export_s3_connection()
        shared = pipeline.share_with_pods(run_dir)  # pods read and write the S3 run dir
        return [fold_pod_kwargs(config, ctx.recipe.name, shared, fold) for fold in ctx.folds]

    @task
    def collect_folds(run_dir: str) -> dict:
        from medml import pipeline

        export_s3_connection()
        return pipeline.collect_folds(run_dir)

    @task(max_active_tis_per_dagrun=4)
    def train(run_dir: str, fold: int) -> dict:
        from medml import steps
        from medml.tracking import Tracking

        return steps.train(run_dir, fold, Tracking.from_env())

    @task(trigger_rule="none_failed_min_one_success")
    def evaluate(run_dir: str) -> dict:
        from medml import steps
        from medml.tracking import Tracking

        return steps.evaluate(run_dir, Tracking.from_env())

    @task(outlets=[MODELS])
    def register(run_dir: str, outlet_events=None, dag_run=None) -> dict:
        from medml import steps
        from medml.tracking import Tracking

        registrar = dag_run.triggering_user_name or "scheduler"  # the audited registrar
        registration = steps.register(run_dir, Tracking.from_env(), airflow_user=registrar)
        outlet_events[MODELS].extra = {
            key: registration[key] for key in ("model_name", "version", "alias", "gate_passed")
        }
        return registration

    @task
    def report(run_dir: str) -> str:
        from medml.report import write_run_summary

        path = write_run_summary(run_dir)
        print(path.read_text())
        return str(path)

    run_dir = prepare()
    fold_ids = folds(run_dir)
    backend = choose_backend(run_dir)
    ingest(run_dir) >> validate(run_dir) >> split(run_dir) >> preprocess(run_dir) >> fold_ids
    fold_ids >> backend
    trained = train.partial(run_dir=run_dir).expand(fold=fold_ids)
    pods = fold_pods(run_dir)
    backend >> [trained, pods]
    trained_in_pods = FoldPodOperator.partial(task_id="train_pod", retries=2).expand(
        pod_kwargs=pods
    )
    registered = register(run_dir)
    evaluated = evaluate(run_dir)
    trained_in_pods >> collect_folds(run_dir) >> evaluated
    trained >> evaluated >> registered
    registered >> report(run_dir)


medml_retrain()
