"""The Airflow "Models" plugin: discovered by Airflow, and its page shows the registry."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from medml import pipeline, runs
from medml.local_airflow import airflow_env
from medml.promotion import promote
from medml.tracking import Tracking
from tests.conftest import REPO_ROOT, TINY, venv_env

PLUGIN = REPO_ROOT / "plugins" / "medml_models_view.py"


def _plugin_module():
    spec = importlib.util.spec_from_file_location("medml_models_view", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_airflow_discovers_the_plugin(tmp_path: Path) -> None:
    env = {**airflow_env(tmp_path), "PATH": venv_env()["PATH"]}
    out = subprocess.run(["airflow", "plugins", "-o", "json"], env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "medml_models" in out.stdout and "/medml" in out.stdout


@pytest.mark.integration
def test_models_page_lists_versions_aliases_and_audit(phantom_dir: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    ctx = runs.init_run(
        tmp_path / "r",
        phantom_dir,
        "kidney-ct",
        overrides=[
            *TINY,
            "registry.gate.require_better_than_chance=false",
            "registry.gate.thresholds.balanced_accuracy.min=0",
        ],
    )
    tracking = Tracking.from_env()
    pipeline.run_all(ctx, tracking, echo=lambda _: None)
    promote(tracking, "kidney-ct-classifier", 1, reviewer="alice", reason="first model")

    plugin = _plugin_module()
    client = TestClient(plugin.app)
    assert client.get("/").status_code == 401  # anonymous: refused, like Airflow's own API
    assert client.get("/review/kidney-ct-classifier/1").status_code == 401
    # Signed in (the real sign-in through Airflow's API server is in test_promote_dag.py):
    plugin.app.dependency_overrides[plugin.get_user] = lambda: "alice"
    page = client.get("/")
    assert page.status_code == 200
    text = page.text
    for fragment in (
        "kidney-ct-classifier",
        "v1",
        "champion",
        "passed",
        "alice",
        "first model",
        "review/kidney-ct-classifier/1",
    ):
        assert fragment in text, fragment
    assert "challenger" not in text  # promotion cleared it: no version is reviewed against itself
    report = client.get("/review/kidney-ct-classifier/1")
    assert report.status_code == 200 and "sensitivity Stone" in report.text
    assert client.get("/review/no-such-model/1").status_code == 404

    import mlflow

    run_id = tracking.activate().get_model_version("kidney-ct-classifier", "1").run_id
    with mlflow.start_run(run_id=run_id):  # a "better" metrics.json logged after registration
        mlflow.log_dict({"forged": True}, "evaluation/metrics.json")
    text = client.get("/").text
    assert 'class="evidence-changed">evidence-changed<' in text and "not what registration " \
        "pinned" in text  # fmt: skip


def test_no_schema_or_docs_page_answers_without_a_session() -> None:
    """FastAPI's /openapi.json, /docs and /redoc skip route dependencies: they are not served.
    (Through the real API server: test_local_airflow.py's airflow-ui test.)"""
    from fastapi.testclient import TestClient

    plugin = _plugin_module()
    client = TestClient(plugin.app)
    for page in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect", "/"):
        assert client.get(page).status_code in (401, 404), page
    plugin.app.dependency_overrides[plugin.get_user] = lambda: "alice"
    for page in ("/openapi.json", "/docs", "/redoc"):
        assert client.get(page).status_code == 404, page  # not even with a session


def test_the_models_page_escapes_what_a_store_writer_controls() -> None:
    """Names, tags and audit reasons come from anyone with MLflow write access: the template
    escapes every one of them, and a link's path is URL-quoted."""
    from medml.io import render_html

    hostile = "<script>alert(1)</script>"
    version = {"version": "1", "aliases": [hostile], "logical_date": hostile, "gate": "passed",
               "balanced_accuracy": hostile, "macro_f1": "", "reasons": hostile,
               "promoted_by": hostile, "link": "review/a%3Cb/1"}  # fmt: skip
    audit = [{"seq": 1, "at": "", "event": hostile, "version": "1", "by": hostile,
              "requested_by": "", "reason": hostile}]  # fmt: skip
    page = render_html("models.html.j2", models=[
        {"name": hostile, "problems": [hostile], "versions": [version], "audit": audit},
        {"name": "broken", "error": hostile}])  # fmt: skip
    assert "<script>" not in page and page.count("&lt;script&gt;") == 11  # every field
    assert 'href="review/a%3Cb/1"' in page
