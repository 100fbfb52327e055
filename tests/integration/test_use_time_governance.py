"""Use-time governance: a champion moved with the plain MLflow client is refused by
``medml predict`` and reported by ``medml audit verify``; the audit chain is keyed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from medml import audit, serving
from medml.cli import app
from medml.promotion import (
    PromotionError,
    UnreviewedChampion,
    champion_backed_by_audit,
    promote,
    seal,
)
from medml.settings import Settings
from medml.tracking import Tracking
from tests.integration.test_governance import NAME, _versions

pytestmark = pytest.mark.integration
NO_ANCHOR = ("the trail has no anchor (MEDML_AUDIT_ANCHOR is not set): removing the newest "
             "events and resetting the head tag to an older event cannot be detected")  # fmt: skip


class _FakeClassifier:
    """Stands in for the registered pyfunc (the registry, not the model, is under test)."""

    classes = ["a", "b"]
    operating_point = None
    prediction_sets = None

    def predict(self, context: Any, frame: pd.DataFrame) -> pd.DataFrame:
        rows = len(frame)
        return pd.DataFrame({"label": ["a"] * rows, "p_a": [0.9] * rows, "p_b": [0.1] * rows,
                             "error": [""] * rows})  # fmt: skip


@pytest.fixture()
def loaded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the URIs predict loads, and load the stand-in classifier."""
    uris: list[str] = []

    def load(uri: str) -> _FakeClassifier:
        uris.append(uri)
        return _FakeClassifier()

    monkeypatch.setattr(serving, "load_classifier", load)
    return uris


def _predict(tracking: Tracking, tmp_path: Path, *extra: str) -> Any:
    source = tmp_path / "images"
    source.mkdir(exist_ok=True)
    (source / "x.png").write_bytes(b"not read by the stand-in")
    return CliRunner().invoke(app, ["predict", "--model", f"{NAME}@champion", "--source",
                                    str(source), "--out", str(tmp_path / "p.csv"),
                                    "--tracking-uri", tracking.uri, *extra])  # fmt: skip


def _anchor_folder(tmp_path: Path) -> Path:
    """The anchor folder, made by the administrator (medml never creates a missing one)."""
    folder = tmp_path / "anchor"
    folder.mkdir(exist_ok=True)
    return folder


def _checked_copy(tracking: Tracking, version: str) -> str:
    """Where a checked champion is loaded from: the local copy of its files, named by the
    digest its registration pinned."""
    from medml.promotion import audit_log, registration_event

    pinned = registration_event(audit_log(tracking, NAME), version)["model_files"]
    return str(Settings.from_env().home / "cache" / "checked-models" / pinned)


def _verify(tracking: Tracking) -> Any:
    return CliRunner().invoke(app, ["audit", "verify", NAME, "--tracking-uri", tracking.uri])


def test_out_of_band_champion_is_refused_at_use_time(tmp_path: Path, loaded: list[str]) -> None:
    tracking = Tracking.from_env()
    _versions(tracking, 3)
    promote(tracking, NAME, "1", reviewer="alice", reason="first")
    assert champion_backed_by_audit(tracking, NAME) == "1"
    result = _predict(tracking, tmp_path)
    assert result.exit_code == 0, result.output
    assert loaded == [_checked_copy(tracking, "1")]  # the checked version, not the alias

    tracking.activate().set_registered_model_alias(NAME, "champion", "3")  # plain client
    result = _predict(tracking, tmp_path)
    assert result.exit_code == 5, result.output
    line = result.output.strip()
    assert "points at v3" in line and "made v1 champion" in line and "medml promote" in line
    assert len(line.splitlines()) == 1 and len(loaded) == 1  # one line; nothing loaded
    result = _verify(tracking)
    assert result.exit_code == 6 and "points at v3" in result.output, result.output

    with pytest.raises(UnreviewedChampion, match="v3"):
        champion_backed_by_audit(tracking, NAME)
    promote(tracking, NAME, "2", reviewer="alice", reason="through the reviewed path")
    assert champion_backed_by_audit(tracking, NAME) == "2"
    assert _verify(tracking).exit_code == 0


def test_allow_unreviewed_warns_and_proceeds(tmp_path: Path, loaded: list[str]) -> None:
    tracking = Tracking.from_env()
    _versions(tracking, 2)
    tracking.activate().set_registered_model_alias(NAME, "champion", "2")  # never promoted
    assert _predict(tracking, tmp_path).exit_code == 5
    result = _predict(tracking, tmp_path, "--allow-unreviewed")
    assert result.exit_code == 0, result.output
    assert "warning: using an unreviewed champion" in result.output
    assert "no promotion event" in result.output and "wrote 1 predictions" in result.output
    assert loaded == [f"models:/{NAME}@champion"]


def _forged_approval(tracking: Tracking, version: str, settings: Settings) -> None:
    """What someone with MLflow write access, and without the deployment's key, can do."""
    event = {"event": "promote", "version": version, "reviewer": "Dr. Chief", "identity": "os-user",
             "requested_by": "mallory", "reason": "looks fine", "at": "2026-01-01T00:00:00+00:00",
             "previous_champion": "1", "gate_reasons": [], "gate": "passed",
             "gate_override": ""}  # fmt: skip
    client = tracking.activate()  # medml's own append refuses to downgrade a keyed trail: the
    experiment = client.get_experiment_by_name(audit.AUDIT_EXPERIMENT)  # forger writes raw
    last = audit.events(tracking, NAME)[-1]
    previous = client.get_registered_model(NAME).tags[audit.HEAD_TAG].split(":")[1]
    key = settings.audit_key.encode() if settings.audit_key else None
    record = {**event, "model": NAME, "seq": last["seq"] + 1,
              "scheme": audit.KEYED if key else audit.UNKEYED}  # fmt: skip
    digest = audit.event_hash(previous, record, key)
    audit._write(client, experiment.experiment_id, NAME, record, previous, digest)
    client.set_registered_model_tag(NAME, audit.HEAD_TAG, f"{record['seq']}:{digest}")
    client.set_registered_model_alias(NAME, "champion", version)


def test_keyed_chain_fails_a_forged_appended_approval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loaded: list[str]
) -> None:
    monkeypatch.setenv("MEDML_AUDIT_KEY", "deployment secret\n")
    tracking = Tracking.from_env()
    _versions(tracking, 3)
    promote(tracking, NAME, "1", reviewer="alice", reason="first")
    report = audit.verify(tracking, NAME)
    assert report.intact and report.warnings == [NO_ANCHOR], (report.problems, report.warnings)
    assert {e["scheme"] for e in audit.events(tracking, NAME)} == {audit.KEYED}
    result = _verify(tracking)
    assert result.exit_code == 0 and "unkeyed" not in result.output, result.output

    keyless = Settings(home=tmp_path)  # no key: a plain SHA-256 append
    _forged_approval(tracking, "3", keyless)
    result = _verify(tracking)
    assert result.exit_code == 6, result.output
    assert "event #5 is unkeyed after keyed events" in result.output
    assert _predict(tracking, tmp_path).exit_code == 5  # the forged approval backs nothing
    assert audit.verify(tracking, NAME, Settings(home=tmp_path)).problems == [
        f"event #{seq} is keyed ({audit.KEYED}) and MEDML_AUDIT_KEY is not set here: it cannot "
        "be verified"
        for seq in (1, 2, 3, 4)
    ]


def test_keyed_chain_fails_an_approval_signed_with_a_guessed_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDML_AUDIT_KEY", "deployment secret")
    tracking = Tracking.from_env()
    _versions(tracking, 2)
    promote(tracking, NAME, "1", reviewer="alice", reason="first")
    _forged_approval(tracking, "2", Settings(home=tmp_path, audit_key="guess"))
    problems = audit.verify(tracking, NAME).problems
    assert problems == ["event #4 was edited after it was written, or written without the "
                        "deployment's audit key"]  # fmt: skip
    with pytest.raises(UnreviewedChampion, match="not backed by an intact audit trail"):
        champion_backed_by_audit(tracking, NAME)


def test_unkeyed_chain_verifies_with_a_warning(tmp_path: Path, loaded: list[str]) -> None:
    tracking = Tracking.from_env()
    _versions(tracking, 1)
    promote(tracking, NAME, "1", reviewer="alice", reason="first")
    result = _verify(tracking)
    assert result.exit_code == 0 and "2 audit events, hash chain intact" in result.output
    assert "warning: the hash chain is unkeyed (MEDML_AUDIT_KEY is not set)" in result.output
    used = _predict(tracking, tmp_path)  # used, but the user is told the evidence is weak
    assert used.exit_code == 0, used.output
    assert "warning: the hash chain is unkeyed (MEDML_AUDIT_KEY is not set)" in used.output
    keyed = Settings(home=tmp_path, audit_key="new secret")  # the key set later: the old
    report = audit.verify(tracking, NAME, keyed)  # events need a keyed seal, else anyone could
    assert report.problems == [  # append unkeyed events before the first keyed one
        "events #1 to #2 are unkeyed and no keyed event vouches for them (anyone could have "
        "appended them); check them with `medml audit log`, then `medml audit seal` them where "
        "the key is set"
    ]
    with pytest.raises(PromotionError, match="audit trail does not verify"):
        promote(tracking, NAME, "1", reviewer="bob", reason="x", settings=keyed)
    sealed = seal(tracking, NAME, reviewer="admin", reason="checked v1's events", settings=keyed)
    assert sealed["scheme"] == audit.KEYED and sealed["sealed_through"] == 2
    report = audit.verify(tracking, NAME, keyed)
    assert report.intact and report.warnings == [
        "events #1 to #2 are unkeyed (written before MEDML_AUDIT_KEY was set)",
        NO_ANCHOR,
    ]
    with pytest.raises(audit.AuditError, match="is keyed and MEDML_AUDIT_KEY is not set"):
        audit.append(tracking, NAME, {"event": "note"}, settings=Settings(home=tmp_path))


def _runs_by_seq(tracking: Tracking) -> dict[int, str]:
    client = tracking.activate()
    experiment = client.get_experiment_by_name(audit.AUDIT_EXPERIMENT)
    return {int(r.data.params["seq"]): r.info.run_id
            for r in client.search_runs([experiment.experiment_id])}  # fmt: skip


def test_anchor_catches_truncation_erasure_and_an_outside_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loaded: list[str]
) -> None:
    monkeypatch.setenv("MEDML_AUDIT_ANCHOR", str(_anchor_folder(tmp_path)))
    tracking = Tracking.from_env()
    _versions(tracking, 3)
    for version in ("1", "2", "3"):  # events #4-#6, after the three registrations
        promote(tracking, NAME, version, reviewer="alice", reason=f"step {version}")
    assert audit.verify(tracking, NAME).intact
    client, runs = tracking.activate(), _runs_by_seq(tracking)
    second = audit.events(tracking, NAME)[4]
    hidden = {seq: client.get_run(run).data.params["hash"] for seq, run in runs.items()}

    # truncation with API calls only: hide the newest event, reset the head, move the alias
    client.set_tag(runs[6], audit.MODEL_TAG, "elsewhere")
    client.set_registered_model_tag(NAME, audit.HEAD_TAG, f"5:{hidden[5]}")
    client.set_registered_model_alias(NAME, "champion", str(second["version"]))
    unanchored = audit.verify(tracking, NAME, Settings(home=tmp_path))
    assert unanchored.intact and NO_ANCHOR in unanchored.warnings  # unseen, and said so
    problems = audit.verify(tracking, NAME).problems
    assert problems == [f"events #6 are anchored in {audit.anchor_path(Settings.from_env(), NAME)}"
                        " but not in the trail (the newest were removed, or the trail was "
                        "erased)"]  # fmt: skip
    assert _verify(tracking).exit_code == 6
    assert _predict(tracking, tmp_path).exit_code == 5 and not loaded  # refused at use time

    # erasure: every event hidden, the head removed
    for run in runs.values():
        client.set_tag(run, audit.MODEL_TAG, "elsewhere")
    client.delete_registered_model_tag(NAME, audit.HEAD_TAG)
    assert audit.verify(tracking, NAME, Settings(home=tmp_path)).intact  # unanchored: unseen
    assert "events #1, #2, #3, #4, #5, #6 are anchored" in " ".join(
        audit.verify(tracking, NAME).problems
    )
    erased = _verify(tracking)
    assert erased.exit_code == 6 and "are anchored" in erased.output, erased.output
    assert _predict(tracking, tmp_path).exit_code == 5 and not loaded


def test_champion_evidence_replaced_after_promotion_is_caught_by_verify_and_predict(
    tmp_path: Path, loaded: list[str]
) -> None:
    """A passing ``metrics.json`` logged onto the champion's finished run after it was promoted
    (plain MLflow write access): ``audit verify`` exits 6 and ``predict`` refuses (exit 5),
    both naming the artifact; ``--allow-unreviewed`` proceeds with a warning."""
    import mlflow

    from tests.integration.test_governance import _metrics

    tracking = Tracking.from_env()
    _versions(tracking, 1)
    promote(tracking, NAME, "1", reviewer="alice", reason="first")
    assert _verify(tracking).exit_code == 0
    run_id = tracking.activate().get_model_version(NAME, "1").run_id
    with mlflow.start_run(run_id=run_id):
        mlflow.log_dict(_metrics(0.99).to_dict(), "evaluation/metrics.json")
    verified = _verify(tracking)
    assert verified.exit_code == 6, verified.output
    assert "evaluation/metrics.json" in verified.output and "no longer there" in verified.output
    refused = _predict(tracking, tmp_path)
    assert refused.exit_code == 5 and "evaluation/metrics.json" in refused.output, refused.output
    assert not loaded
    allowed = _predict(tracking, tmp_path, "--allow-unreviewed")
    assert allowed.exit_code == 0 and "evaluation/metrics.json" in allowed.output


@pytest.mark.parametrize("damage", ["deleted", "a folder"])
def test_champion_evidence_removed_is_caught_and_a_store_that_does_not_answer_is_no_verdict(
    tmp_path: Path, loaded: list[str], monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """The champion's metrics.json deleted from the artifact store, or a folder put in its
    place: verify exits 6 and predict refuses (5). An artifact store that fails to answer is
    neither a forgery nor a pass: one line, exit 3, to be retried."""
    import shutil

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    tracking = Tracking.from_env()
    _versions(tracking, 1)
    promote(tracking, NAME, "1", reviewer="alice", reason="first")
    client = tracking.activate()
    run = client.get_run(client.get_model_version(NAME, "1").run_id)

    def unavailable(self: object, run_id: str, path: str, dst_path: str | None = None) -> str:
        raise MlflowException("API request failed with error code 503 != 200")

    with monkeypatch.context() as patched:
        patched.setattr(MlflowClient, "download_artifacts", unavailable)
        busy = _predict(tracking, tmp_path)
        assert busy.exit_code == 3 and "could not read" in busy.output, busy.output
        assert "try again" in busy.output and not loaded
    metrics = Path(run.info.artifact_uri.removeprefix("file://")) / "evaluation" / "metrics.json"
    assert metrics.is_file()
    metrics.unlink()
    if damage == "a folder":
        (metrics / "x.json").parent.mkdir()
        (metrics / "x.json").write_text("{}")
    verified = _verify(tracking)
    assert verified.exit_code == 6 and "evaluation/metrics.json" in verified.output, verified.output
    refused = _predict(tracking, tmp_path)
    assert refused.exit_code == 5 and "removed" in refused.output, refused.output
    assert not loaded
    shutil.rmtree(metrics, ignore_errors=True)


def test_anchor_catches_an_append_outside_medml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDML_AUDIT_ANCHOR", str(_anchor_folder(tmp_path)))
    tracking = Tracking.from_env()
    _versions(tracking, 2)
    promote(tracking, NAME, "1", reviewer="alice", reason="first")
    _forged_approval(tracking, "2", Settings(home=tmp_path))  # no anchor where the forger is
    assert "events #4 are not anchored" in " ".join(audit.verify(tracking, NAME).problems)
    assert _predict(tracking, tmp_path).exit_code == 5


@pytest.fixture()
def first_champion() -> Tracking:
    """Two registered versions; v1 promoted through the reviewed path."""
    tracking = Tracking.from_env()
    _versions(tracking, 2)
    promote(tracking, NAME, "1", reviewer="alice", reason="first")
    return tracking


def test_serve_checks_the_champion_and_serves_the_checked_version(
    monkeypatch: pytest.MonkeyPatch, first_champion: Tracking
) -> None:
    import os

    tracking = first_champion
    executed: list[list[str]] = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: executed.append(argv))
    serve = ["serve", "--model", f"{NAME}@champion", "--tracking-uri", tracking.uri]
    result = CliRunner().invoke(app, serve)
    assert result.exit_code == 0, result.output
    checked = _checked_copy(tracking, "1")
    assert executed[0][1:] == ["models", "serve", "-m", checked, "--env-manager", "local", "-h",
                               "127.0.0.1", "-p", "5001"]  # fmt: skip
    tracking.activate().set_registered_model_alias(NAME, "champion", "2")  # plain client
    result = CliRunner().invoke(app, serve)
    assert result.exit_code == 5 and "points at v2" in result.output and len(executed) == 1
    result = CliRunner().invoke(app, [*serve, "--allow-unreviewed"])
    assert result.exit_code == 0 and "warning: using an unreviewed champion" in result.output
    assert executed[1][4] == f"models:/{NAME}@champion"


def test_policy_requiring_key_and_anchor_fails_a_trail_without_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loaded: list[str]
) -> None:
    """With the key set and no anchor, resetting the head to an older event (a silent
    downgrade of the champion) cannot be seen — so a deployment requires both."""
    from tests.integration.test_governance import _policy

    monkeypatch.setenv("MEDML_AUDIT_KEY", "deployment secret")
    tracking = Tracking.from_env()
    _versions(tracking, 2)
    for version in ("1", "2"):
        promote(tracking, NAME, version, reviewer="alice", reason=f"step {version}")
    _policy(tmp_path, monkeypatch, "require_audit_key = true\nrequire_anchor = true\n")
    result = _verify(tracking)
    assert result.exit_code == 6 and "MEDML_AUDIT_ANCHOR is not set here, and the deployment's " \
        "policy" in result.output, result.output  # fmt: skip
    assert _predict(tracking, tmp_path).exit_code == 5 and loaded == []
    with pytest.raises(Exception, match="audit trail does not verify"):
        promote(tracking, NAME, "1", reviewer="bob", reason="back")
    monkeypatch.setenv("MEDML_AUDIT_ANCHOR", str(_anchor_folder(tmp_path)))
    assert "MEDML_AUDIT_ANCHOR is not set" not in " ".join(audit.verify(tracking, NAME).problems)


def test_s3_anchor_is_shared_catches_truncation_and_refuses_a_forked_event(
    s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An anchor every Airflow worker shares: one object per event on the S3 run store."""
    from medml.data.sources import s3_client

    s3_client().create_bucket(Bucket="medml-anchor")
    monkeypatch.setenv("MEDML_AUDIT_ANCHOR", "s3://medml-anchor/audit/")
    monkeypatch.setenv("MEDML_AUDIT_KEY", "deployment secret")
    tracking = Tracking.from_env()
    _versions(tracking, 2)  # events #1, #2
    for version in ("1", "2"):  # #3, #4
        promote(tracking, NAME, version, reviewer="alice", reason=f"step {version}")
    report = audit.verify(tracking, NAME)
    assert report.intact and report.warnings == [], (report.problems, report.warnings)
    where = audit.anchor_path(Settings.from_env(), NAME)
    assert where.startswith("s3://medml-anchor/audit/governed-classifier-")

    client, runs = tracking.activate(), _runs_by_seq(tracking)
    hidden = client.get_run(runs[3]).data.params["hash"]
    client.set_tag(runs[4], audit.MODEL_TAG, "elsewhere")  # the downgrade: hide #4, reset head
    client.set_registered_model_tag(NAME, audit.HEAD_TAG, f"3:{hidden}")
    client.set_registered_model_alias(NAME, "champion", "1")
    assert audit.verify(tracking, NAME).problems == [
        f"events #4 are anchored in {where} but not in the trail (the newest were removed, or "
        "the trail was erased)"
    ]
    with pytest.raises(audit.AuditError, match="two events claim the same number"):
        audit._anchor(Settings.from_env(), NAME, "4:" + "f" * 64)  # a forked #4
    audit._anchor(Settings.from_env(), NAME, f"3:{hidden}")  # the same line again: idempotent


def test_the_pyfunc_loader_given_the_registry_checks_the_champion(
    monkeypatch: pytest.MonkeyPatch, first_champion: Tracking
) -> None:
    import mlflow.pyfunc

    tracking = first_champion
    asked: list[str] = []

    def load_model(uri: str) -> Any:  # the registry, not the model file, is under test
        asked.append(uri)
        raise OSError("stand-in versions hold no model")

    monkeypatch.setattr(mlflow.pyfunc, "load_model", load_model)
    with pytest.raises(OSError):
        serving.load_classifier(f"models:/{NAME}@champion", tracking=tracking)
    assert asked == [_checked_copy(tracking, "1")]  # the checked version
    tracking.activate().set_registered_model_alias(NAME, "champion", "2")  # plain client
    with pytest.raises(UnreviewedChampion, match="points at v2"):
        serving.load_classifier(f"models:/{NAME}@champion", tracking=tracking)
    assert len(asked) == 1
    with pytest.warns(UserWarning, match="unreviewed champion"), pytest.raises(OSError):
        serving.load_classifier(f"models:/{NAME}@champion", tracking=tracking,
                                allow_unreviewed=True)  # fmt: skip


def test_a_champion_file_replaced_after_registration_is_refused_at_use_and_by_verify(
    tmp_path: Path, loaded: list[str]
) -> None:
    """A file of the champion's served model overwritten with the plain MLflow client (a
    decision threshold, the preprocessing, a fold model): ``predict`` refuses (exit 5) and
    ``audit verify`` exits 6; the registered bytes, put back, are served again."""
    import mlflow

    tracking = Tracking.from_env()
    _versions(tracking, 1)
    promote(tracking, NAME, "1", reviewer="alice", reason="first")
    assert _predict(tracking, tmp_path).exit_code == 0 and loaded == [_checked_copy(tracking, "1")]
    run_id = tracking.activate().get_model_version(NAME, "1").run_id
    with mlflow.start_run(run_id=run_id):
        mlflow.log_text('{"threshold": 0.999}', "model/MLmodel")  # the model's own files
    refused = _predict(tracking, tmp_path)
    assert refused.exit_code == 5 and "model's files are not the ones registered" in (
        refused.output
    ), refused.output
    assert len(loaded) == 1  # nothing loaded
    verified = _verify(tracking)
    assert verified.exit_code == 6 and "replaced after registration" in verified.output
    with mlflow.start_run(run_id=run_id):
        mlflow.log_text("stand-in", "model/MLmodel")  # the registered bytes again
    assert _predict(tracking, tmp_path).exit_code == 0 and _verify(tracking).exit_code == 0


def test_compiled_python_planted_in_the_model_never_reaches_the_checked_copy(
    tmp_path: Path, loaded: list[str]
) -> None:
    """A ``.pyc`` added under the model's ``__pycache__`` in the registry (it would run in place
    of the checked source) is stripped before the check and the load; a checked copy altered on
    this machine is replaced by the verified download."""
    import mlflow

    tracking = Tracking.from_env()
    _versions(tracking, 1)
    promote(tracking, NAME, "1", reviewer="alice", reason="first")
    run_id = tracking.activate().get_model_version(NAME, "1").run_id
    planted = tmp_path / "__pycache__" / "__init__.cpython-311.pyc"
    planted.parent.mkdir()
    planted.write_bytes(b"\x00payload")
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifact(str(planted), "model/code/medml/__pycache__")
    assert _predict(tracking, tmp_path).exit_code == 0
    checked = Path(_checked_copy(tracking, "1"))
    assert loaded == [str(checked)] and not list(checked.rglob("__pycache__"))
    (checked / "MLmodel").write_text("altered here")
    assert _predict(tracking, tmp_path).exit_code == 0  # replaced by the verified download
    assert (checked / "MLmodel").read_text() == "stand-in"
    assert _verify(tracking).exit_code == 0
