"""
### medml_promote: a reviewer approves (or rejects) a model version in the Airflow UI

Trigger manually with params `model`, `version`, `reason` (and `override_gate` to promote a
version whose gate failed, with the reason). Identities come from Airflow's authentication,
never from a parameter: the **requester** is the user who triggered the run, the **approver**
the user who answered the approval. The DAG

1. renders the review report (candidate vs champion) and shows it in the approval request;
2. waits for a human decision with Airflow's human-in-the-loop `ApprovalOperator`;
3. on **Approve**, promotes as the approver (refused when the approver is the requester —
   four-eyes — or the gate failed without an override the deployment allows them), moving
   `champion` (old one → `previous-champion`, `challenger` cleared) and appending to the
   audit trail; on **Reject**, leaves every alias as it is and records the rejection. A
   refused promotion is recorded once (event `refused`, with the reason) and fails the run; it
   is not retried.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, task
from medml_common import DEFAULT_ARGS, START_DATE


@dag(
    dag_id="medml_promote",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    tags=["medml", "registry", "review"],
    doc_md=__doc__,
    default_args=DEFAULT_ARGS,
    params={
        "model": Param("kidney-ct-classifier", type="string", description="Registered model."),
        "version": Param("1", type="string", description="Version to promote."),
        "reason": Param("", type="string", minLength=1, description="Why (audited)."),
        "override_gate": Param("", type="string", description="Reason to ignore a failed gate."),
    },
)
def medml_promote() -> None:
    """Wire review → approval → promote / record rejection; the work is in medml.promotion."""

    @task
    def render_review(params: dict | None = None, run_id: str | None = None) -> str:
        from urllib.parse import quote

        from airflow.configuration import conf

        from medml.io import medml_home
        from medml.review import review
        from medml.tracking import Tracking

        out = medml_home() / "reviews" / f"{params['model']}-v{params['version']}-{run_id}.html"
        out.parent.mkdir(parents=True, exist_ok=True)
        table, _ = review(Tracking.from_env(), params["model"], params["version"], out,
                          markdown=True)  # fmt: skip
        base = conf.get("api", "base_url", fallback="").rstrip("/")
        model, version = (quote(str(params[key]), safe="") for key in ("model", "version"))
        link = f"{base}/medml/review/{model}/{version}"
        return f"{table}\n\n[Full report with plots (Models view)]({link})"

    approve = ApprovalOperator(
        task_id="approve",
        subject="Promote {{ params.model }} v{{ params.version }} to champion?",
        body="Requested by {{ dag_run.triggering_user_name }}: {{ params.reason }}\n\n"
        "{{ ti.xcom_pull(task_ids='render_review') }}",
        response_timeout=timedelta(days=3),
        retries=0,
    )

    @task(retries=0)  # a refusal is a decision, not a glitch: it is recorded once, not retried
    def promote(params: dict | None = None, ti=None, dag_run=None) -> dict:
        from medml.promotion import PromotionError, record_decision
        from medml.promotion import promote as promote_version
        from medml.tracking import Tracking

        tracking, approver = Tracking.from_env(), _responder(ti)
        try:
            return promote_version(
                tracking, params["model"], params["version"], reviewer=approver,
                reason=params["reason"], override_gate=params["override_gate"] or None,
                requested_by=dag_run.triggering_user_name, identity="airflow",
            )  # fmt: skip
        except PromotionError as refused:
            record_decision(tracking, params["model"], params["version"], reviewer=approver,
                            decision="refused", reason=str(refused)[:2000])  # fmt: skip
            raise

    @task(trigger_rule="all_skipped")
    def record_rejection(params: dict | None = None, ti=None, dag_run=None) -> dict:
        from medml.promotion import record_decision
        from medml.tracking import Tracking

        return record_decision(
            Tracking.from_env(), params["model"], params["version"],
            reviewer=_responder(ti), decision="rejected",
            reason=f"rejected in the Airflow UI (requested by {dag_run.triggering_user_name}: "
            f"{params['reason']})",
        )  # fmt: skip

    @task
    def announce(event: dict) -> str:
        """The outcome, once promoted; a leaf that fails the run when the promotion was refused
        (``record_rejection`` is skipped then, and Airflow judges a run by its leaves)."""
        line = (f"{event['model']}: champion -> v{event['version']} by {event['reviewer']} "
                f"(audit event #{event['seq']})")  # fmt: skip
        print(line)
        return line

    promoted = promote()
    render_review() >> approve >> promoted >> record_rejection()
    announce(promoted)


def _responder(ti) -> str:
    """The authenticated user who answered the approval (empty when nobody did)."""
    response = ti.xcom_pull(task_ids="approve") or {}
    user = response.get("responded_by_user") or {}
    return str(user.get("name") or user.get("id") or "")


medml_promote()
