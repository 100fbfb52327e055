"""What medml's three DAG files share: defaults and the S3 connection hand-over.

Not a DAG file (listed in ``.airflowignore``); Airflow puts the DAGs folder on ``sys.path``, so
the DAG files import it as ``medml_common``. Kept free of heavy imports: it is read at parse
time.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum

START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")
DEFAULT_ARGS = {"owner": "medml", "retries": 1, "retry_delay": timedelta(minutes=1)}
S3_CONNECTION_ID = "medml_s3"


def export_s3_connection() -> None:
    """Put the `medml_s3` Airflow connection (if defined) into this task's environment.

    Every task that talks to S3 calls this first. medml reads S3 settings from the environment
    only; this keeps credentials in Airflow's connection store, out of DAG code, params and
    logs. Extra `endpoint_url` and `region_name` are honoured (S3-compatible servers).
    """
    from airflow.sdk import Connection

    try:
        conn = Connection.get(S3_CONNECTION_ID)
    except Exception:  # no such connection: use the worker's environment
        return
    extra = conn.extra_dejson
    values = {
        "AWS_ACCESS_KEY_ID": conn.login,
        "AWS_SECRET_ACCESS_KEY": conn.password,
        "MEDML_S3_ENDPOINT_URL": extra.get("endpoint_url"),
        "AWS_DEFAULT_REGION": extra.get("region_name"),
    }
    os.environ.update({key: value for key, value in values.items() if value})
