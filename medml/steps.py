"""The lifecycle's steps, each declared once: name, inputs, outputs, help and body.

A :class:`Step` is what every runner calls: the ``medml`` CLI makes one subcommand per step
from :data:`STEPS` (its help text included), ``dvc.yaml`` has one stage per step and the
Airflow DAG one task per step (tests check both against this module), and a step given an
``s3://`` run directory mirrors exactly the files it declares (:mod:`medml.run_store`).

Calling a step with a run directory opens the run (:func:`medml.runs.opened_run`), checks that
every declared input is there — naming the step that produces a missing one — and calls the
body with the run's pinned :class:`~medml.runs.RunContext`. Bodies are short adapters: they
read their inputs from the run's layout, call one pure library function, and return a small
JSON-friendly dict (for XCom and the CLI). Paths are relative to the run directory
(:data:`~medml.layout.RELATIVE`); ``{fold}`` in a path is the fold a per-fold step trains.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medml.config import Recipe
from medml.data.sources import fetch_s3_prefix, is_s3
from medml.errors import RunError, operational_fault
from medml.io import COMPLETE_MARKER, corrupted_files, read_json, require_complete, write_json
from medml.layout import ARTIFACTS, RELATIVE, StepFiles
from medml.metrics import HoldoutMetrics
from medml.runs import RunContext, opened_run, pipeline_run_id
from medml.settings import Settings
from medml.tracking import Tracking

logger = logging.getLogger(__name__)

DATA = "data"
MODEL = "model"

_REL = RELATIVE
_RUN = _REL.run_json.as_posix()
_FOLD_DIR = _REL.fold("{fold}").root.as_posix()
_FOLDS = _REL.folds.as_posix()
_RECORDS = _REL.step_records.as_posix()


@dataclass(frozen=True)
class Step:
    """One lifecycle step.

    Attributes:
        name: the step's name: its CLI subcommand, DVC stage and Airflow task id.
        body: ``body(ctx, *args, **kwargs)``: the work, on the opened run.
        needs: run-directory paths the step reads (``run.json`` always).
        produces: run-directory paths the step writes.
        help: one line for ``medml --help`` and the CLI subcommand.
        stage: ``data`` (ingest … preprocess: one process, no MLflow) or ``model``.
        optional: inputs that may be absent (what the step both needs and produces, e.g. a
            folder a retried step keeps).
        reads_source: the step reads the dataset's files (fetched again from an S3 source on
            a worker that has no copy).
        complete: inputs that are directories published with a completion marker
            (:func:`medml.io.publish_dir`) and are checked against it.
        verified: of those, the ones whose bytes are checked against the marker's SHA-256
            before the step trusts them (:func:`medml.io.corrupted_files`: a file is hashed
            again only when it changed since it was last found intact).
    """

    name: str
    body: Callable[..., dict[str, Any]]
    needs: tuple[str, ...]
    produces: tuple[str, ...]
    help: str
    stage: str = MODEL
    optional: tuple[str, ...] = ()
    reads_source: bool = False
    complete: tuple[str, ...] = ()
    verified: tuple[str, ...] = ()

    @property
    def per_fold(self) -> bool:
        """The step works on one fold (its outputs name ``{fold}``)."""
        return any("{fold}" in path for path in self.produces)

    def files(self, fold: int | None = None) -> StepFiles:
        """The step's inputs and outputs for ``fold`` (for a per-fold step; ``None``: the
        fold-independent ones only)."""

        def resolved(paths: tuple[str, ...]) -> tuple[str, ...]:
            if fold is None:
                return tuple(p for p in paths if "{fold}" not in p)
            return tuple(p.format(fold=fold) for p in paths)

        needs, produces = (*resolved(self.needs), _RECORDS), resolved(self.produces)
        optional = (*resolved(self.optional), _RECORDS, *(p for p in needs if p in produces))
        return StepFiles(needs=needs, produces=produces, optional=tuple(dict.fromkeys(optional)),
                         reads_source=self.reads_source)  # fmt: skip

    def __call__(self, run_dir: Path | str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run the step on ``run_dir`` (local, or ``s3://`` for a mirror); a body that takes
        ``settings`` gets the deployment's :class:`~medml.settings.Settings`, read once here."""
        parameters = inspect.signature(self.body).parameters
        if "settings" in parameters and kwargs.get("settings") is None:
            kwargs["settings"] = Settings.from_env()
        bound = inspect.signature(self.body).bind(None, *args, **kwargs)
        fold = bound.arguments.get("fold")
        tracking = bound.arguments.get("tracking")
        guard = _tracking_errors(tracking) if tracking is not None else nullcontext()
        files = self.files(fold)
        with _operational_faults(), guard, opened_run(run_dir, files) as ctx:
            check_inputs(self, ctx, files)
            record = ctx.layout.step_record(self.name, fold)
            record.unlink(missing_ok=True)  # until this run of the step has finished
            inputs = {rel: fingerprint(ctx.layout.root / rel) for rel in _recorded_inputs(files)}
            result = self.body(ctx, *args, **kwargs)
            outputs = {rel: fingerprint(ctx.layout.root / rel) for rel in files.produces
                       if rel != record.relative_to(ctx.layout.root).as_posix()}  # fmt: skip
            write_json(record, {"step": self.name, "fold": fold, "inputs": inputs,
                                "outputs": outputs})  # fmt: skip
            return result

    def finished(self, ctx: RunContext, fold: int | None = None) -> bool:
        """Whether this step (of ``fold``) finished in ``ctx``'s run and nothing it read or
        wrote changed since, up the whole chain of steps before it: a resumed run keeps it."""
        return stale_because(ctx, self.name, fold) is None


STEPS: dict[str, Step] = {}
"""Every lifecycle step by name, in the order a run executes them."""


def step(name: str, **spec: Any) -> Callable[[Callable[..., dict[str, Any]]], Step]:
    """Decorator: declare the decorated body as step ``name`` (see :class:`Step`)."""

    def declare(body: Callable[..., dict[str, Any]]) -> Step:
        per_fold = any("{fold}" in path for path in spec["produces"])
        record = _REL.step_record(name, "{fold}" if per_fold else None).as_posix()
        declared = Step(name=name, body=body, **{**spec, "produces": (*spec["produces"], record)})
        STEPS[name] = declared
        return declared

    return declare


def data_steps() -> list[Step]:
    """Ingest, validate, split and preprocess, in order (what ``compare`` runs once)."""
    return [s for s in STEPS.values() if s.stage == DATA]


def producer_of(path: str) -> str:
    """The step that writes run-directory path ``path`` (a file or folder it produces, or
    something inside one), as a command hint (``train --fold 1`` for one fold's folder,
    ``train`` for every fold's)."""
    for candidate in STEPS.values():
        for produced in candidate.produces:
            head, per_fold, _ = produced.partition("{fold}")
            if per_fold and (path == head.rsplit("/", 1)[0] or path.startswith(head)):
                fold = path[len(head) :].split("/")[0] if path.startswith(head) else ""
                return f"{candidate.name} --fold {fold}" if fold.isdigit() else candidate.name
            if path == produced or path.startswith(produced + "/"):
                return candidate.name
    return "init"


def check_inputs(spec: Step, ctx: RunContext, files: StepFiles) -> None:
    """Refuse to run ``spec`` unless each input it needs is there, was published by a run of
    its producer that finished (the producer's record, written last), and is unchanged since
    (a published folder also against its completion marker); the message names the step to
    run.

    Raises:
        RunError: an input is missing, unfinished, incomplete or changed.
    """
    for rel in files.needs:
        if rel in files.optional:
            continue
        path = ctx.layout.root / rel
        producer = producer_of(rel)
        if rel in spec.complete:
            require_complete(path, producer)
            if rel in spec.verified and (corrupted := corrupted_files(path)):
                raise RunError(f"{path}: {len(corrupted)} file(s) differ from the bytes "
                               f"`{producer}` wrote ({', '.join(corrupted[:3])}); they are "
                               f"corrupted: run the `{producer}` step again")  # fmt: skip
        elif not path.exists():
            raise RunError(f"{path} is missing; run the `{producer}` step first")
        if producer != "init":
            _check_recorded(ctx, rel, producer.split()[0])


def _check_recorded(ctx: RunContext, rel: str, producer: str) -> None:
    """``rel`` is what a finished run of ``producer`` recorded (every fold's, for ``folds``),
    and nothing ``producer`` read changed since (up the chain of steps before it)."""
    for fold in _producer_folds(ctx, rel, producer):
        hint = f"{producer} --fold {fold}" if fold is not None else producer
        record = ctx.layout.step_record(producer, fold)
        if not record.is_file():
            raise RunError(f"{ctx.layout.root / rel} was not published by a finished `{hint}` "
                           f"step (no {record.name} in {record.parent}: it failed or was "
                           f"interrupted); run the `{hint}` step again")  # fmt: skip
        recorded = read_json(record)["outputs"]
        for out, print_ in recorded.items():
            if (out == rel or out.startswith(rel + "/")) and fingerprint(
                ctx.layout.root / out
            ) != print_:
                raise RunError(f"{ctx.layout.root / out} changed since the `{hint}` step wrote "
                               f"it; run the `{hint}` step again")  # fmt: skip
        if why := stale_because(ctx, producer, fold):
            raise RunError(f"{ctx.layout.root / rel} is out of date: {why}; run the steps from "
                           "there again (`medml run --run-dir` on this run resumes where the "
                           "first one is out of date)")  # fmt: skip


def _recorded_inputs(files: StepFiles) -> list[str]:
    """The inputs a step's record fingerprints: all it needs but ``run.json`` (which DVC
    re-pins to ``params.yaml`` before every stage) and what may be absent."""
    return [rel for rel in files.needs
            if rel not in files.optional and rel != _RUN]  # fmt: skip


def stale_because(
    ctx: RunContext, name: str, fold: int | None, seen: dict[Any, str | None] | None = None
) -> str | None:
    """Why step ``name`` (of ``fold``) cannot be taken as finished — no record, an input or
    output changed since, or a step before it that is itself stale — or ``None``."""
    seen = {} if seen is None else seen
    if (name, fold) not in seen:
        seen[(name, fold)] = _why_stale(ctx, name, fold, seen)
    return seen[(name, fold)]


def _why_stale(
    ctx: RunContext, name: str, fold: int | None, seen: dict[Any, str | None]
) -> str | None:
    record = ctx.layout.step_record(name, fold)
    if not record.is_file():
        return f"`{name}` has not finished"
    kept = read_json(record)
    if "inputs" not in kept:
        return f"`{name}` finished before its inputs were recorded"
    for rel, print_ in {**kept["inputs"], **kept["outputs"]}.items():
        path = ctx.layout.root / rel  # a mirror (a pod, a worker) holds only what it needs
        if (path.exists() or path.is_symlink()) and fingerprint(path) != print_:
            return f"{rel} changed since `{name}` ran"
    for rel in kept["inputs"]:
        producer = producer_of(rel).split()[0]
        if producer == "init":
            continue
        for before in _producer_folds(ctx, rel, producer):
            if why := stale_because(ctx, producer, before, seen):
                return why
    return None


def _producer_folds(ctx: RunContext, rel: str, producer: str) -> list[int | None]:
    """The folds of ``producer`` that wrote ``rel`` (``[None]`` for a step of the whole run)."""
    if not STEPS[producer].per_fold:
        return [None]
    fold = rel.removeprefix(_REL.folds.as_posix()).strip("/").split("/")[0]
    return [int(fold.removeprefix("fold_"))] if fold else list(ctx.folds)


def fingerprint(path: Path) -> dict[str, Any] | None:
    """What a step's record keeps of one output: a file's size and SHA-256, a published
    folder's completion-marker digest, another folder's file count and bytes; ``None`` when
    the (optional) output is absent."""
    if path.is_file():
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        return {"bytes": path.stat().st_size, "sha256": digest}
    if not path.is_dir():
        return None
    marker = path / COMPLETE_MARKER
    if marker.is_file():
        return {"complete": json.loads(marker.read_text())["digest"]}
    files = [p for p in path.rglob("*") if p.is_file()]
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


@contextmanager
def _operational_faults() -> Iterator[None]:
    """A full disk, a denied permission or a lost S3 connection under a step becomes one
    :class:`~medml.errors.OperationalFault` line (credentials masked), not a traceback."""
    try:
        yield
    except Exception as err:  # re-raised unless it is one of the faults named above
        fault = operational_fault(err)
        if fault is None:
            raise
        raise fault from None


def _tracking_errors(tracking: Tracking) -> Any:
    from medml.tracking import tracking_errors

    return tracking_errors(tracking)


# ---- data steps ----------------------------------------------------------------------


@step(
    "ingest",
    needs=(_RUN,),
    produces=(_REL.manifest.as_posix(), _REL.snapshot_json.as_posix()),
    help="Scan the source into manifest.parquet (path, label, group, sha256, size, dims).",
    stage=DATA,
)
def ingest(ctx: RunContext, settings: Settings | None = None) -> dict[str, Any]:
    """Scan the source into ``manifest.parquet``; hash the snapshot as DVC would."""
    from medml.data.ingest import ingest as ingest_source
    from medml.data.ingest import pseudonym_key

    source = Path(ctx.source)
    fetched: dict[str, Any] = {}
    if is_s3(ctx.source):
        fetch = fetch_s3_prefix(ctx.source, ctx.layout.source_copy)
        source = fetch.local_dir
        fetched = {"downloaded": fetch.downloaded, "already_present": fetch.skipped}
    key = pseudonym_key(settings or Settings.from_env())
    result = ingest_source(source, ctx.layout.manifest, ctx.recipe, reuse=not is_s3(ctx.source),
                           pseudonym_key=key)  # fmt: skip
    snapshot = {"source": ctx.source, "dvc_md5": result.dvc_md5}  # the files ingest accepted
    write_json(ctx.layout.snapshot_json, snapshot)
    return {
        **fetched,
        "dvc_md5": snapshot["dvc_md5"],
        "manifest": str(result.manifest),
        "images": result.images,
        "class_counts": result.class_counts,
    }


@step(
    "validate",
    needs=(_RUN, _REL.manifest.as_posix()),
    produces=(_REL.validation.root.as_posix(),),
    reads_source=True,
    stage=DATA,
    help="Great Expectations gate: quarantine bad files, fail on critical problems.",
)
def validate(ctx: RunContext, settings: Settings | None = None) -> dict[str, Any]:
    """Run the validation gate; quarantine bad files. A manifest validated before, row for
    row, with the same data settings and code, reuses that validation
    (:mod:`medml.step_reuse`)."""
    from medml.step_reuse import StepReuse, content_key, reused_line

    manifest = pd.read_parquet(ctx.layout.manifest)
    used = {
        "data": ctx.recipe.data.model_dump(mode="json"),  # the gate's settings, and the
        "image": ctx.recipe.image.model_dump(mode="json"),
    }  # decode behind its thumbnails
    key = content_key("validate", manifest, used, modules=_VALIDATE_CODE,
                      libraries=_VALIDATE_LIBRARIES, files=_VALIDATE_FILES)  # fmt: skip
    kept = StepReuse((settings or Settings.from_env()).home, "validate", key)
    outputs = {ctx.layout.validation.root.name: ctx.layout.validation.root}
    facts = kept.restore(outputs, ctx.layout.root)
    if facts is not None:
        report = read_json(ctx.layout.validation.report)
        return {"images": report["images"], "quarantined": report["quarantined"],
                "class_counts": report["class_counts"], "report": str(ctx.layout.validation.report),
                "reused": reused_line(facts)}  # fmt: skip
    from medml.data.validate import validate as validate_manifest

    result = validate_manifest(ctx.layout.manifest, ctx.layout.validation.root, ctx.recipe)
    kept.keep(outputs, ctx.layout.root, ctx.run_key)
    return {
        "images": result.images,
        "quarantined": result.quarantined,
        "class_counts": result.class_counts,
        "report": str(result.report),
    }


_VALIDATE_CODE = (
    "medml.data.validate", "medml.data.images", "medml.data.ingest", "medml.preprocess",
    "medml.near_duplicates", "medml.io", "medml.layout",
)  # fmt: skip
"""The modules whose source a kept validation depends on (a change makes a new key)."""
_VALIDATE_FILES = (Path(__file__).parent / "templates" / "validation.html.j2",)
_VALIDATE_LIBRARIES = ("great-expectations", "opencv-python-headless", "pydicom")
_SPLIT_CODE = ("medml.split", "medml.near_duplicates", "medml.io", "medml.layout")


@step(
    "split",
    needs=(_RUN, _REL.validation.root.as_posix()),
    produces=(_REL.splits.as_posix(), _REL.split_report.as_posix()),
    complete=(_REL.validation.root.as_posix(),),
    stage=DATA,
    help="Holdout test set + stratified (group) k folds, with a leakage audit.",
)
def split(ctx: RunContext, settings: Settings | None = None) -> dict[str, Any]:
    """Assign holdout and folds. A clean manifest split before, row for row, with the same
    classes, split settings and code, reuses that split (:mod:`medml.step_reuse`)."""
    from medml.step_reuse import StepReuse, content_key, reused_line

    clean = pd.read_parquet(ctx.layout.validation.clean_manifest)
    used = {
        "classes": ctx.recipe.data.classes,
        "split": ctx.recipe.split.model_dump(mode="json"),
        "keep_best_epoch": ctx.recipe.train.keep_best_epoch,
    }  # the report says what it chose
    key = content_key("split", clean, used, modules=_SPLIT_CODE, libraries=("scikit-learn",))
    kept = StepReuse((settings or Settings.from_env()).home, "split", key)
    outputs = {path.name: path for path in (ctx.layout.splits, ctx.layout.split_report)}
    facts = kept.restore(outputs, ctx.layout.root)
    if facts is not None:
        report = read_json(ctx.layout.split_report)
        return {"grouped": report["grouped"], "test_images": report["test_size"],
                "fold_sizes": report["fold_sizes"], "folds": ctx.folds,
                "reused": reused_line(facts)}  # fmt: skip
    from medml.split import split as split_manifest

    result = split_manifest(ctx.layout.validation.clean_manifest, ctx.layout.splits, ctx.recipe)
    kept.keep(outputs, ctx.layout.root, ctx.run_key)
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


@step(
    "preprocess",
    needs=(_RUN, _REL.splits.as_posix()),
    produces=(_REL.shards.as_posix(), _REL.preprocess_json.as_posix()),
    reads_source=True,
    stage=DATA,
    help="Decode and resize images with OpenCV into shards (cached in DVC's cache).",
)
def preprocess(
    ctx: RunContext, cache_dir: Path | None = None, settings: Settings | None = None
) -> dict[str, Any]:
    """Decode and resize into shards, restored from DVC's cache when the inputs are unchanged.

    The shards are saved as DVC objects in a DVC cache (default :attr:`Settings.dvc_cache`;
    see :mod:`medml.dvc_cache`) with a run-cache entry keyed by :func:`shards_cache_key`, so
    re-running a date, back-filling again or two runs on the same snapshot decode the images
    once; later runs check the shards out of the cache (hard links).
    """
    from medml.dvc_cache import DvcCache
    from medml.preprocess import preprocess as preprocess_images

    key = shards_cache_key(ctx.layout.splits, ctx.recipe)
    cache = DvcCache(cache_dir or (settings or Settings.from_env()).dvc_cache)
    cached, dropped = cache.lookup(key), ""
    if cached is not None:
        cache.checkout(cached["hash"], ctx.layout.shards)
        if corrupted := corrupted_files(ctx.layout.shards):  # bytes damaged in the cache
            cache.drop(key, cached["hash"], corrupted)
            cached, dropped = None, f"; {len(corrupted)} cached shard file(s) were corrupted "
            dropped += f"({corrupted[0]} …): entry dropped, rebuilt"
            logger.warning("preprocess cache%s", dropped)
    if cached is not None:
        outcome = {"images": cached["images"], "shards": cached["shards"], "cache": "hit"}
        digest = cached["hash"]
    else:
        result = preprocess_images(ctx.layout.splits, ctx.layout.shards, ctx.recipe)
        digest = cache.save(ctx.layout.shards, key, step="preprocess", images=result.images,
                            shards=result.shards)  # fmt: skip
        outcome = {"images": result.images, "shards": result.shards, "cache": "miss" + dropped}
    outcome |= {"shards_dir": str(ctx.layout.shards), "cache_key": key, "dvc_md5": digest}
    write_json(ctx.layout.preprocess_json, outcome)
    return outcome


# ---- model steps ---------------------------------------------------------------------


@step(
    "train",
    needs=(
        _RUN,
        _REL.shards.as_posix(),
        _REL.snapshot_json.as_posix(),
        _REL.splits.as_posix(),
    ),  # splits: the fold's rows as an MLflow dataset
    produces=(_FOLD_DIR,),
    optional=(_REL.snapshot_json.as_posix(),),  # without it, no MLflow dataset is logged
    complete=(_REL.shards.as_posix(),),
    verified=(_REL.shards.as_posix(),),
    help="Train one fold (balanced inside the fold), or every fold in turn, and log to MLflow.",
)
def train(ctx: RunContext, fold: int, tracking: Tracking | None = None) -> dict[str, Any]:
    """Train one fold (logged to MLflow when ``tracking`` is given).

    On an ``s3://`` run directory (a training pod's view) the run's ``run.json`` and shards
    are mirrored locally first and the fold's outputs uploaded after.
    """
    from medml.train import train_fold

    parent = pipeline_run_id(ctx, tracking) if tracking else None
    result = train_fold(ctx.layout.shards, fold, ctx.layout.fold(fold).root, ctx.recipe,
                        tracking=tracking, parent_run_id=parent, run_key=ctx.run_key)  # fmt: skip
    if tracking is not None and result.mlflow_run_id and ctx.layout.snapshot_json.is_file():
        with tracking.run(run_id=result.mlflow_run_id):
            log_datasets(ctx, {"train": "training"})
    return result.as_dict()


_EVALUATED = (_RUN, _REL.snapshot_json.as_posix(), _REL.splits.as_posix(),
              _REL.validation.root.as_posix(), _FOLDS)  # fmt: skip


@step(
    "evaluate",
    needs=(*_EVALUATED, _REL.shards.as_posix()),
    produces=(_REL.evaluation.root.as_posix(), _REL.overview.as_posix()),
    optional=(_REL.overview.as_posix(),),
    complete=(_REL.shards.as_posix(),),
    verified=(_REL.shards.as_posix(),),
    help="Score the fold ensemble on the untouched holdout (clinical metrics, plots).",
)
def evaluate(ctx: RunContext, tracking: Tracking | None = None) -> dict[str, Any]:
    """Score the fold ensemble on the holdout (every fold model must be complete)."""
    from medml.evaluate import evaluate as evaluate_ensemble
    from medml.overview import write_overview

    _require_intact_folds(ctx)
    models = ctx.layout.fold_models(len(ctx.folds))
    parent = pipeline_run_id(ctx, tracking) if tracking else None
    result = evaluate_ensemble(ctx.layout.shards, models, ctx.layout.evaluation.root, ctx.recipe,
                               tracking=tracking, parent_run_id=parent)  # fmt: skip
    histories = [ctx.layout.fold(k).history for k in ctx.folds]
    write_overview(ctx.layout.shards, ctx.layout.overview, ctx.recipe, histories)  # TF is loaded
    if tracking is not None and parent is not None:  # the data gate's report travels with the run
        client = tracking.activate()
        client.log_artifacts(parent, str(ctx.layout.validation.root), ARTIFACTS.validation)
        if ctx.layout.overview.is_dir():
            client.log_artifacts(parent, str(ctx.layout.overview), ARTIFACTS.overview)
        with tracking.run(run_id=parent):
            log_datasets(ctx, {"train": "training", "calibration": "calibration",
                               "test": "holdout"})  # fmt: skip
    return {"metrics": str(result.metrics_path), **result.metrics.overall}


@step(
    "register",
    needs=(*_EVALUATED, _REL.split_report.as_posix(), _REL.evaluation.root.as_posix()),
    produces=(_REL.registry.root.as_posix(),),
    reads_source=True,
    complete=(_REL.evaluation.root.as_posix(),),
    help="Register the fold ensemble in MLflow; alias `challenger` if it passes the gate.",
)
def register(
    ctx: RunContext, tracking: Tracking, settings: Settings | None = None,
    airflow_user: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Gate (thresholds + non-inferiority to the champion), register, alias ``challenger``.

    The registrar recorded in the audit trail is ``airflow_user`` (the Airflow user who
    triggered the run, or ``scheduler``) when Airflow runs the step, else the CLI's identity
    (:func:`medml.identity.cli_identity`).
    """
    from medml.calibration import ServingCalibration
    from medml.evaluation_facts import EvaluationFacts
    from medml.identity import AIRFLOW, Identity, cli_identity
    from medml.registry import ChampionScore, champion_on_holdout, git_revision, register_ensemble
    from medml.version_tags import CHAMPION, VersionTags

    layout = ctx.layout
    _require_intact_folds(ctx)  # the models registered are the models evaluated, byte for byte
    metrics = HoldoutMetrics.read(layout.evaluation.metrics)
    evaluation = EvaluationFacts.read(layout.evaluation)
    files, labels = holdout_files(layout.splits)
    name, recipe = ctx.recipe.registry.model_name, ctx.recipe

    def on_holdout(alias: str) -> ChampionScore | None:  # cross-validation only: nothing to score
        return champion_on_holdout(tracking, name, files, labels, recipe.data.classes,
                                   recipe.evaluate.min_class_support, alias) if len(labels) \
            else None  # fmt: skip

    champion = on_holdout(CHAMPION)
    challenger = on_holdout(recipe.registry.alias)
    if challenger is not None and champion is not None and challenger.version == champion.version:
        challenger = None  # the champion itself: already the non-inferiority reference
    settings = settings or Settings.from_env()
    registrar = (Identity(airflow_user, AIRFLOW) if airflow_user
                 else cli_identity(settings, tracking.uri))  # fmt: skip
    registration = register_ensemble(
        layout.fold_models(ctx.recipe.split.folds), metrics, layout.registry.root, ctx.recipe,
        tracking=tracking, parent_run_id=pipeline_run_id(ctx, tracking),
        tags={VersionTags.DATA_HASH: snapshot_hash(ctx), VersionTags.LOGICAL_DATE: ctx.logical_date,
              VersionTags.RUN_KEY: ctx.run_key, VersionTags.RUN_DIR: ctx.location},
        champion=champion, challenger=challenger,
        calibration=ServingCalibration.from_evaluation(evaluation),
        revision=git_revision(settings), registrar=registrar,
        card_facts={"split_report": read_json(layout.split_report), "evaluation": evaluation,
                    "validation_report": read_json(layout.validation.report)},
    )  # fmt: skip
    return registration.as_dict()


# ---- what the step bodies share ------------------------------------------------------


def _require_intact_folds(ctx: RunContext) -> None:
    """Every fold model complete and byte for byte what its training wrote (a model copied
    over another, or damaged, keeps its folder's marker but not its SHA-256).

    Raises:
        RunError: a fold is missing, incomplete or changed.
    """
    for fold in ctx.folds:
        hint = producer_of(_FOLD_DIR.format(fold=fold))
        root = require_complete(ctx.layout.fold(fold).root, hint)
        if corrupted := corrupted_files(root):
            raise RunError(f"{root}: {', '.join(corrupted)} differ from what `{hint}` wrote; "
                           f"run the `{hint}` step again")  # fmt: skip


def snapshot_hash(ctx: RunContext) -> str:
    """The snapshot's DVC hash that ingest recorded."""
    return str(read_json(ctx.layout.snapshot_json)["dvc_md5"])


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
    digest = snapshot_hash(ctx)[:36]
    for part, context in parts.items():
        rows = table[table["split"] == part].reset_index(drop=True)
        if rows.empty:  # no calibration cut (one model, or too small a class)
            continue
        with warnings.catch_warnings():  # source ambiguity; integer columns in the schema
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(rows, source=ctx.source, digest=digest,
                                              name=f"{ctx.recipe.name}-{part}")  # fmt: skip
            _log_input(dataset, context)


def _log_input(dataset: Any, context: str, attempts: int = 4) -> None:
    """``mlflow.log_input``, again when another process (a concurrent fold) created the same
    dataset at the same moment: the store's unique constraint refuses the second insert, and
    the next attempt finds the dataset the other one created."""
    import mlflow
    import tenacity
    from mlflow.exceptions import MlflowException

    def collided(err: BaseException) -> bool:
        return isinstance(err, MlflowException) and any(
            word in str(err).upper() for word in ("UNIQUE", "DUPLICATE")
        )

    tenacity.Retrying(
        retry=tenacity.retry_if_exception(collided), stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_incrementing(start=0.2, increment=0.2), reraise=True,
    )(mlflow.log_input, dataset, context=context)  # fmt: skip
