"""medml_promote and medml_predict DAGs for real (`airflow dags test`, SQLite, MLflow registry).

The approval is answered the way a reviewer's click answers it: through Airflow's REST API,
authenticated as a second user of the deployment, while `airflow dags test` waits on the
human-in-the-loop task. The promotion is recorded with that user's identity.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from medml import audit, pipeline, runs
from medml.local_airflow import airflow_env, api_server
from medml.tracking import Tracking
from tests.conftest import TINY, dags_test, venv_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NAME = "kidney-ct-classifier"


def _call(env: dict[str, str], method: str, path: str, body: dict | None = None,
          token: str | None = None) -> dict:  # fmt: skip
    request = urllib.request.Request(
        f"{env['AIRFLOW__API__BASE_URL']}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {token}"} if token else {})},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def _token(env: dict[str, str], user: str) -> str:
    generated = Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
    passwords = json.loads(generated.read_text())
    return _call(env, "POST", "/auth/token", {"username": user, "password": passwords[user]})[
        "access_token"
    ]


def _approve_when_asked(env: dict[str, str], token: str, deadline_s: float = 300) -> str:
    """Wait for the approval request of medml_promote, answer Approve; returns the run id."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        pending = _call(env, "GET", "/api/v2/dags/medml_promote/dagRuns/~/hitlDetails",
                        token=token)  # fmt: skip
        waiting = [d for d in pending.get("hitl_details", []) if not d.get("response_received")]
        if waiting:
            ti = waiting[0]["task_instance"]
            _call(env, "PATCH", f"/api/v2/dags/medml_promote/dagRuns/{ti['dag_run_id']}/"
                  f"taskInstances/approve/{ti['map_index']}/hitlDetails",
                  {"chosen_options": ["Approve"], "params_input": {}}, token=token)  # fmt: skip
            return ti["dag_run_id"]
        time.sleep(2)
    raise AssertionError("the approval request never appeared")


def _promote_approved_by(env: dict[str, str], served: dict[str, str], token: str,
                         logical_date: str, conf: dict) -> str:  # fmt: skip
    """Run medml_promote with ``conf``, approve it as ``token``'s user; the run's output."""
    waiting = subprocess.Popen(
        ["airflow", "dags", "test", "medml_promote", logical_date, "-c", json.dumps(conf)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    _approve_when_asked(served, token)
    return waiting.communicate(timeout=600)[0]


def test_approved_promotion_and_batch_prediction(phantom_dir: Path, tmp_path: Path) -> None:
    home = Path(venv_env()["MEDML_HOME"])
    ctx = runs.init_run(
        tmp_path / "r1",
        phantom_dir,
        "kidney-ct",
        overrides=[
            *TINY,
            "registry.gate.require_better_than_chance=false",
            "registry.gate.thresholds.balanced_accuracy.min=0",
        ],
    )
    pipeline.run_all(ctx, Tracking.from_env(home), echo=lambda _: None)

    # `airflow dags test` triggers as the user "dag_test": an Airflow user of that name is
    # the requester, and approving their own request is refused (four-eyes)
    env = {
        **airflow_env(home),
        "PATH": venv_env()["PATH"],
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "alice:admin,bob:admin,dag_test:admin",
    }
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    conf = {"model": NAME, "version": "1", "reason": "better Stone recall"}
    with api_server(env) as served:
        own = _promote_approved_by(env, served, _token(served, "dag_test"), "2026-01-04", conf)
        assert "state=failed" in [x for x in own.splitlines() if "DagRun Finished" in x][-1]
        bob = _token(served, "bob")
        output = _promote_approved_by(env, served, bob, "2026-01-05", conf)
        # The Models view answers an authenticated session only, like Airflow's own API.
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            urllib.request.urlopen(f"{served['AIRFLOW__API__BASE_URL']}/medml/", timeout=30)
        assert anonymous.value.code == 401
        signed_in = urllib.request.Request(f"{served['AIRFLOW__API__BASE_URL']}/medml/",
                                           headers={"Cookie": f"_token={bob}"})  # fmt: skip
        page = urllib.request.urlopen(signed_in, timeout=60).read().decode()
        assert "kidney-ct-classifier" in page and "bob" in page and "dag_test" in page

        # approving v1 again is refused (already the champion): recorded once, not retried
        refused_output = _promote_approved_by(env, served, bob, "2026-01-06", conf)
    assert "state=failed" in [x for x in refused_output.splitlines()
                              if "DagRun Finished" in x][-1], refused_output[-4000:]  # fmt: skip
    refusals = [e for e in audit.events(Tracking.from_env(home), NAME) if e["event"] == "refused"]
    assert len(refusals) == 2, refusals
    assert "dag_test" in refusals[0]["reason"] and "four-eyes" in refusals[0]["reason"], refusals
    assert "already the champion" in refusals[1]["reason"], refusals
    assert "state=success" in [x for x in output.splitlines() if "DagRun Finished" in x][-1], (
        output[-4000:]
    )
    client = Tracking.from_env(home).activate()
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == "1"
    registered, _own, event, _refused = audit.events(Tracking.from_env(home), NAME)
    assert registered["event"] == "register" and registered["identity"] == "local-admin"
    # the approver is the authenticated user who clicked; the requester, who triggered the run
    who = (event["reviewer"], event["identity"], event["requested_by"])
    assert who == ("bob", "airflow", "dag_test")
    assert list((home / "reviews").glob(f"{NAME}-v1-*.html"))  # the report the reviewer saw

    predictions = tmp_path / "predictions.csv"
    dags_test(env, "medml_predict", "2026-01-05", {"model": f"{NAME}@champion",
                                      "source": str(phantom_dir / "Tumor"),
                                      "out": str(predictions)})  # fmt: skip
    table = pd.read_csv(predictions)
    assert len(table) == len(list((phantom_dir / "Tumor").glob("*.jpg")))

    # Someone with plain MLflow write access points champion at a version no one reviewed:
    # the predict DAG refuses it and writes nothing.
    unreviewed = client.create_model_version(NAME, champion.source, champion.run_id)
    client.set_registered_model_alias(NAME, "champion", unreviewed.version)
    refused_out = tmp_path / "refused.csv"
    conf = {"model": f"{NAME}@champion", "source": str(phantom_dir / "Tumor"),
            "out": str(refused_out)}  # fmt: skip
    result = subprocess.run(
        ["airflow", "dags", "test", "medml_predict", "2026-01-06", "-c", json.dumps(conf)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    finished = [line for line in result.stdout.splitlines() if "DagRun Finished" in line]
    assert finished and "state=failed" in finished[-1], result.stdout[-4000:]
    said = result.stdout + result.stderr
    assert f"points at v{unreviewed.version}" in said and "made v1 champion" in said, said[-4000:]
    assert not refused_out.exists()
