"""``[core] hostname_callable`` for two Airflow workers on one host: each records its own name.

On separate machines each worker's host name tells them apart; here both run on 127.0.0.1,
so each worker's environment names it (``MEDML_WORKER_NAME``) and Airflow records that name
as the task instance's ``hostname``.
"""

from __future__ import annotations

import os


def hostname() -> str:
    """This worker's name."""
    return os.environ["MEDML_WORKER_NAME"]
