"""Who is acting: an identity something authenticated, never a name someone typed.

Three sources, each recorded with every audited event (``identity``):

- :data:`AIRFLOW`: the Airflow user who answered an approval or triggered a run (Airflow's
  authentication; the medml_promote and medml_retrain DAGs pass it).
- :data:`MLFLOW_AUTH`: the user the MLflow tracking server authenticated
  (``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` on a server started with
  ``--app-name basic-auth``). medml asks the server who the credentials belong to
  (``/api/2.0/mlflow/users/current``) and first checks that the server refuses a request
  without credentials: a server that vouches for nobody cannot vouch for this user.
- :data:`LOCAL_ADMIN`: the operating-system account of the process (from the user database,
  not ``$USER``), allowed only where the deployment's policy keeps ``local_admin`` on (the
  default without a policy file: a single-user installation).
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

from medml.errors import OperationalFault, RefusedError
from medml.policy import Policy
from medml.settings import Settings

AIRFLOW = "airflow"
MLFLOW_AUTH = "mlflow-auth"
LOCAL_ADMIN = "local-admin"
_CURRENT_USER = "/api/2.0/mlflow/users/current"


class IdentityError(RefusedError):
    """No identity the deployment accepts; the message says how to get one."""


@dataclass(frozen=True)
class Identity:
    """An authenticated actor: ``name`` and where the authentication came from."""

    name: str
    source: str


def os_user() -> str:
    """The account of the process's user id, from the operating system's user database —
    not ``$USER``/``$LOGNAME``, which anyone can set."""
    return pwd.getpwuid(os.getuid()).pw_name


def cli_identity(settings: Settings, tracking_uri: str, policy: Policy | None = None) -> Identity:
    """Who runs this CLI command, as the deployment accepts it.

    With MLflow credentials and an ``http(s)`` tracking URI: the user the server authenticates
    (:data:`MLFLOW_AUTH`). Otherwise the OS user (:data:`LOCAL_ADMIN`) if the policy allows
    local-admin mode.

    Raises:
        IdentityError: credentials the server rejects, a server without authentication, or
            no credentials where the policy turns local-admin mode off.
        OperationalFault: the tracking server cannot be reached.
    """
    policy = policy or settings.policy()
    if settings.mlflow_username and tracking_uri.startswith(("http://", "https://")):
        return Identity(mlflow_authenticated_user(tracking_uri), MLFLOW_AUTH)
    if policy.local_admin:
        return Identity(os_user(), LOCAL_ADMIN)
    raise IdentityError(
        f"this deployment turns local-admin mode off ({policy.source}): promote through the "
        "medml_promote DAG in Airflow, or set MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD for a tracking server with authentication enabled"
    )


def mlflow_authenticated_user(tracking_uri: str) -> str:
    """The user name the tracking server at ``tracking_uri`` authenticates for the
    credentials MLflow's client sends (``MLFLOW_TRACKING_USERNAME``/``…_PASSWORD``).

    Raises:
        IdentityError: the server does not require authentication, or rejects the credentials.
        OperationalFault: the server cannot be reached.
    """
    import requests
    from mlflow.utils.credentials import get_default_host_creds

    from medml.errors import redact

    url = tracking_uri.rstrip("/") + _CURRENT_USER
    creds = get_default_host_creds(tracking_uri)
    try:
        anonymous = requests.get(url, timeout=30)
        answered = requests.get(url, auth=(creds.username or "", creds.password or ""),
                                timeout=30, verify=not creds.ignore_tls_verification)  # fmt: skip
    except requests.RequestException as err:
        raise OperationalFault(f"the MLflow server {redact(tracking_uri)} cannot be reached "
                               f"to authenticate you: {type(err).__name__}") from None  # fmt: skip
    if anonymous.status_code != 401:
        raise IdentityError(
            f"the MLflow server {redact(tracking_uri)} does not require authentication (an "
            f"anonymous request got HTTP {anonymous.status_code}), so it vouches for nobody; "
            "start it with `--app-name basic-auth`, or use local-admin mode where the policy "
            "allows it"
        )
    if answered.status_code != 200:
        raise IdentityError(f"the MLflow server {redact(tracking_uri)} rejected the credentials "
                            f"of {creds.username!r} (HTTP {answered.status_code})")  # fmt: skip
    return str(answered.json()["user"]["username"])
