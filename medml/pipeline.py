"""Runners' helpers: every step in one process, and sharing a run with training pods.

The steps themselves are declared in :mod:`medml.steps` and a run's identity in
:mod:`medml.runs`; this module strings the steps together for the runners that run them in
one process (``medml run``, ``medml compare``) and moves a run's files to and from the S3 run
store for the Kubernetes backend.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from medml.data.sources import is_s3
from medml.errors import RunError
from medml.io import read_json, safe_name, write_json
from medml.layout import RELATIVE
from medml.runs import RunContext, load_context
from medml.settings import Settings
from medml.steps import STEPS, Step, data_steps
from medml.tracking import Tracking


class _Resume:
    """Which steps a resumed run keeps: every step that finished before, up to the first that
    did not (from there on, everything runs again: its inputs may change)."""

    def __init__(self, ctx: RunContext, echo: Any) -> None:
        self.ctx, self.echo = ctx, echo
        self.keeping = not is_s3(ctx.location)  # a mirror may be stale: S3 runs run again

    def keeps(self, spec: Step, fold: int | None = None) -> bool:
        self.keeping = self.keeping and spec.finished(self.ctx, fold)
        if self.keeping:
            which = f"{spec.name} fold {fold}" if fold is not None else spec.name
            self.echo(f"[{which}] finished earlier in this run; kept")
        return self.keeping


def run_data_steps(ctx: RunContext, *, echo: Any = print, resume: _Resume | None = None) -> None:
    """Run the data steps (:func:`medml.steps.data_steps`) in this process, in order (those
    a resumed run finished before are kept)."""
    for data_step in data_steps():
        if resume is None or not resume.keeps(data_step):
            echo(f"[{data_step.name}] {one_line(data_step(ctx.location))}")


def one_line(result: dict[str, Any], longest: int = 40) -> str:
    """A step's result for a person: its counts and short values as ``key=value`` (hashes,
    paths and nested tables stay in the step's files and its record), and why it was reused."""
    shown = []
    for key, value in result.items():
        value = value.item() if hasattr(value, "item") and not isinstance(value, str) else value
        if key == "reused":  # why the step did not run again: always said
            shown.append(f"({value})")
        elif isinstance(value, float):
            shown.append(f"{key}={value:.4g}")
        elif isinstance(value, bool | int) or isinstance(value, str) and _readable(value, longest):
            shown.append(f"{key}={value}")
    return " ".join(shown) or "done"


def _readable(text: str, longest: int) -> bool:
    """Short, and neither a path nor a digest."""
    return (len(text) <= longest and "/" not in text and "\n" not in text
            and not re.fullmatch(r"[0-9a-f.]{16,}\w*", text))  # fmt: skip


def run_all(ctx: RunContext, tracking: Tracking, *, echo: Any = print) -> dict[str, Any]:
    """Run every step in this process, in order; return the registration. Run again on the
    same run directory, it resumes: steps that finished are kept, and registration adopts
    the version this run created (one pipeline run registers one version)."""
    root, resume = ctx.location, _Resume(ctx, echo)
    run_data_steps(ctx, echo=echo, resume=resume)
    for fold in ctx.folds:
        if resume.keeps(STEPS["train"], fold):
            continue
        result = STEPS["train"](root, fold, tracking)
        echo(f"[train fold {fold}] epochs={result['epochs']} val_loss={result['val_loss']:.4f} "
             f"val_accuracy={result['val_accuracy']:.3f}")  # fmt: skip
    if not resume.keeps(STEPS["evaluate"]):
        evaluation = STEPS["evaluate"](root, tracking)
        echo(f"[evaluate] balanced_accuracy={evaluation['balanced_accuracy']:.3f} "
             f"macro_f1={evaluation['macro_f1']:.3f}")  # fmt: skip
    registration = STEPS["register"](root, tracking)
    done = " (registered by this run before; nothing changed)" * registration["already_registered"]
    echo(f"[register] {registration['model_name']} v{registration['version']} "
         f"alias={registration['alias']}{done}")  # fmt: skip
    return registration


def share_with_pods(run_dir: Path | str, settings: Settings | None = None) -> str:
    """Upload what the fold pods need (the train step's inputs) to the S3 run store.

    The store is ``train.kubernetes.run_store`` or :attr:`Settings.run_store`; the run lands at
    ``<store>/runs/<logical date>/<run key>/`` and its URI is remembered in ``remote.json``.
    A run directory already on S3 is shared as it is.

    Raises:
        RunError: no run store is configured.
    """
    from medml.run_store import push, run_uri

    if is_s3(run_dir):
        return str(run_dir)
    ctx = load_context(run_dir)
    settings = settings or Settings.from_env()
    store = ctx.recipe.train.kubernetes.run_store or settings.run_store
    if not store:
        raise RunError(
            "the kubernetes backend needs an S3 run store shared with the pods: set "
            "train.kubernetes.run_store (e.g. s3://medml-runs/) or $MEDML_RUN_STORE"
        )
    uri = run_uri(store, ctx.logical_date, safe_name(ctx.run_key))
    push(ctx.layout.root, uri, STEPS["train"].files().needs)
    write_json(ctx.layout.remote_json, {"uri": uri})
    return uri


def collect_folds(run_dir: Path | str) -> dict[str, Any]:
    """Download the fold models the pods wrote to the S3 run directory into ``run_dir`` (a run
    directory on S3 already has them: evaluate downloads them)."""
    from medml.run_store import pull

    ctx = load_context(run_dir)
    folds = [RELATIVE.fold(k).root.as_posix() for k in ctx.folds]
    if is_s3(run_dir):
        return {"uri": str(run_dir), "folds": folds}
    remote = ctx.layout.remote_json
    if not remote.is_file():
        raise RunError(
            f"{remote} is missing: the run was never shared with training pods "
            "(the DAG's fold_pods task shares it when train.backend is kubernetes)"
        )
    uri = read_json(remote)["uri"]
    records = [RELATIVE.step_record("train", k).as_posix() for k in ctx.folds]
    pull(uri, ctx.layout.root, [*folds, *records])  # a fold counts once its pod finished
    return {"uri": uri, "folds": [str(p) for p in ctx.layout.fold_models(len(ctx.folds))]}
