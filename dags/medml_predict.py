"""
### medml_predict: batch prediction with the champion model

Trigger with params `model` (e.g. `kidney-ct-classifier@champion`), `source` (folder of images
or a CSV with a `filename` column such as Kvasir-Capsule's `Testing_set.csv`; `{ds}` is the
logical date) and optionally `out` (default `$MEDML_HOME/predictions/<ds>/<run_id>.csv`).
Writes one row per image: predicted class and per-class probabilities.

`NAME@champion` is refused when no valid promotion event in the audit trail backs the alias
(moved with the plain MLflow client); the param `allow_unreviewed` (default false) uses it
anyway with a warning in the task log and the task's result.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task
from medml_common import DEFAULT_ARGS, START_DATE


@dag(
    dag_id="medml_predict",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    tags=["medml", "prediction"],
    doc_md=__doc__,
    default_args=DEFAULT_ARGS,
    params={
        "model": Param("kidney-ct-classifier@champion", type="string"),
        "source": Param("", type="string", description="Folder or CSV; {ds} = logical date."),
        "out": Param("", type="string", description="CSV to write (empty: automatic)."),
        "allow_unreviewed": Param(
            False,
            type="boolean",
            description="Use a champion the audit trail does not back (warns instead of failing).",
        ),  # fmt: skip
    },
)
def medml_predict() -> None:
    """One task: medml.predict.predict."""

    @task
    def predict(params: dict | None = None, ds: str | None = None,
                run_id: str | None = None) -> dict:  # fmt: skip
        from pathlib import Path

        from airflow.sdk.exceptions import AirflowFailException

        from medml.io import medml_home, safe_name
        from medml.predict import predict as predict_batch
        from medml.promotion import UnreviewedChampion
        from medml.tracking import Tracking, models_uri

        out = Path(params["out"] or medml_home() / "predictions" / ds / f"{safe_name(run_id)}.csv")
        out.parent.mkdir(parents=True, exist_ok=True)
        model = params["model"]
        try:
            result = predict_batch(
                models_uri(model),
                Path(params["source"].format(ds=ds)), out, tracking=Tracking.from_env(),
                allow_unreviewed=bool(params.get("allow_unreviewed", False)),
            )  # fmt: skip
        except UnreviewedChampion as refused:  # a decision, not a glitch: fail, do not retry
            raise AirflowFailException(str(refused)) from None
        if result.warning:
            print(f"WARNING: {result.warning}")
        return {"out": str(result.out), "images": result.images, "failed": result.failed,
                "warning": result.warning}  # fmt: skip

    predict()


medml_predict()
