"""Airflow plugin: a "Models" view in the Airflow UI for reviewers.

Airflow 3 mounts the FastAPI app below at ``/medml`` on the API server and adds a "Models" entry
to the navigation. The page lists every registered model with its aliases (champion,
challenger, previous-champion), each version's gate outcome and key metrics, the audit trail,
and links to the side-by-side review report — so reviewers need not leave Airflow to see what
they are approving. All data comes from the MLflow registry through medml (imported inside the
handlers, so the API server starts without TensorFlow).
"""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.core_api.security import get_user
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse

# Every page needs an authenticated Airflow session (the UI's cookie, or a bearer token), the
# same as Airflow's own API: anonymous requests get 401. FastAPI's schema and docs pages
# (/openapi.json, /docs, /redoc) bypass route dependencies, so they are not served at all: the
# pages are for people in a browser, and no client needs the schema.
app = FastAPI(title="medml models", description="Registered models for review",
              dependencies=[Depends(get_user)], openapi_url=None, docs_url=None,
              redoc_url=None)  # fmt: skip


def _tracking() -> Any:
    """The MLflow store (medml.tracking.Tracking; imported here, not at plugin load)."""
    from medml.tracking import Tracking

    return Tracking.from_env()


def _model_section(tracking: Any, client: Any, model: Any) -> dict[str, Any]:
    """One registered model: versions (gate recomputed and checked against its registration,
    who promoted it per the audit trail), the champion check and the audit trail."""
    from urllib.parse import quote

    from medml.audit import events, verify
    from medml.promotion import champion_problem, gate_shown
    from medml.version_tags import VersionTags as T

    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    trail = events(tracking, model.name)
    promoted_by = {str(e.get("version")): e.get("reviewer") for e in trail
                   if e.get("event") in ("promote", "rollback")}  # fmt: skip
    versions = []
    for v in sorted(client.search_model_versions(f"name='{model.name}'"),
                    key=lambda v: int(v.version), reverse=True):  # fmt: skip
        gate, reasons = gate_shown(tracking, v, trail)
        versions.append({
            "version": v.version, "aliases": sorted(aliases.get(str(v.version), [])),
            "logical_date": v.tags.get(T.LOGICAL_DATE, ""), "gate": gate,
            "balanced_accuracy": v.tags.get(T.metric("balanced_accuracy"), ""),
            "macro_f1": v.tags.get(T.metric("macro_f1"), ""), "reasons": reasons[:160],
            "promoted_by": promoted_by.get(str(v.version)) or "",
            "link": f"review/{quote(model.name, safe='')}/{quote(str(v.version), safe='')}",
        })  # fmt: skip
    audit = [{"seq": e.get("seq", ""), "at": e.get("at", ""), "event": e.get("event", ""),
              "version": e.get("version", ""), "by": e.get("reviewer") or e.get("registrar") or "",
              "requested_by": e.get("requested_by") or "", "reason": e.get("reason") or ""}
             for e in reversed(trail)]  # fmt: skip
    problems = verify(tracking, model.name).problems
    problems += [p for p in [champion_problem(tracking, model.name)[1]] if p]
    return {"name": model.name, "problems": problems, "versions": versions, "audit": audit}


def models_page() -> str:
    """The Models page as HTML (used by the route and by tests), from the Jinja2 template
    ``medml/templates/models.html.j2`` (autoescaped)."""
    from medml.audit import LOCK_SUFFIX
    from medml.io import render_html

    tracking = _tracking()
    client = tracking.activate()
    sections = []
    for model in client.search_registered_models():
        if model.name.endswith(LOCK_SUFFIX):
            continue  # an audit append in progress, not a model
        try:
            sections.append(_model_section(tracking, client, model))
        except Exception as err:  # one odd model (a name, an event) must not hide the others
            sections.append({"name": model.name, "error": f"{type(err).__name__}: {err}"})
    return render_html("models.html.j2", models=sections)


@app.get("/", response_class=HTMLResponse)
def models() -> str:
    """Registered models, aliases, gate outcomes, metrics and audit trail."""
    return models_page()


@app.get("/review/{name}/{version}", response_class=HTMLResponse)
def review_report(name: str, version: str) -> str:
    """The side-by-side review report of a version against the champion."""
    import tempfile
    from pathlib import Path

    from medml.review import ReviewError, review

    with tempfile.TemporaryDirectory() as tmp:
        try:
            _, path = review(_tracking(), name, version, Path(tmp) / "review.html")
        except ReviewError as err:
            raise HTTPException(status_code=404, detail=str(err)) from None
        return path.read_text(encoding="utf-8")


class MedmlModelsPlugin(AirflowPlugin):
    """Mounts the Models view on the API server and links it from the navigation."""

    name = "medml_models"
    fastapi_apps = [{"app": app, "url_prefix": "/medml", "name": "medml models"}]
    external_views = [{"name": "Models", "href": "/medml/", "destination": "nav",
                       "url_route": "medml-models"}]  # fmt: skip
