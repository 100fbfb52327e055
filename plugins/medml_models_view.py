"""Airflow plugin: a "Models" view in the Airflow UI for reviewers.

Airflow 3 mounts the FastAPI app below at ``/medml`` on the API server and adds a "Models" entry
to the navigation. The page lists every registered model with its aliases (champion,
challenger, previous-champion), each version's gate outcome and key metrics, the audit trail,
and links to the side-by-side review report — so reviewers need not leave Airflow to see what
they are approving. All data comes from the MLflow registry through medml (imported inside the
handlers, so the API server starts without TensorFlow).
"""

from __future__ import annotations

import html
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

STYLE = (
    "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    ".failed,.unpinned,.evidence-changed,.unknown{color:#b00}"
    ".passed{color:#070}.alias{background:#e8f0fe;border-radius:4px;padding:1px 6px}"
)


def _tracking() -> Any:
    """The MLflow store (medml.tracking.Tracking; imported here, not at plugin load)."""
    from medml.tracking import Tracking

    return Tracking.from_env()


def _cell(value: Any) -> str:
    return f"<td>{html.escape(str(value if value is not None else ''))}</td>"


def _model_section(tracking: Any, client: Any, model: Any) -> str:
    """One registered model: versions (gate recomputed and checked against its registration,
    who promoted it per the audit trail), the champion check and the audit trail."""
    from medml.audit import events, verify
    from medml.promotion import champion_problem, gate_shown
    from medml.version_tags import VersionTags as T

    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    trail = events(tracking, model.name)
    promoted_by = {str(e.get("version")): e.get("reviewer") for e in trail
                   if e.get("event") in ("promote", "rollback")}  # fmt: skip
    rows = []
    for v in sorted(client.search_model_versions(f"name='{model.name}'"),
                    key=lambda v: int(v.version), reverse=True):  # fmt: skip
        tags = v.tags
        gate, reasons = gate_shown(tracking, v, trail)
        badges = " ".join(f"<span class='alias'>{html.escape(a)}</span>"
                          for a in sorted(aliases.get(str(v.version), [])))  # fmt: skip
        link = f"review/{html.escape(model.name)}/{v.version}"
        rows.append(
            f"<tr><td>v{v.version} {badges}</td>{_cell(tags.get(T.LOGICAL_DATE))}"
            f"<td class='{gate}'>{html.escape(gate)}</td>"
            f"{_cell(tags.get(T.metric('balanced_accuracy')))}"
            f"{_cell(tags.get(T.metric('macro_f1')))}{_cell(reasons[:160])}"
            f"{_cell(promoted_by.get(str(v.version)))}<td><a href='{link}'>review</a></td></tr>"
        )
    audit_rows = "".join(
        f"<tr>{_cell('#' + str(e.get('seq', '')))}{_cell(e.get('at'))}{_cell(e.get('event'))}"
        f"{_cell('v' + str(e.get('version', '')))}"
        f"{_cell(e.get('reviewer') or e.get('registrar'))}{_cell(e.get('requested_by'))}"
        f"{_cell(e.get('reason'))}</tr>"
        for e in reversed(trail))  # fmt: skip
    report = verify(tracking, model.name)
    problems = report.problems + [p for p in [champion_problem(tracking, model.name)[1]] if p]
    broken = "" if not problems else (
        "<p class='failed'>The audit trail does not back this model: "
        + html.escape("; ".join(problems)) + "</p>")  # fmt: skip
    return (
        f"<h2>{html.escape(model.name)}</h2>{broken}<table><tr><th>version</th><th>snapshot</th>"
        "<th>gate</th><th>balanced acc.</th><th>macro-F1</th><th>gate reasons</th>"
        f"<th>promoted by</th><th></th></tr>{''.join(rows)}</table>"
        "<h3>Audit trail</h3><table><tr><th>#</th><th>when</th><th>event</th>"
        "<th>version</th><th>approved by</th><th>requested by</th><th>why</th></tr>"
        f"{audit_rows}</table>"
    )


def models_page() -> str:
    """The Models page as HTML (used by the route and by tests)."""
    from medml.audit import LOCK_SUFFIX

    tracking = _tracking()
    client = tracking.activate()
    sections = []
    for model in client.search_registered_models():
        if model.name.endswith(LOCK_SUFFIX):
            continue  # an audit append in progress, not a model
        try:
            sections.append(_model_section(tracking, client, model))
        except Exception as err:  # one odd model (a name, an event) must not hide the others
            why = html.escape(f"{type(err).__name__}: {err}")
            sections.append(f"<h2>{html.escape(model.name)}</h2><p class='failed'>cannot be "
                            f"shown: {why}</p>")  # fmt: skip
    body = "".join(sections) or "<p>No registered models yet.</p>"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>medml models</title>"
        f"<style>{STYLE}</style></head><body><h1>Models</h1>{body}</body></html>"
    )


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
