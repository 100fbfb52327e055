"""Run identity: the run key, the run directory and the configuration pinned in ``run.json``.

A run directory holds one pipeline run's inputs and outputs (named by :func:`new_run_dir`; its
file names belong to :class:`~medml.layout.RunLayout`). ``run.json`` is written once, by
:func:`init_run`, and pins the resolved recipe, the source and the run key, so every later
step, in whatever process, pod or machine, uses the same configuration. A run key names a
run everywhere (the MLflow ``medml.run_key`` tag, S3 run directories): :func:`make_run_key` is the
one format, ``<runner>/<run id>``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medml.config import Recipe, flatten, load_recipe
from medml.data.sources import is_s3, parse_s3_uri
from medml.errors import RunError
from medml.io import read_json, safe_name, write_json, write_json_once
from medml.layout import RELATIVE, RunLayout, StepFiles
from medml.settings import Settings
from medml.tracking import Tracking

INIT_FILES = StepFiles(needs=(RELATIVE.run_json.as_posix(),),
                       produces=(RELATIVE.run_json.as_posix(),),
                       optional=(RELATIVE.run_json.as_posix(),))  # fmt: skip
"""What initialising a run reads and writes (a retried task keeps its pin)."""

CONTEXT_FILES = StepFiles(needs=(RELATIVE.run_json.as_posix(),), produces=())
"""What reading a run's pinned configuration needs."""


@dataclass(frozen=True)
class RunContext:
    """The pinned configuration of one run (the content of ``run.json``)."""

    layout: RunLayout
    recipe: Recipe
    source: str
    run_key: str
    logical_date: str

    @property
    def folds(self) -> list[int]:
        return list(range(self.recipe.split.folds))

    @property
    def location(self) -> str:
        """The run directory as every task names it: its ``s3://`` URI when this is a mirror."""
        from medml.run_store import remote_of

        return remote_of(self.layout.root) or str(self.layout.root)


def new_run_id(runner: str) -> str:
    """A run id for a runner that has none of its own: ``<runner>__<UTC time>_<random>``
    (unique even for two runs started in one second)."""
    return f"{runner}__{datetime.now(UTC):%Y%m%dT%H%M%S}_{secrets.token_hex(3)}"


def make_run_key(runner: str, run_id: str | None = None) -> str:
    """The run key (MLflow ``medml.run_key`` tag) of run ``run_id`` of ``runner`` (``cli``,
    ``dvc``, ``compare``, an Airflow DAG id …): ``<runner>/<run id>``, the run id made by
    :func:`new_run_id` when not given."""
    return f"{runner}/{safe_name(run_id or new_run_id(runner))}"


def new_run_dir(
    runner: str, logical_date: str, run_id: str | None = None, *, home: Path | None = None
) -> Path | str:
    """Default run directory: ``<runs root>/<logical date>/<run id>``.

    The runs root is :attr:`Settings.run_root` (``$MEDML_RUN_ROOT``) — a directory, or
    ``s3://bucket/prefix/`` when the workers running a run's tasks share no disk (each task
    then works on a mirror; see :mod:`medml.run_store`) — else ``<home>/runs``; an explicit
    ``home`` wins over both. Every runner names its runs here: the Airflow DAG passes its run
    id; the CLI none, and gets :func:`new_run_id`.
    """
    run_id = run_id or new_run_id(runner)
    root = Settings.from_env().run_root if home is None else ""
    if is_s3(root):
        bucket, prefix = parse_s3_uri(root)
        return f"s3://{bucket}/{prefix}{logical_date}/{safe_name(run_id)}/"
    base = Path(root).expanduser() if root else (home or Settings.from_env().home) / "runs"
    return base / logical_date / safe_name(run_id)


def init_run(
    run_dir: Path | str,
    source: str | Path,
    recipe: str | Path,
    *,
    params_file: Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    logical_date: str | None = None,
    run_key: str | None = None,
    replace: bool = False,
) -> RunContext:
    """Resolve the recipe with its overrides and pin it, with the source, in ``run.json``.

    ``run.json`` is written once: initialising an existing run directory again with the same
    settings returns it unchanged (a retried task), with other settings is an error naming the
    differences. ``replace=True`` re-pins it on purpose (the DVC stages, whose one workspace run
    directory follows ``params.yaml``). Without a ``run_key``, the run is a CLI run
    (:func:`make_run_key` of runner ``cli``).

    Raises:
        ConfigError: unknown recipe or invalid override.
        RunError: the source directory does not exist, or the run directory was initialised
            with other settings.
    """
    if is_s3(run_dir):  # pin on the mirror, then publish run.json (kept when already there)
        from medml.run_store import open_run_dir

        with open_run_dir(run_dir, INIT_FILES) as local:
            return init_run(local, source, recipe, params_file=params_file,
                            overrides=overrides, logical_date=logical_date, run_key=run_key,
                            replace=replace)  # fmt: skip
    resolved = load_recipe(recipe, params_file=params_file, overrides=overrides)
    if resolved.train.backend == "local":  # trained here: say now, not after the data steps
        from medml.models import local_weights

        local_weights(resolved.train.weights)
    layout = RunLayout(Path(run_dir).resolve())
    context = {
        "recipe": resolved.model_dump(mode="json"),
        "source": source_ref(source),
        "run_key": run_key or make_run_key("cli"),
        "logical_date": logical_date or datetime.now(UTC).date().isoformat(),
    }
    layout.root.mkdir(parents=True, exist_ok=True)
    if replace:
        write_json(layout.run_json, context)
    elif not write_json_once(layout.run_json, context):
        compare = {"recipe", "source"}
        compare |= {"run_key"} if run_key else set()
        compare |= {"logical_date"} if logical_date else set()
        _check_same_run(layout, context, compare=compare)
    return load_context(layout.root)


def source_ref(source: str | Path) -> str:
    """How run.json names ``source``: an ``s3://`` URI as given, a folder as its absolute path.

    Raises:
        RunError: the folder does not exist.
    """
    if is_s3(source):
        parse_s3_uri(str(source))  # fail early on a malformed URI; listing happens in ingest
        return str(source)
    source_path = Path(source).expanduser()
    if not source_path.is_dir():
        raise RunError(f"source directory {source} does not exist or is not a directory")
    return str(source_path.resolve())


def _check_same_run(layout: RunLayout, wanted: dict[str, Any], *, compare: set[str]) -> None:
    pinned = read_json(layout.run_json)
    flat_pinned = flatten({k: pinned.get(k) for k in compare})
    flat_wanted = flatten({k: wanted[k] for k in compare})
    differences = [f"{key}: {flat_pinned.get(key)!r} in run.json, {flat_wanted.get(key)!r} asked"
                   for key in sorted(set(flat_pinned) | set(flat_wanted))
                   if flat_pinned.get(key) != flat_wanted.get(key)]  # fmt: skip
    if differences:
        raise RunError(
            f"{layout.root} already holds a run with other settings ({'; '.join(differences[:5])}"
            f"{' …' if len(differences) > 5 else ''}); use a new run directory"
        )


def load_context(run_dir: Path | str) -> RunContext:
    """Read a run directory's pinned configuration (of an S3 run directory: on its mirror).

    Raises:
        RunError: ``run.json`` is missing (the run was not initialised).
    """
    if is_s3(run_dir):
        from medml.run_store import open_run_dir

        with open_run_dir(run_dir, CONTEXT_FILES) as local:
            return load_context(local)
    layout = RunLayout(Path(run_dir).resolve())
    if not layout.run_json.is_file():
        raise RunError(
            f"{layout.root} is not a medml run directory (no run.json); "
            "create it with `medml init` or `medml run`"
        )
    data = read_json(layout.run_json)
    return RunContext(
        layout=layout,
        recipe=Recipe.model_validate(data["recipe"]),
        source=data["source"],
        run_key=data["run_key"],
        logical_date=data["logical_date"],
    )


@contextmanager
def opened_run(run_dir: Path | str, files: StepFiles) -> Iterator[RunContext]:
    """The run's context for a step that reads and writes ``files``; for an ``s3://`` run
    directory, on the local mirror: the inputs downloaded first (the dataset too, when the
    step reads it and the source is on S3), the outputs uploaded when it succeeds
    (:mod:`medml.run_store`)."""
    from medml.data.sources import fetch_s3_prefix
    from medml.run_store import open_run_dir

    with open_run_dir(run_dir, files) as local:
        ctx = load_context(local)
        if files.reads_source and is_s3(run_dir) and is_s3(ctx.source):
            fetch_s3_prefix(ctx.source, ctx.layout.source_copy)
        yield ctx


def pipeline_run_id(ctx: RunContext, tracking: Tracking) -> str:
    """The MLflow parent run of this pipeline run (created on first use)."""
    return tracking.pipeline_run(
        ctx.recipe.registry.experiment,
        ctx.run_key,
        run_name=f"{ctx.recipe.name} {ctx.logical_date}",
        tags={
            "recipe": ctx.recipe.name,
            "logical_date": ctx.logical_date,
            "source": ctx.source,
            "run_dir": ctx.location,
        },
        params=ctx.recipe.flat_params(),
    )
