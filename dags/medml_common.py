"""What medml's three DAG files share: defaults and the S3 connection hand-over.

Not a DAG file (listed in ``.airflowignore``); Airflow puts the DAGs folder on ``sys.path``, so
the DAG files import it as ``medml_common``. Kept free of heavy imports: it is read at parse
time.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import pendulum
from airflow.sdk import BaseOperator

# A task's stderr reaches its Airflow log as ERROR lines. MLflow's own log handler writes its
# info lines there ("Successfully registered model"), and Python warnings go there too: without
# MLflow's handler its records, and the warnings, reach the task log through logging, each at
# its own level.
os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
# MLflow's "Downloading artifacts" progress bars are carriage-return animations on stderr: in a
# task log each is one ERROR line of bar frames.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
logging.captureWarnings(True)

START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")
DEFAULT_ARGS = {"owner": "medml", "retries": 1, "retry_delay": timedelta(minutes=1)}
S3_CONNECTION_ID = "medml_s3"


def export_s3_connection() -> None:
    """Hand the `medml_s3` Airflow connection (type `aws`, if defined) to medml's S3 client.

    Every task that talks to S3 calls this first. The Amazon provider's `AwsBaseHook` resolves
    the connection (keys in login/password, or a role, profile or web identity in its extra;
    `endpoint_url` and `region_name` in the extra for S3-compatible servers) into credentials;
    medml reads S3 settings from the environment only, so they are put there for this task's
    process, never into DAG code, params or logs. Without the connection, the worker's own
    environment and boto3's credential chain apply.
    """
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from airflow.sdk import Connection

    try:
        Connection.get(S3_CONNECTION_ID)
    except Exception:  # no such connection: use the worker's environment
        return
    hook = AwsBaseHook(aws_conn_id=S3_CONNECTION_ID, client_type="s3")
    credentials = hook.get_credentials()
    values = {
        "AWS_ACCESS_KEY_ID": credentials.access_key,
        "AWS_SECRET_ACCESS_KEY": credentials.secret_key,
        "AWS_SESSION_TOKEN": credentials.token,
        "MEDML_S3_ENDPOINT_URL": hook.conn_config.endpoint_url,
        "AWS_DEFAULT_REGION": hook.conn_region_name,
    }
    os.environ.update({key: value for key, value in values.items() if value})


class FoldPodOperator(BaseOperator):
    """One fold's GPU pod: Airflow's ``KubernetesPodOperator``, imported only when it runs.

    Importing the cncf.kubernetes provider (the Kubernetes API clients) takes ~0.75 s, more than
    the whole DAG file may take to parse; this thin operator keeps it off the parse path. At run
    time it builds a ``KubernetesPodOperator`` with ``pod_kwargs`` (from ``medml.k8s``) and runs
    it in this task, forwarding ``on_kill`` so that a killed task deletes its pod.
    """

    def __init__(self, *, pod_kwargs: dict | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pod_kwargs = pod_kwargs or {}
        self._pod = None

    def build(self):
        """The ``KubernetesPodOperator`` this task runs (also used to render the pod)."""
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

        return KubernetesPodOperator(
            task_id=self.task_id, get_logs=True, on_finish_action="delete_pod",
            startup_timeout_seconds=600, **self.pod_kwargs,
        )  # fmt: skip

    def execute(self, context):
        self._pod = self.build()
        return self._pod.execute(context)

    def on_kill(self) -> None:
        if self._pod is not None:
            self._pod.on_kill()
