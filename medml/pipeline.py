"""The lifecycle wiring shared by every runner: a run directory and one function per step.

A run directory holds one pipeline run's inputs and outputs (named by :func:`new_run_dir`;
its file names belong to :class:`~medml.layout.RunLayout`). ``run.json`` is written once, by
:func:`init_run`, and pins the resolved recipe, the source and the run key, so every later
step, in whatever process, pod or machine, uses the same configuration. Each ``step_*``
function reads its inputs from the layout, calls one pure step function and returns a small
JSON-friendly dict (for XCom and the CLI). The CLI, ``dvc.yaml`` and the Airflow DAG call
exactly these functions.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from medml.config import Recipe, flatten, load_recipe
from medml.data.sources import fetch_s3_prefix, is_s3, parse_s3_uri
from medml.errors import RunError
from medml.io import (
    atomic_path,
    medml_home,
    read_json,
    require_complete,
    safe_name,
    write_json,
    write_json_once,
)
from medml.layout import RELATIVE, EvaluationFiles, RunLayout, step_files
from medml.metrics import OUT_OF_FOLD, HoldoutMetrics
from medml.tracking import Tracking

STEPS = ("ingest", "validate", "split", "preprocess", "train", "evaluate", "register")


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


def init_run(
    run_dir: Path,
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
    directory follows ``params.yaml``).

    Raises:
        ConfigError: unknown recipe or invalid override.
        RunError: the source directory does not exist, or the run directory was initialised
            with other settings.
    """
    if is_s3(run_dir):  # pin on the mirror, then publish run.json (kept when already there)
        from medml.run_store import open_run_dir

        with open_run_dir(run_dir, step_files("init")) as local:
            return init_run(local, source, recipe, params_file=params_file,
                            overrides=overrides, logical_date=logical_date, run_key=run_key,
                            replace=replace)  # fmt: skip
    resolved = load_recipe(recipe, params_file=params_file, overrides=overrides)
    layout = RunLayout(Path(run_dir).resolve())
    now = datetime.now(UTC)
    context = {
        "recipe": resolved.model_dump(mode="json"),
        "source": _source_ref(source),
        "run_key": run_key or f"{resolved.name}-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}",
        "logical_date": logical_date or now.date().isoformat(),
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


def _source_ref(source: str | Path) -> str:
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


def new_run_dir(
    kind: str, logical_date: str, run_id: str | None = None, *, home: Path | None = None
) -> Path | str:
    """Default run directory: ``<runs root>/<logical date>/<run id>``.

    The runs root is ``$MEDML_RUN_ROOT`` — a directory, or ``s3://bucket/prefix/`` when the
    workers running a run's tasks share no disk (each task then works on a mirror; see
    :mod:`medml.run_store`) — else ``<home>/runs`` (home: ``$MEDML_HOME``; an explicit
    ``home`` wins over both). Every runner names its runs here: the Airflow DAG passes its run
    id; the CLI none, and gets ``<kind>__<UTC time>_<random>`` (unique even for two runs
    started in one second).
    """
    if run_id is None:
        run_id = f"{kind}__{datetime.now(UTC):%Y%m%dT%H%M%S}_{secrets.token_hex(3)}"
    root = os.environ.get("MEDML_RUN_ROOT", "") if home is None else ""
    if is_s3(root):
        bucket, prefix = parse_s3_uri(root)
        return f"s3://{bucket}/{prefix}{logical_date}/{safe_name(run_id)}/"
    base = Path(root).expanduser() if root else (home or medml_home()) / "runs"
    return base / logical_date / safe_name(run_id)


def run_key_for(kind: str, run_id: str) -> str:
    """The run key (MLflow ``medml.run_key`` tag) of run ``run_id`` of runner ``kind``."""
    return f"{kind}/{safe_name(run_id)}"


def load_context(run_dir: Path | str) -> RunContext:
    """Read a run directory's pinned configuration (of an S3 run directory: on its mirror).

    Raises:
        RunError: ``run.json`` is missing (the run was not initialised).
    """
    if is_s3(run_dir):
        from medml.run_store import open_run_dir

        with open_run_dir(run_dir, step_files("context")) as local:
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
def opened_run(run_dir: Path | str, step: str, *, fold: int | None = None) -> Iterator[RunContext]:
    """The run's context for one step; for an ``s3://`` run directory, on the local mirror:
    the step's inputs downloaded first (the dataset too, when the step reads it and the
    source is on S3), its outputs uploaded when it succeeds (:mod:`medml.run_store`)."""
    from medml.run_store import open_run_dir

    files = step_files(step, fold)
    with open_run_dir(run_dir, files) as local:
        ctx = load_context(local)
        if files.reads_source and is_s3(run_dir) and is_s3(ctx.source):
            fetch_s3_prefix(ctx.source, ctx.layout.source_copy)
        yield ctx


def _require(path: Path, step: str) -> Path:
    if not path.exists():
        raise RunError(f"{path} is missing; run the `{step}` step first")
    return path


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


def step_ingest(run_dir: Path | str) -> dict[str, Any]:
    """Scan the source into ``manifest.parquet``."""
    with opened_run(run_dir, "ingest") as ctx:
        return _ingest(ctx)


def _ingest(ctx: RunContext) -> dict[str, Any]:
    from medml.data.ingest import ingest, read_rows
    from medml.dvc_cache import directory_md5

    source = Path(ctx.source)
    fetched: dict[str, Any] = {}
    if is_s3(ctx.source):
        fetch = fetch_s3_prefix(ctx.source, ctx.layout.source_copy)
        source = fetch.local_dir
        fetched = {"downloaded": fetch.downloaded, "already_present": fetch.skipped}
    result = ingest(source, ctx.layout.manifest, ctx.recipe, reuse=not is_s3(ctx.source))
    hashed = read_rows(result.manifest, ["path", "md5"])
    known = dict(zip(hashed["path"], hashed["md5"], strict=True))
    snapshot = {"source": ctx.source, "dvc_md5": directory_md5(source, known)}
    write_json(ctx.layout.snapshot_json, snapshot)
    return {
        **fetched,
        "dvc_md5": snapshot["dvc_md5"],
        "manifest": str(result.manifest),
        "images": result.images,
        "class_counts": result.class_counts,
    }


def step_validate(run_dir: Path | str) -> dict[str, Any]:
    """Run the validation gate; quarantine bad files."""
    from medml.data.validate import validate

    with opened_run(run_dir, "validate") as ctx:
        result = validate(
            _require(ctx.layout.manifest, "ingest"), ctx.layout.validation.root, ctx.recipe
        )
    return {
        "images": result.images,
        "quarantined": result.quarantined,
        "class_counts": result.class_counts,
        "report": str(result.report),
    }


def step_split(run_dir: Path | str) -> dict[str, Any]:
    """Assign holdout and folds."""
    from medml.split import split

    with opened_run(run_dir, "split") as ctx:
        require_complete(ctx.layout.validation.root, "validate")
        clean = ctx.layout.validation.clean_manifest
        result = split(clean, ctx.layout.splits, ctx.recipe)
    return {
        "grouped": result.grouped,
        "test_images": result.test_size,
        "fold_sizes": result.fold_sizes,
        "folds": ctx.folds,
    }


def shards_cache_key(splits_path: Path, recipe: Recipe) -> str:
    """Run-cache key of the preprocess step: every row's bytes (sha256), label, split and fold,
    in order, plus every setting preprocessing depends on
    (:data:`~medml.preprocess.PREPROCESS_SETTINGS`). Same key, byte-identical shards."""
    import json

    from medml.preprocess import preprocess_settings

    table = pd.read_parquet(splits_path, columns=["sha256", "label", "split", "fold"])
    settings = json.dumps(preprocess_settings(recipe), sort_keys=True)
    digest = hashlib.sha256(b"medml preprocess\n" + settings.encode())
    digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def step_preprocess(run_dir: Path | str, cache_dir: Path | None = None) -> dict[str, Any]:
    """Decode and resize into shards, restored from DVC's cache when the inputs are unchanged.

    The shards are saved as DVC objects in a DVC cache (default ``$MEDML_DVC_CACHE`` or
    ``$MEDML_HOME/dvc-cache``; see :mod:`medml.dvc_cache`) with a run-cache entry keyed by
    :func:`shards_cache_key`, so re-running a date, back-filling again or two runs on the same
    snapshot decode the images once; later runs check the shards out of the cache (hard links).
    """
    with opened_run(run_dir, "preprocess") as ctx:
        return _preprocess(ctx, cache_dir)


def _preprocess(ctx: RunContext, cache_dir: Path | None) -> dict[str, Any]:
    from medml.dvc_cache import DvcCache
    from medml.preprocess import preprocess

    splits = _require(ctx.layout.splits, "split")
    key = shards_cache_key(splits, ctx.recipe)
    cache = DvcCache(cache_dir)
    cached = cache.lookup(key)
    if cached is not None:
        cache.checkout(cached["hash"], ctx.layout.shards)
        outcome = {"images": cached["images"], "shards": cached["shards"], "cache": "hit"}
        digest = cached["hash"]
    else:
        result = preprocess(splits, ctx.layout.shards, ctx.recipe)
        digest = cache.save(
            ctx.layout.shards, key, step="preprocess", images=result.images, shards=result.shards
        )
        outcome = {"images": result.images, "shards": result.shards, "cache": "miss"}
    outcome |= {"shards_dir": str(ctx.layout.shards), "cache_key": key, "dvc_md5": digest}
    write_json(ctx.layout.preprocess_json, outcome)
    return outcome


def step_train(run_dir: Path | str, fold: int, tracking: Tracking | None = None) -> dict[str, Any]:
    """Train one fold (logged to MLflow when ``tracking`` is given).

    ``run_dir`` may be an ``s3://`` run directory (a training pod's view): the run's
    ``run.json`` and shards are mirrored locally first and the fold's outputs uploaded after.
    """
    from medml.train import train_fold

    with _tracking_guard(tracking), opened_run(run_dir, "train", fold=fold) as ctx:
        parent = pipeline_run_id(ctx, tracking) if tracking else None
        result = train_fold(
            require_complete(ctx.layout.shards, "preprocess"),
            fold,
            ctx.layout.fold(fold).root,
            ctx.recipe,
            tracking=tracking,
            parent_run_id=parent,
            run_key=ctx.run_key,
        )
        if tracking is not None and result.mlflow_run_id and ctx.layout.snapshot_json.is_file():
            with tracking.run(run_id=result.mlflow_run_id):
                log_datasets(ctx, {"train": "training"})
    return result.as_dict()


def step_share_with_pods(run_dir: Path | str) -> str:
    """Upload what the fold pods need (``run.json`` and the shards) to the S3 run store.

    The store is ``train.kubernetes.run_store`` or ``$MEDML_RUN_STORE``; the run lands at
    ``<store>/runs/<logical date>/<run key>/`` and its URI is remembered in ``remote.json``.
    A run directory already on S3 is shared as it is.

    Raises:
        RunError: no run store is configured.
    """
    from medml.run_store import push, run_uri

    if is_s3(run_dir):
        return str(run_dir)
    ctx = load_context(run_dir)
    store = ctx.recipe.train.kubernetes.run_store or os.environ.get("MEDML_RUN_STORE")
    if not store:
        raise RunError(
            "the kubernetes backend needs an S3 run store shared with the pods: set "
            "train.kubernetes.run_store (e.g. s3://medml-runs/) or $MEDML_RUN_STORE"
        )
    uri = run_uri(store, ctx.logical_date, safe_name(ctx.run_key))
    push(ctx.layout.root, uri, step_files("train").needs)
    write_json(ctx.layout.remote_json, {"uri": uri})
    return uri


def step_collect_folds(run_dir: Path | str) -> dict[str, Any]:
    """Download the fold models the pods wrote to the S3 run directory into ``run_dir`` (a run
    directory on S3 already has them: evaluate downloads them)."""
    from medml.run_store import pull

    ctx = load_context(run_dir)
    if is_s3(run_dir):
        return {"uri": str(run_dir), "folds": [RELATIVE.fold(k).root.as_posix() for k in ctx.folds]}
    uri = read_json(_require(ctx.layout.remote_json, "share_with_pods"))["uri"]
    pull(uri, ctx.layout.root, [RELATIVE.fold(k).root.as_posix() for k in ctx.folds])
    return {"uri": uri, "folds": [str(p) for p in ctx.layout.fold_models(len(ctx.folds))]}


def step_evaluate(run_dir: Path | str, tracking: Tracking | None = None) -> dict[str, Any]:
    """Score the fold ensemble on the holdout."""
    with _tracking_guard(tracking), opened_run(run_dir, "evaluate") as ctx:
        return _evaluate(ctx, tracking)


def _evaluate(ctx: RunContext, tracking: Tracking | None) -> dict[str, Any]:
    from medml.evaluate import evaluate
    from medml.overview import write_overview

    for fold in ctx.folds:
        require_complete(ctx.layout.fold(fold).root, f"train --fold {fold}")
    models = ctx.layout.fold_models(len(ctx.folds))
    parent = pipeline_run_id(ctx, tracking) if tracking else None
    result = evaluate(
        ctx.layout.shards, models, ctx.layout.evaluation.root, ctx.recipe,
        tracking=tracking, parent_run_id=parent,
    )  # fmt: skip
    write_overview(ctx.layout.shards, ctx.layout.overview, ctx.recipe)  # TF is loaded by now
    if tracking is not None and parent is not None:  # the data gate's report travels with the run
        client = tracking.activate()
        client.log_artifacts(parent, str(ctx.layout.validation.root), "validation")
        if ctx.layout.overview.is_dir():
            client.log_artifacts(parent, str(ctx.layout.overview), "overview")
        with tracking.run(run_id=parent):
            log_datasets(ctx, {"train": "training", "test": "holdout"})
    return {"metrics": str(result.metrics_path), **result.metrics.overall}


def step_register(run_dir: Path | str, tracking: Tracking) -> dict[str, Any]:
    """Gate (thresholds + non-inferiority to the champion), register, alias ``challenger``."""
    with _tracking_guard(tracking), opened_run(run_dir, "register") as ctx:
        return _register(ctx, tracking)


def _register(ctx: RunContext, tracking: Tracking) -> dict[str, Any]:
    from medml.calibration import ServingCalibration
    from medml.registry import champion_on_holdout, register_ensemble

    layout = ctx.layout
    require_complete(layout.evaluation.root, "evaluate")
    metrics = HoldoutMetrics.read(layout.evaluation.metrics)
    evaluation = evaluation_facts(layout.evaluation)
    files, labels = holdout_files(_require(layout.splits, "split"))
    champion = (  # cross-validation only: no images the champion could be scored on fairly
        champion_on_holdout(
            tracking, ctx.recipe.registry.model_name, files, labels, ctx.recipe.data.classes
        )
        if len(labels)
        else None
    )
    registration = register_ensemble(
        layout.fold_models(ctx.recipe.split.folds), metrics, layout.registry.root, ctx.recipe,
        tracking=tracking, parent_run_id=pipeline_run_id(ctx, tracking),
        tags={"data_hash": _snapshot_hash(layout), "logical_date": ctx.logical_date,
              "run_key": ctx.run_key, "run_dir": ctx.location},
        champion=champion, calibration=ServingCalibration.from_evaluation(evaluation),
        card_facts={"split_report": read_json(layout.split_report), "evaluation": evaluation,
                    "validation_report": read_json(layout.validation.report)},
    )  # fmt: skip
    return registration.as_dict()


def _evaluation_summary(files: EvaluationFiles) -> list[str]:
    if not files.calibration.is_file():
        return []
    facts = evaluation_facts(files)
    oof, calibration = facts["oof_metrics"]["overall"], facts["calibration"]
    held_out = calibration["holdout_ece_before"] is not None
    where = "holdout" if held_out else "out-of-fold"
    ece = "holdout_ece" if held_out else "oof_ece"
    lines = [
        f"  calibration: T={calibration['temperature']:.3f} (fitted out-of-fold) | {where} "
        f"ECE {calibration[f'{ece}_before']:.3f} -> {calibration[f'{ece}_after']:.3f}",
    ]
    if held_out:
        lines.insert(
            0,
            f"  out-of-fold (n={oof['n']}, training images): balanced accuracy "
            f"{oof['balanced_accuracy']:.3f} | macro-F1 {oof['macro_f1']:.3f}",
        )
    point = facts.get("operating_point")
    if point:
        rates = point["holdout"] or point["oof"]
        lines.append(f"  operating point {point['positive_class']} >= {point['threshold']:.3f} "
                     f"(OOF sensitivity >= {point['target_sensitivity']:.2f}): {where} sensitivity "
                     f"{_fmt(rates['sensitivity'])} specificity {_fmt(rates['specificity'])} "
                     f"PPV {_fmt(rates['ppv'])}")  # fmt: skip
    return lines


def evaluation_facts(files: EvaluationFiles) -> dict[str, Any]:
    """Calibration, out-of-fold metrics and (binary) operating point of an evaluation folder."""
    facts = {"calibration": read_json(files.calibration),
             "oof_metrics": read_json(files.oof_metrics)}  # fmt: skip
    if files.operating_point.is_file():
        facts["operating_point"] = read_json(files.operating_point)
    return facts


def holdout_files(splits_path: Path) -> tuple[pd.DataFrame, Any]:
    """The holdout's images as the served model's input (``path``: absolute, ``frame``) and
    their class indices, in split order."""
    import numpy as np

    from medml.data.ingest import absolute_paths, frames_of, read_rows
    from medml.serving import FRAME_COLUMN, PATH_COLUMN
    from medml.split import TEST

    table = read_rows(splits_path, ["root", "path", "frame", "label_index", "split"])
    holdout = table[table["split"] == TEST]
    paths = absolute_paths(holdout, Path(splits_path).parent)
    files = pd.DataFrame({PATH_COLUMN: paths, FRAME_COLUMN: frames_of(holdout)})
    return files, holdout["label_index"].to_numpy(dtype=np.int64)


def log_datasets(ctx: RunContext, parts: dict[str, str]) -> None:
    """Log parts of the split (``train``/``test`` → MLflow context) as MLflow datasets of the
    active run: their rows (path, label, fold, sha256), the snapshot URI as source and the
    snapshot's data hash as digest."""
    import warnings

    import mlflow

    table = pd.read_parquet(ctx.layout.splits, columns=["path", "label", "split", "fold", "sha256"])
    digest = _snapshot_hash(ctx.layout)[:36]
    for part, context in parts.items():
        rows = table[table["split"] == part].reset_index(drop=True)
        with warnings.catch_warnings():  # source ambiguity; integer columns in the schema
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(rows, source=ctx.source, digest=digest,
                                              name=f"{ctx.recipe.name}-{part}")  # fmt: skip
            mlflow.log_input(dataset, context=context)


def _tracking_guard(tracking: Tracking | None) -> Any:
    from contextlib import nullcontext

    from medml.tracking import tracking_errors

    return tracking_errors(tracking) if tracking is not None else nullcontext()


def _snapshot_hash(layout: RunLayout) -> str:
    return str(read_json(_require(layout.snapshot_json, "ingest"))["dvc_md5"])


def run_data_steps(ctx: RunContext, *, echo: Any = print) -> None:
    """Ingest, validate, split and preprocess in this process, in order."""
    for name, step in [
        ("ingest", step_ingest),
        ("validate", step_validate),
        ("split", step_split),
        ("preprocess", step_preprocess),
    ]:
        echo(f"[{name}] {step(ctx.location)}")


def run_all(ctx: RunContext, tracking: Tracking, *, echo: Any = print) -> dict[str, Any]:
    """Run every step in this process, in order; return the registration."""
    root = ctx.location
    run_data_steps(ctx, echo=echo)
    for fold in ctx.folds:
        result = step_train(root, fold, tracking)
        echo(
            f"[train fold {fold}] epochs={result['epochs']} val_loss={result['val_loss']:.4f} "
            f"val_accuracy={result['val_accuracy']:.3f}"
        )
    evaluation = step_evaluate(root, tracking)
    echo(
        f"[evaluate] balanced_accuracy={evaluation['balanced_accuracy']:.3f} "
        f"macro_f1={evaluation['macro_f1']:.3f}"
    )
    registration = step_register(root, tracking)
    echo(
        f"[register] {registration['model_name']} v{registration['version']} "
        f"alias={registration['alias']}"
    )
    return registration


def summary(run_dir: Path | str) -> str:
    """Human-readable summary: holdout metrics per class and the registered version."""
    with opened_run(run_dir, "summary") as ctx:
        return _summary(ctx)


def _summary(ctx: RunContext) -> str:
    metrics = HoldoutMetrics.read(_require(ctx.layout.evaluation.metrics, "evaluate"))
    lines = [
        f"medml run {ctx.run_key}  recipe={ctx.recipe.name}  logical date={ctx.logical_date}",
        f"run directory: {ctx.location}",
        "",
        f"{metrics.label}, "
        + (
            "each image scored by the fold model that did not train on it:"
            if metrics.estimate == OUT_OF_FOLD
            else f"fold ensemble of {ctx.recipe.split.folds} models:"
        ),
        f"  {'class':<14}{'sensitivity':>12}{'specificity':>12}{'PPV':>8}{'F1':>8}{'support':>9}",
    ]
    for name in metrics.classes:
        scores = metrics.per_class[name]
        lines.append(
            f"  {name:<14}{_fmt(scores['sensitivity']):>12}{_fmt(scores['specificity']):>12}"
            f"{_fmt(scores['ppv']):>8}{_fmt(scores['f1']):>8}{scores['support']:>9}"
        )
    overall = metrics.overall
    lines += [
        "",
        f"  accuracy {overall['accuracy']:.3f}"
        f" | balanced accuracy {overall['balanced_accuracy']:.3f}"
        f" {_ci(metrics.interval('balanced_accuracy'))} | macro-F1 {overall['macro_f1']:.3f}"
        f" {_ci(metrics.interval('macro_f1'))} | AUC {overall['roc_auc_ovr_macro']:.3f}"
        f" | chance {ctx.recipe.chance_balanced_accuracy:.3f}",
    ]
    lines += _evaluation_summary(ctx.layout.evaluation)
    if ctx.layout.overview.is_dir():
        lines.append(f"  dataset overview: {ctx.layout.overview}/ (class_counts, samples, "
                     "augmented .png)")  # fmt: skip
    registration_path = ctx.layout.registry.registration
    if registration_path.is_file():
        reg = read_json(registration_path)
        if reg["alias"]:
            lines.append(
                f"\nRegistered model: {reg['model_name']}  {reg['alias']} -> version "
                f"{reg['version']}"
            )
        else:
            lines.append(
                f"\nRegistered model: {reg['model_name']} version {reg['version']} "
                f"(gate failed: {'; '.join(reg['gate_reasons'])}; no alias moved)"
            )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _ci(interval: list[float | None] | None) -> str:
    if not interval or interval[0] is None:
        return ""
    return f"[95% CI {interval[0]:.3f}-{interval[1]:.3f}]"


def write_run_summary(run_dir: Path | str) -> Path:
    """Write :func:`summary` to ``summary.txt`` in the run directory (on its mirror, and
    uploaded, for an S3 run directory); return the local file."""
    with opened_run(run_dir, "summary") as ctx:
        with atomic_path(ctx.layout.summary) as tmp:
            tmp.write_text(_summary(ctx) + "\n")
    return ctx.layout.summary
