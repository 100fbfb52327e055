"""The ``medml`` command line: one subcommand per step, plus synth, run and demo.

Every step subcommand works on a run directory (``--run-dir``) created by ``medml init`` (or
by ``medml run``/the Airflow DAG), and calls the same function the DAG and ``dvc.yaml`` call.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from medml import pipeline, runs, steps
from medml.config import RECIPES_DIR, recipe_dirs, recipe_files
from medml.errors import MedmlError, operational_fault
from medml.layout import RunLayout
from medml.report import summary as run_summary
from medml.report import write_run_summary
from medml.settings import Settings
from medml.steps import STEPS, Step, data_steps
from medml.tracking import Tracking, models_uri

app = typer.Typer(
    name="medml",
    help="Train, evaluate and ship image classifiers for imbalanced medical imaging data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RunDir = Annotated[Path, typer.Option("--run-dir", help="Run directory (made by `medml init`).")]
SharedRunDir = Annotated[
    str,
    typer.Option(
        "--run-dir", help="Run directory, local or s3://bucket/prefix/ (shared with pods)."
    ),
]
Source = Annotated[
    str, typer.Option("--source", help="Dataset root (any layout), or s3://bucket/prefix/.")
]
RecipeName = Annotated[
    str, typer.Option("--recipe", help="Recipe name (see `medml recipes`) or YAML path.")
]
Sets = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a setting, e.g. --set train.epochs=2 (repeatable)."),
]
NewRunDir = Annotated[
    Path | None, typer.Option("--run-dir", help="Run directory (default: under $MEDML_HOME/runs).")
]
ParamsFile = Annotated[
    Path | None, typer.Option("--params", help="YAML with overrides (e.g. params.yaml).")
]


def _fail(message: str, code: int = MedmlError.exit_code) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=code)


def _guard(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a step; a :class:`MedmlError` becomes one line and its exit code (see
    :mod:`medml.errors`); any other exception is a bug and keeps its traceback."""
    try:
        return fn(*args, **kwargs)
    except MedmlError as err:
        raise _fail(str(err), err.exit_code) from None
    except Exception as err:  # a full disk, a denied permission, S3 lost: one line; else a bug
        fault = operational_fault(err)
        if fault is None:
            raise
        raise _fail(str(fault), fault.exit_code) from None


def _tracking() -> Tracking:
    return Tracking.from_env()


TrackingUri = Annotated[
    str | None,
    typer.Option("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else "
                 "$MEDML_HOME/mlflow.db).", envvar="MLFLOW_TRACKING_URI"),
]  # fmt: skip


def _existing_store(uri: str | None) -> Tracking:
    """The store the lifecycle commands read; refuses to create an empty one by accident.

    With no store named (no ``--tracking-uri``, no ``MLFLOW_TRACKING_URI``) and none in the
    home, the demo's store (``<home>/demo/mlflow.db``, made by ``make demo``) is used, and the
    command says so."""
    tracking = Tracking.from_env(uri=uri)
    settings = Settings.from_env()
    demo = settings.home / "demo" / "mlflow.db"
    named = uri or settings.tracking_uri
    if not named and not (settings.home / "mlflow.db").is_file() and demo.is_file():
        tracking = Tracking.from_env(uri=f"sqlite:///{demo}")
        typer.secho(f"using the demo's MLflow store {tracking.uri} (--tracking-uri for another)",
                    err=True)  # fmt: skip
    _guard(tracking.require_existing)
    return tracking


def _latest_run_dir() -> Path:
    """The most recently initialised run directory under the home (``runs/``, or the demo's
    ``demo/runs/``), for commands given no ``--run-dir``."""
    home = Settings.from_env().home
    pinned = [*home.glob("runs/*/*/run.json"), *home.glob("demo/runs/*/*/run.json")]
    if not pinned:
        raise _fail(f"no runs under {home}/runs or {home}/demo/runs; give --run-dir")
    latest = max(pinned, key=lambda path: path.stat().st_mtime).parent
    typer.secho(f"latest run: {latest}", err=True)
    return latest


def _echo_result(result: dict[str, Any]) -> None:
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command()
def recipes(
    keys: Annotated[
        bool, typer.Option("--keys", help="Print every recipe key (type, default, meaning).")
    ] = False,
    write: Annotated[
        Path | None,
        typer.Option(help="With --keys: replace the reference between its markers in this file."),
    ] = None,
) -> None:
    """List the recipes: the shipped ones, then those in $MEDML_HOME/recipes (with their path).

    With --keys, the reference of every recipe key instead (as in docs/recipes.md).
    """
    if keys:
        from medml.recipe_keys import reference_markdown, write_reference

        if write is None:
            typer.echo(reference_markdown(), nl=False)
        else:
            changed = _guard(write_reference, write)
            typer.echo(f"{write}: {'updated' if changed else 'already up to date'}")
        return
    found = recipe_files()
    for name, path in sorted(found.items()):
        typer.echo(name if path.parent == RECIPES_DIR else f"{name}  ({path})")
    for folder in recipe_dirs()[1:]:
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            if path.is_file() and found[path.stem] != path:
                typer.secho(f"{path} is not used: {found[path.stem]} has its name", err=True)


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="Directory to create (must be new or empty).")],
    recipe: RecipeName = "kidney-ct",
    n: Annotated[int, typer.Option("--n", help="Number of labelled images.", min=1)] = 600,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same files).")] = 0,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels.", min=32)] = 128,
    layout: Annotated[
        str | None,
        typer.Option(help="class_folders | split_folders | csv | dicom (default: the recipe's)."),
    ] = None,
) -> None:
    """Write a synthetic phantom dataset shaped like the recipe's dataset.

    A shipped recipe gets its own phantom; any other recipe (a name in $MEDML_HOME/recipes or
    a YAML path) a generic one with its classes, layout, CSV columns and channels.
    """
    from medml.config import load_recipe
    from medml.data.synthetic import synthesize

    chosen = _guard(load_recipe, recipe)
    result = _guard(synthesize, chosen, out, layout=layout, n=n, seed=seed, image_size=size)
    patients = f" of {result.patients} synthetic patients" if result.patients else ""
    typer.echo(
        f"wrote {sum(result.counts.values())} labelled images{patients} to {result.root}: "
        f"{result.counts}"
    )


@app.command()
def init(
    run_dir: RunDir,
    source: Source,
    recipe: RecipeName,
    params: ParamsFile = None,
    set_: Sets = None,
    logical_date: Annotated[
        str | None, typer.Option(help="Data snapshot date (YYYY-MM-DD).")
    ] = None,
    run_key: Annotated[
        str | None, typer.Option(help="Stable id of this run (default: generated).")
    ] = None,
) -> None:
    """Create a run directory: pin the recipe, overrides and source in run.json."""
    ctx = _guard(
        runs.init_run,
        run_dir,
        source,
        recipe,
        params_file=params,
        overrides=set_ or [],
        logical_date=logical_date,
        run_key=run_key,
    )
    typer.echo(f"initialised {ctx.layout.root} (recipe {ctx.recipe.name}, run key {ctx.run_key})")


OptSource = Annotated[
    str | None,
    typer.Option("--source", help="Dataset root; with --recipe, (re)initialises the run dir."),
]
OptRecipe = Annotated[
    str | None,
    typer.Option("--recipe", help="Recipe; with --source, (re)initialises the run dir (DVC)."),
]


def _pin_for_dvc(
    run_dir: Path, source: str | None, recipe: str | None, params: Path | None,
    set_: list[str] | None,
) -> None:  # fmt: skip
    """With --source/--recipe (how dvc.yaml calls every step), re-pin run.json to the current
    params.yaml first, so a stage re-run by `dvc repro`/`dvc exp run` uses the new settings."""
    if (source is None) != (recipe is None):
        raise _fail("--source and --recipe go together (or give neither to use run.json)")
    if source is None or recipe is None:
        return
    from medml.config import load_recipe

    wanted = _guard(load_recipe, recipe, params_file=params, overrides=set_ or [])
    existing = RunLayout(Path(run_dir)).run_json
    pinned = _guard(runs.load_context, run_dir) if existing.is_file() else None
    # Same settings and source: the same run (its MLflow run and version); else a new run.
    same = (pinned is not None and pinned.recipe == wanted
            and pinned.source == _guard(runs.source_ref, source))  # fmt: skip
    key = pinned.run_key if same else runs.make_run_key("dvc")
    _guard(
        runs.init_run,
        run_dir,
        source,
        recipe,
        params_file=params,
        overrides=set_ or [],
        run_key=key,
        replace=True,  # DVC's workspace run directory follows params.yaml
    )


def _data_command(data_step: Step) -> None:
    """Register a data step's subcommand (the same options for all four: DVC passes them)."""

    def command(
        run_dir: RunDir,
        source: OptSource = None,
        recipe: OptRecipe = None,
        params: ParamsFile = None,
        set_: Sets = None,
    ) -> None:
        _pin_for_dvc(run_dir, source, recipe, params, set_)
        _echo_result(_guard(data_step, run_dir))

    app.command(data_step.name, help=data_step.help)(command)


for _data_step in data_steps():
    _data_command(_data_step)


@app.command(STEPS["train"].name, help=STEPS["train"].help)
def train(
    run_dir: SharedRunDir,
    fold: Annotated[
        int | None,
        typer.Option(
            "--fold", help="Fold to hold out for validation (default: every fold).", min=0
        ),
    ] = None,
    no_tracking: Annotated[bool, typer.Option(help="Do not log to MLflow.")] = False,
    source: OptSource = None,
    recipe: OptRecipe = None,
    params: ParamsFile = None,
    set_: Sets = None,
) -> None:
    if not str(run_dir).startswith("s3://"):
        _pin_for_dvc(Path(run_dir), source, recipe, params, set_)
    tracking = None if no_tracking else _tracking()
    folds = [fold] if fold is not None else _guard(runs.load_context, run_dir).folds
    for k in folds:
        _echo_result(_guard(steps.train, run_dir, k, tracking))


@app.command(STEPS["evaluate"].name, help=STEPS["evaluate"].help)
def evaluate(
    run_dir: RunDir, source: OptSource = None, recipe: OptRecipe = None,
    params: ParamsFile = None, set_: Sets = None,
) -> None:  # fmt: skip
    _pin_for_dvc(run_dir, source, recipe, params, set_)
    _echo_result(_guard(steps.evaluate, run_dir, _tracking()))


@app.command(STEPS["register"].name, help=STEPS["register"].help)
def register(
    run_dir: RunDir, source: OptSource = None, recipe: OptRecipe = None,
    params: ParamsFile = None, set_: Sets = None,
) -> None:  # fmt: skip
    _pin_for_dvc(run_dir, source, recipe, params, set_)
    _echo_result(_guard(steps.register, run_dir, _tracking()))


@app.command()
def summary(
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Run directory (default: the latest run).")
    ] = None,
) -> None:
    """Print a run's holdout metrics per class and its registered version."""
    typer.echo(_guard(run_summary, run_dir or _latest_run_dir()))


def _new_run(
    kind: str,
    run_dir: Path | None,
    source: str,
    recipe: str,
    params: Path | None,
    set_: list[str] | None,
    logical_date: str | None = None,
) -> runs.RunContext:
    """Initialise a run directory (default: :func:`medml.runs.new_run_dir`)."""
    date = logical_date or datetime.now(UTC).date().isoformat()
    run_id = runs.new_run_id(kind)  # a given run directory keeps the key pinned in it
    target = run_dir or runs.new_run_dir(kind, date, run_id)
    return _guard(runs.init_run, target, source, recipe, params_file=params,
                  run_key=None if run_dir else runs.make_run_key(kind, run_id),
                  overrides=set_ or [], logical_date=date)  # fmt: skip


@app.command()
def run(
    source: Source,
    recipe: RecipeName,
    params: ParamsFile = None,
    set_: Sets = None,
    run_dir: NewRunDir = None,
    logical_date: Annotated[
        str | None, typer.Option(help="Data snapshot date (YYYY-MM-DD).")
    ] = None,
) -> None:
    """Run every step in this process (no Airflow needed) and print the summary."""
    ctx = _new_run("cli", run_dir, source, recipe, params, set_, logical_date)
    _guard(pipeline.run_all, ctx, _tracking(), echo=typer.echo)
    typer.echo("")
    typer.echo(write_run_summary(ctx.layout.root).read_text())


@app.command("compare")
def compare_cmd(
    source: Source,
    recipe: RecipeName,
    experiments: Annotated[
        Path | None,
        typer.Option(help="YAML with an 'experiments:' mapping: name -> {setting: value}."),
    ] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(help="key=v1,v2,... (repeat for a grid); each combination is one experiment."),
    ] = None,
    override_all: Annotated[
        list[str] | None,
        typer.Option(
            help="key=value applied to every experiment after its own settings (e.g. "
            "train.epochs=3 for a quick look); shown in the table."
        ),
    ] = None,
    params: ParamsFile = None,
    set_: Sets = None,
    run_dir: NewRunDir = None,
) -> None:
    """Train named setting sets on the same folds; print and plot their out-of-fold scores."""
    from medml.compare import compare, format_table, grid_experiments, read_experiments
    from medml.config import flatten, parse_overrides

    chosen = {**(read_experiments(experiments) if experiments else {}),
              **grid_experiments(grid or [])}  # fmt: skip
    if not chosen:
        raise _fail("give --experiments FILE and/or --grid key=v1,v2")
    forced = flatten(_guard(parse_overrides, override_all or []))
    chosen = {name: {**settings, **forced} for name, settings in chosen.items()}
    ctx = _new_run("compare", run_dir, source, recipe, params, set_)
    _guard(pipeline.run_data_steps, ctx, echo=lambda _: None)
    table = _guard(compare, ctx, chosen, tracking=_tracking(), echo=typer.echo)
    typer.echo("\nOut-of-fold scores on the same folds (holdout not used):")
    typer.echo(format_table(table, "experiment"))
    csv, png = ctx.layout.compare_outputs("compare")
    typer.echo(
        f"\nsaved {csv}, {png} and the learning curves {ctx.layout.compare_curves('compare')}"
    )


@app.command("compare-balancing")
def compare_balancing_cmd(
    source: Source,
    recipe: RecipeName,
    params: ParamsFile = None,
    set_: Sets = None,
    strategies: Annotated[
        str | None, typer.Option(help="Comma-separated strategies (default: all).")
    ] = None,
    run_dir: NewRunDir = None,
) -> None:
    """Train every balancing strategy on the same folds; print out-of-fold scores."""
    from medml.compare import compare_balancing, format_table

    ctx = _new_run("compare", run_dir, source, recipe, params, set_)
    _guard(pipeline.run_data_steps, ctx, echo=lambda _: None)
    chosen = [s.strip() for s in strategies.split(",")] if strategies else None
    table = _guard(compare_balancing, ctx, strategies=chosen, tracking=_tracking(), echo=typer.echo)
    typer.echo("\nOut-of-fold scores on the same folds (holdout not used):")
    typer.echo(format_table(table))
    curves = ctx.layout.compare_curves("compare_balancing")
    typer.echo(f"\nsaved {ctx.layout.compare_table} and the learning curves {curves}")


ModelName = Annotated[str, typer.Argument(help="Registered model name, e.g. kidney-ct-classifier.")]
Reason = Annotated[str, typer.Option("--reason", help="Why (recorded in the audit).")]


@app.command("review")
def review_cmd(
    model: ModelName,
    version: Annotated[
        str | None, typer.Option(help="Version to review (default: challenger).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="HTML report path (default: $MEDML_HOME/reviews/).")
    ] = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Compare a version (default: the challenger) with the champion; write an HTML report."""
    from medml.review import review

    text, path = _guard(review, _existing_store(tracking_uri), model, version, out)
    typer.echo(text)
    typer.echo(f"\nreport: {path}")


def _as_actor(action: Callable[..., dict[str, Any]], tracking: Tracking, *args: Any,
              **kwargs: Any) -> dict[str, Any]:  # fmt: skip
    """Run a governed ``action`` as the CLI's authenticated identity
    (:func:`medml.identity.cli_identity`), with the deployment's settings."""
    from medml.identity import cli_identity

    def act() -> dict[str, Any]:
        settings = Settings.from_env()
        for warning in settings.ignored_warnings():
            typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
        actor = cli_identity(settings, tracking.uri)
        return action(tracking, *args, reviewer=actor.name, identity=actor.source,
                      settings=settings, **kwargs)  # fmt: skip

    return _guard(act)


@app.command("promote")
def promote_cmd(
    model: ModelName,
    version: Annotated[str, typer.Option("--version", help="Version to make champion.")],
    reason: Reason,
    override_gate: Annotated[
        str | None,
        typer.Option(help="Promote although the gate failed; the reason (allowed users only)."),
    ] = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Move alias `champion` to a version (the old one stays as `previous-champion`), audited
    with your authenticated identity: the MLflow server's user, or your OS user where the
    deployment's policy allows local-admin mode."""
    from medml.promotion import promote

    event = _as_actor(promote, _existing_store(tracking_uri), model, version, reason=reason,
                      override_gate=override_gate)  # fmt: skip
    typer.echo(
        f"{model}: champion -> v{event['version']} (previous: {event['previous_champion']}) "
        f"by {event['reviewer']} ({event['identity']}) at {event['at']} (audit event "
        f"#{event['seq']})"
    )


@app.command("rollback")
def rollback_cmd(model: ModelName, reason: Reason, tracking_uri: TrackingUri = None) -> None:
    """Restore the previous champion, audited with your authenticated identity."""
    from medml.promotion import rollback

    event = _as_actor(rollback, _existing_store(tracking_uri), model, reason=reason)
    typer.echo(f"{model}: champion -> v{event['version']} (rolled back from v{event['demoted']})")


audit_app = typer.Typer(help="The registry's append-only, hash-chained audit trail.",
                        no_args_is_help=True)  # fmt: skip
app.add_typer(audit_app, name="audit")


@audit_app.command("log")
def audit_log_cmd(model: ModelName, tracking_uri: TrackingUri = None) -> None:
    """Print a model's audit events, oldest first."""
    from medml.promotion import audit_log

    for event in _guard(audit_log, _existing_store(tracking_uri), model):
        who = event.get("reviewer") or event.get("registrar", "?")
        what = event.get("reason") or f"gate {event.get('gate', '?')}, run {event.get('run_id')}"
        typer.echo(f"#{event['seq']} {event['at']} {event['event']} v{event['version']} "
                   f"by {who} ({event.get('identity', '?')}): {what}")  # fmt: skip


@audit_app.command("seal")
def audit_seal_cmd(model: ModelName, reason: Reason, tracking_uri: TrackingUri = None) -> None:
    """Vouch, with the deployment's key, for a trail's unkeyed events (written before
    MEDML_AUDIT_KEY was set), after checking them with `medml audit log`."""
    from medml.promotion import seal

    event = _as_actor(seal, _existing_store(tracking_uri), model, reason=reason)
    typer.echo(f"{model}: events #1 to #{event['sealed_through']} sealed by {event['reviewer']} "
               f"(audit event #{event['seq']})")  # fmt: skip


@audit_app.command("verify")
def audit_verify_cmd(model: ModelName, tracking_uri: TrackingUri = None) -> None:
    """Recompute the hash chain and check the champion against it; exit 6 naming each
    edited, deleted or reordered event, or a champion moved outside the reviewed path."""
    from medml.audit import verify
    from medml.errors import AuditBroken
    from medml.promotion import UnreviewedChampion, champion_problem, verified_model

    def check() -> str:
        tracking = _existing_store(tracking_uri)
        report = verify(tracking, model)
        if not report.intact:  # a broken chain backs no champion: its breaks come first
            raise AuditBroken(f"{model}: the audit trail is broken: " + "; ".join(report.problems))
        champion, moved = champion_problem(tracking, model)
        if moved:
            raise AuditBroken(f"{model}: the champion is not backed by the audit trail: {moved}")
        warnings = list(report.warnings)
        if champion is not None:
            try:  # the served model's files, byte for byte the registered ones
                verified_model(tracking, model, champion, warnings)
            except UnreviewedChampion as err:
                raise AuditBroken(str(err)) from None
        for warning in warnings:
            typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
        return f"{model}: {report.events} audit events, hash chain intact"

    typer.echo(_guard(check))


@app.command("predict")
def predict_cmd(
    model: Annotated[str, typer.Option("--model", help="NAME@alias or NAME/version.")],
    source: Annotated[Path, typer.Option("--source", help="Folder of images or a CSV (filename).")],
    out: Annotated[Path, typer.Option("--out", help="Predictions CSV to write.")] = Path(
        "predictions.csv"
    ),
    image_dir: Annotated[Path | None, typer.Option(help="Where a CSV's files are.")] = None,
    tracking_uri: TrackingUri = None,
    allow_unreviewed: Annotated[
        bool,
        typer.Option(
            "--allow-unreviewed",
            help="Use NAME@champion even when no valid promotion event in "
            "the audit trail backs it (warns instead of refusing).",
        ),
    ] = False,
) -> None:
    """Predict with a registered model: class and probabilities per image, as CSV.

    ``NAME@champion`` is refused (exit 5) when the audit trail does not back the alias."""
    from medml.predict import predict

    tracking = _existing_store(tracking_uri)
    result = _guard(predict, models_uri(model), source, out, tracking=tracking,
                    image_dir=image_dir, allow_unreviewed=allow_unreviewed)  # fmt: skip
    if result.warning:
        typer.secho(f"warning: {result.warning}", err=True, fg=typer.colors.YELLOW)
    if result.images and result.failed == result.images:
        raise _fail(f"none of the {result.images} files could be read (the error column of "
                    f"{result.out} says why for each)")  # fmt: skip
    typer.echo(
        f"wrote {result.images} predictions to {result.out}"
        + (
            f" ({result.failed} files could not be read; see the error column)"
            if result.failed
            else ""
        )
    )


@app.command("serve")
def serve_cmd(
    model: Annotated[str, typer.Option("--model", help="NAME@alias or NAME/version.")],
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5001,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    tracking_uri: TrackingUri = None,
    allow_unreviewed: Annotated[
        bool,
        typer.Option(
            "--allow-unreviewed",
            help="Serve NAME@champion even when no valid "
            "promotion event backs it (warns instead of refusing).",
        ),  # fmt: skip
    ] = False,
) -> None:
    """Serve a registered model over HTTP with MLflow's scoring server (`/invocations`).

    ``NAME@champion`` is checked against the audit trail first (exit 5 when it is not backed)
    and the checked version is what is served (``models:/NAME/<version>``), so the alias cannot
    move between the check and the load. (`mlflow models serve -m models:/NAME@champion`
    directly skips that check.)"""
    import os
    import sys

    from medml.promotion import reviewed_model_uri

    tracking = _existing_store(tracking_uri)
    uri, warning = _guard(reviewed_model_uri, models_uri(model), tracking,
                          allow_unreviewed=allow_unreviewed)  # fmt: skip
    if warning:
        typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
    typer.echo(f"serving {uri} on http://{host}:{port}/invocations")
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    from medml.settings import process_environment

    environment = {**process_environment(), "MLFLOW_TRACKING_URI": tracking.uri}
    os.execve(mlflow, [mlflow, "models", "serve", "-m", uri, "--env-manager", "local",
                       "-h", host, "-p", str(port)], environment)  # fmt: skip


@app.command()
def demo(
    workdir: Annotated[
        Path, typer.Option(help="Where data, runs, MLflow and Airflow state go.")
    ] = Path(".medml/demo"),
    n: Annotated[int, typer.Option("--n", help="Phantom images to generate.", min=40)] = 1200,
    seed: Annotated[int, typer.Option(help="Phantom seed.")] = 0,
    set_: Sets = None,
) -> None:
    """Synthesise a kidney-CT phantom set and run the medml_retrain DAG with `airflow dags test`."""
    from medml import local_airflow
    from medml.data.synthetic import synth_kidney_ct

    workdir = workdir.resolve()
    data = workdir / "data" / "kidney-ct"
    if data.exists():
        shutil.rmtree(data)
    result = _guard(synth_kidney_ct, data, n=n, seed=seed)
    typer.echo(f"[demo] phantom dataset: {result.counts} ({result.patients} patients) in {data}")
    now = datetime.now(UTC).replace(microsecond=0)
    logical_date = now.isoformat()  # a timestamp: the run's duration is its real duration
    env = local_airflow.airflow_env(workdir)
    run_dir = runs.new_run_dir("demo", now.date().isoformat(), home=workdir)
    airflow = local_airflow.airflow_executable()
    log = workdir / "airflow-dags-test.log"
    typer.echo(f"[demo] airflow db migrate (AIRFLOW_HOME={env['AIRFLOW_HOME']})")
    _guard(local_airflow.run_logged, [airflow, "db", "migrate"], env, log, mode="w")
    conf = {"source": str(data), "recipe": "kidney-ct", "run_dir": str(run_dir),
            "overrides": list(set_ or [])}  # fmt: skip
    typer.echo(f"[demo] airflow dags test medml_retrain {logical_date} --use-executor (log: {log})")
    progress = local_airflow.DagTestProgress()
    with local_airflow.api_server(env) as executor_env:  # tasks run (and log) as in production
        try:
            _guard(
                local_airflow.run_logged,
                [airflow, "dags", "test", "medml_retrain", logical_date, "--use-executor",
                 "-c", json.dumps(conf)],
                executor_env, log, mode="a", progress=progress, echo=typer.echo,
            )  # fmt: skip
        finally:
            for line in progress.unreported(executor_env, "medml_retrain"):
                typer.echo(line)
    if not RunLayout(run_dir).registry.registration.is_file():
        raise _fail(f"the DAG run did not register a model; see {log}")
    typer.echo("")
    typer.echo(run_summary(run_dir))
    bin_dir = Path(local_airflow.airflow_executable()).parent
    typer.echo(f"\nMLflow UI:  PATH={bin_dir}:$PATH mlflow ui --backend-store-uri "
               f"{env['MLFLOW_TRACKING_URI']}")  # fmt: skip
    typer.echo(f"Review:     {bin_dir}/medml review kidney-ct-classifier --tracking-uri "
               f"{env['MLFLOW_TRACKING_URI']}")  # fmt: skip
    typer.echo(f"Airflow UI: make airflow-ui   (or: medml airflow-ui --workdir {workdir})")


@app.command("airflow-ui")
def airflow_ui(
    workdir: Annotated[Path, typer.Option(help="The demo's workdir.")] = Path(".medml/demo"),
    port: Annotated[int, typer.Option(help="Port of the UI on 127.0.0.1.")] = 8080,
) -> None:
    """Open the demo's Airflow: medml's DAGs, the Models view, the demo runs and their logs.

    Runs Airflow's API server (on 127.0.0.1 only), scheduler, DAG processor and triggerer until
    Ctrl-C or SIGTERM, or until one of them exits; then stops them all.
    """
    from medml import local_airflow

    workdir = workdir.resolve()
    if not (workdir / "airflow" / "airflow.db").is_file():
        raise _fail(f"no demo Airflow in {workdir}; run `make demo` first")
    ready = (f"Airflow UI on http://127.0.0.1:{port} (login: admin; the password is generated "
             f"on the API server's first start and kept in {workdir}/airflow/"
             "simple_auth_manager_passwords.json.generated). Ctrl-C stops it.")  # fmt: skip
    code = _guard(local_airflow.serve_ui, workdir, port, on_ready=lambda: typer.echo(ready),
                  echo=typer.echo)  # fmt: skip
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point (quiet defaults for TF and MLflow progress output)."""
    from medml.errors import stop_on_sigterm
    from medml.settings import set_library_defaults

    set_library_defaults()
    stop_on_sigterm()  # a killed pod or task ends its MLflow run KILLED, not RUNNING forever
    app()


if __name__ == "__main__":
    main()
