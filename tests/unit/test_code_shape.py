"""Shape rules of the library that keep it easy to change (docs/extending.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

LIBRARY = sorted((REPO_ROOT / "medml").rglob("*.py"))
MAX_FUNCTION_LINES = 60  # without the docstring
PROSE = {("model_card.py", "_sections")}  # the card's text: long by nature, no logic


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        lines -= first.end_lineno - first.lineno + 1
    return lines


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_functions_are_sized_to_one_phase(path: Path) -> None:
    tree = ast.parse(path.read_text())
    too_long = [
        f"{node.name} ({_body_lines(node)} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and _body_lines(node) > MAX_FUNCTION_LINES
        and (path.name, node.name) not in PROSE
    ]
    assert not too_long, f"split into named phases: {too_long}"


RUN_FILES = {"run.json", "snapshot.json", "remote.json", "manifest.parquet", "splits.parquet",
             "split_report.json", "preprocess.json", "validation.json", "quarantine.csv",
             "clean_manifest.parquet", "index.parquet", "meta.json", "model.keras",
             "history.json", "metrics.json", "predictions.parquet", "ensemble.keras",
             "registration.json", "model_card.md", "model_card.html", "summary.txt"}  # fmt: skip


def test_run_directory_file_names_belong_to_the_layout() -> None:
    """Only medml/layout.py names a run directory's files (no ad-hoc joins elsewhere)."""
    offenders = []
    for path in LIBRARY:
        if path.name == "layout.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in RUN_FILES:
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.value!r}")
    assert not offenders, offenders


def test_option_names_are_declared_once() -> None:
    """The config has no second list of registered names (no ``Literal`` of strategies etc.)."""
    from medml.extensions import BALANCERS, LAYOUTS, METRICS, MODELS

    registered = {n for r in (BALANCERS, MODELS, LAYOUTS, METRICS) for n in r.names()}
    literals = set()
    for node in ast.walk(ast.parse((REPO_ROOT / "medml" / "config.py").read_text())):
        if isinstance(node, ast.Subscript) and getattr(node.value, "id", "") == "Literal":
            literals |= {c.value for c in ast.walk(node.slice) if isinstance(c, ast.Constant)}
    assert not literals & registered
