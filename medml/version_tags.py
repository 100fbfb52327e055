"""The names of the tags and aliases medml puts on registered model versions.

Registration writes them, the gate, promotion, the review, the Airflow Models view and the
audit read them: every one of those takes the names from here.
"""

from __future__ import annotations

from medml.extensions import METRICS


class VersionTags:
    """Tag names of a registered model version (and of its logged model)."""

    COMPLETE = "medml.complete"
    """``true`` once registration wrote every other tag; readers refuse a version without it."""
    MODELS_DIGEST = "medml.models_digest"
    """On the logged model: the digest of the fold models it was built from."""
    RECIPE = "recipe"
    GIT_REVISION = "git_revision"
    PARAMS_HASH = "params_hash"
    PARAMS = "params"
    BALANCE = "balance"
    FOLDS = "folds"
    GATE = "gate"
    GATE_REASONS = "gate_reasons"
    GATE_NOTES = "gate_notes"
    """What the gate could not judge (classes with too few holdout images); never a failure."""
    COMPARED_WITH_CHAMPION = "compared_with_champion"
    KEPT_CHALLENGER = "kept_challenger"
    """Why the challenger alias stayed on a better version although this one passed its gate."""
    DATA_HASH = "data_hash"
    LOGICAL_DATE = "logical_date"
    RUN_KEY = "run_key"
    RUN_DIR = "run_dir"

    @staticmethod
    def metric(name: str) -> str:
        """The tag holding registered metric ``name``'s holdout value (scalar metrics)."""
        METRICS.get(name)  # an unknown name is a bug: "did you mean …"
        return name

    @staticmethod
    def audit(event: str, key: str) -> str:
        """What an audited ``event`` (``promoted``, ``restored``, ``rolled_back``, a decision)
        records on the version: ``audit.<event>.<key>`` (reviewer, reason, at, …)."""
        return f"audit.{event}.{key}"


CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous-champion"
