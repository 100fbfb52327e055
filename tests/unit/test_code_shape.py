"""Shape rules of the library that keep it easy to change (docs/extending.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

LIBRARY = sorted((REPO_ROOT / "medml").rglob("*.py"))
MAX_FUNCTION_LINES = 60  # without the docstring


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
    ]
    assert not too_long, f"split into named phases: {too_long}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in LIBRARY}


def _imported(path: Path) -> set[str]:
    """The other medml modules ``path`` imports anywhere: at module level, deferred inside a
    function, or under ``TYPE_CHECKING``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                anchor = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                      for a in node.names}  # fmt: skip
    return (found & MODULES.keys()) - {module}


def test_config_does_not_import_models() -> None:
    """The config is what the model builders read: ``medml.models`` may import
    ``medml.config``, never the other way (not even deferred inside a function)."""
    assert "medml.models" not in _imported(MODULES["medml.config"])


def test_no_two_modules_import_each_other() -> None:
    """Dependencies go one way: no pair of medml modules imports each other, however deferred."""
    imports = {module: _imported(path) for module, path in MODULES.items()}
    cycles = sorted({tuple(sorted((a, b))) for a in imports for b in imports[a] if a in imports[b]})
    assert not cycles, f"modules that import each other: {cycles}"


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


def test_the_environment_is_read_only_by_settings() -> None:
    """``os.environ`` appears in medml/settings.py alone (the rest gets a Settings object)."""
    offenders = []
    for path in LIBRARY:
        if path.name == "settings.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not offenders, offenders


def test_tag_names_and_artifact_paths_belong_to_their_owners() -> None:
    """Version tags are named by medml/version_tags.py and MLflow artifact paths by
    medml/layout.py: no tag-setting call or artifact download passes a literal elsewhere."""
    name_at = {"set_model_version_tag": 2, "download_artifacts": 1, "log_artifact": 1,
               "log_artifacts": -1, "log_dict": 1}  # fmt: skip
    offenders = []
    for path in LIBRARY:
        if path.name in ("version_tags.py", "layout.py", "audit.py"):  # audit: its own store
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") in name_at):
                continue
            position = name_at[node.func.attr]
            named = [k.value for k in node.keywords if k.arg in ("artifact_path", "key")]
            if len(node.args) > max(position, 1 if position < 0 else position):
                named.append(node.args[position])
            if any(isinstance(a, ast.Constant | ast.JoinedStr) for a in named):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not offenders, offenders
