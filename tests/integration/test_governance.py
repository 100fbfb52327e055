"""Governance on a real MLflow registry: who may promote, the recomputed gate, and an audit
trail that is complete under concurrency and shows any edit or deletion."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medml import audit
from medml.cli import app
from medml.config import GateConfig, load_recipe
from medml.identity import LOCAL_ADMIN, Identity
from medml.metrics import GateOutcome, HoldoutMetrics
from medml.promotion import PromotionError, promote, rollback
from medml.registry import complete_version
from medml.tracking import Tracking
from tests.conftest import venv_env

pytestmark = pytest.mark.integration
NAME = "governed-classifier"


def _metrics(sensitivity_b: float) -> HoldoutMetrics:
    per_class = {"a": {"sensitivity": 0.9, "specificity": 0.8, "ppv": 0.8, "npv": 0.9, "f1": 0.85,
                       "support": 50},
                 "b": {"sensitivity": sensitivity_b, "specificity": 0.9, "ppv": 0.8, "npv": 0.8,
                       "f1": 0.8, "support": 50}}  # fmt: skip
    overall = {"balanced_accuracy": (0.9 + sensitivity_b) / 2, "macro_f1": 0.8, "accuracy": 0.85,
               "roc_auc_ovr_macro": 0.9, "cohen_kappa": 0.6, "expected_calibration_error": 0.05,
               "n": 100}  # fmt: skip
    return HoldoutMetrics(["a", "b"], overall, per_class, [[45, 5], [10, 40]],
                          ci95={"balanced_accuracy": [0.7, 0.9]})  # fmt: skip


def _versions(
    tracking: Tracking, count: int, *, sensitivity_b: float = 0.8, registrar: str = "trainer",
    registered_gate: GateOutcome | None = None, gate_settings: GateConfig | None = None,
    create_model: bool = True,
) -> None:  # fmt: skip
    """``count`` complete versions of NAME whose run logged metrics and the gate as params,
    with their registration in the audit trail — what `medml register` leaves (without
    training: the registry is what is under test)."""
    import mlflow

    client = tracking.activate()
    if create_model:
        client.create_registered_model(NAME)
    params = load_recipe("kidney-ct").flat_params()
    for _ in range(count):
        with mlflow.start_run() as run:
            mlflow.log_params({k: v for k, v in params.items() if k.startswith("registry.gate.")})
            mlflow.log_dict(_metrics(sensitivity_b).to_dict(), "evaluation/metrics.json")
            mlflow.log_text("stand-in", "model/MLmodel")
        version = client.create_model_version(NAME, f"runs:/{run.info.run_id}/model",
                                              run.info.run_id)  # fmt: skip
        client.set_model_version_tag(NAME, version.version, "gate", "passed")
        complete_version(
            tracking,
            NAME,
            str(version.version),
            {},
            None,
            run_id=run.info.run_id,
            registrar=Identity(registrar, LOCAL_ADMIN),
            gate=registered_gate or GateOutcome(True, []),
            gate_settings=gate_settings or load_recipe("kidney-ct").registry.gate,
        )


def _promotions(tracking: Tracking) -> list[dict]:
    """The trail's promote/rollback events (registrations left out)."""
    return [e for e in audit.events(tracking, NAME) if e["event"] != "register"]


def _policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    """Point MEDML_POLICY at a policy file with ``text`` (the tests run as root, the admin)."""
    path = tmp_path / "policy" / "policy.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    monkeypatch.setenv("MEDML_POLICY", str(path))
    return path


def test_twenty_concurrent_promotions_lose_no_event(tmp_path: Path) -> None:
    tracking = Tracking.from_env()
    _versions(tracking, 20)
    env = {**venv_env(), "MLFLOW_TRACKING_URI": tracking.uri}
    code = ("import sys; from medml.promotion import promote; from medml.tracking import "
            "Tracking; promote(Tracking.from_env(), sys.argv[1], sys.argv[2], "
            "reviewer=f'reviewer-{sys.argv[2]}', reason='concurrent')")  # fmt: skip
    processes = [subprocess.Popen([sys.executable, "-c", code, NAME, str(v)], env=env,
                                  stderr=subprocess.PIPE, text=True)
                 for v in range(1, 21)]  # fmt: skip
    failures = [p.stderr.read() for p in processes if p.wait(timeout=300) != 0]
    assert failures == []
    events = _promotions(tracking)
    assert sorted(int(e["version"]) for e in events) == list(range(1, 21))  # nothing lost
    assert [e["seq"] for e in events] == list(range(21, 41))  # after the 20 registrations
    report = audit.verify(tracking, NAME)
    assert report.intact and report.events == 40, report.problems
    champion = tracking.activate().get_model_version_by_alias(NAME, "champion").version
    assert str(champion) == events[-1]["version"]  # the last event is the one that stuck
    # decided under the lock: each promotion saw the one before it as the champion
    assert [e["previous_champion"] for e in events[1:]] == [e["version"] for e in events[:-1]]


def test_verify_catches_an_edited_event_a_deleted_one_and_a_removed_tail(tmp_path: Path) -> None:
    tracking = Tracking.from_env()
    _versions(tracking, 3)  # events #1-#3: the registrations
    for version in ("1", "2", "3"):  # #4-#6
        promote(tracking, NAME, version, reviewer="alice", reason=f"step {version}")
    result = CliRunner().invoke(app, ["audit", "verify", NAME, "--tracking-uri", tracking.uri])
    assert result.exit_code == 0 and "6 audit events, hash chain intact" in result.output

    database = tracking.uri.removeprefix("sqlite:///")
    run_of = {e["seq"]: r for e, r in _event_runs(tracking)}
    with sqlite3.connect(database) as db:  # what someone with database access could do
        row = db.execute("SELECT value FROM params WHERE key='event' AND run_uuid=?",
                         (run_of[5],)).fetchone()  # fmt: skip
        forged = json.loads(row[0]) | {"reviewer": "mallory"}
        db.execute("UPDATE params SET value=? WHERE key='event' AND run_uuid=?",
                   (json.dumps(forged, sort_keys=True), run_of[5]))  # fmt: skip
    result = CliRunner().invoke(app, ["audit", "verify", NAME, "--tracking-uri", tracking.uri])
    assert result.exit_code == 6 and "event #5 was edited after it was written" in result.output

    tracking.activate().delete_run(run_of[4])
    problems = audit.verify(tracking, NAME).problems
    assert "event #4 was deleted" in " ".join(problems)
    assert "event #4 is missing" in " ".join(problems)

    with sqlite3.connect(database) as db:  # drop the newest event entirely
        db.execute("DELETE FROM params WHERE run_uuid=?", (run_of[6],))
    assert any("the newest event should be 6:" in p for p in audit.verify(tracking, NAME).problems)


def _event_runs(tracking: Tracking) -> list[tuple[dict, str]]:
    client = tracking.activate()
    experiment = client.get_experiment_by_name(audit.AUDIT_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    return [(json.loads(r.data.params["event"]), r.info.run_id) for r in runs]


def test_promotion_identity_four_eyes_and_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracking = Tracking.from_env()
    _versions(tracking, 2, sensitivity_b=0.3)  # class b at or below chance: the gate fails
    client = tracking.activate()
    with pytest.raises(PromotionError, match="alice requested this promotion and cannot also"):
        promote(tracking, NAME, "1", reviewer="alice", reason="r", requested_by="alice",
                override_gate="x")  # fmt: skip
    with pytest.raises(PromotionError, match="did not pass its gate .*is at or below chance"):
        promote(tracking, NAME, "1", reviewer="bob", reason="r", requested_by="alice")
    with pytest.raises(PromotionError, match="bob may not override.*now: nobody"):
        promote(tracking, NAME, "1", reviewer="bob", reason="r", override_gate="urgent")
    monkeypatch.setenv("MEDML_GATE_OVERRIDERS", "bob")  # the promoter's own environment
    with pytest.raises(PromotionError, match="bob may not override.*now: nobody"):
        promote(tracking, NAME, "1", reviewer="bob", reason="r", override_gate="urgent")
    assert _promotions(tracking) == []  # refused: nothing moved, nothing recorded
    _policy(tmp_path, monkeypatch, 'gate_overriders = ["bob"]\n')
    event = promote(tracking, NAME, "1", reviewer="bob", reason="r", requested_by="alice",
                    override_gate="urgent", identity="airflow")  # fmt: skip
    assert (event["requested_by"], event["reviewer"], event["identity"]) == ("alice", "bob",
                                                                             "airflow")  # fmt: skip
    assert event["gate"] == "failed" and event["gate_override"] == "urgent"
    assert event["registrar"] == "trainer" and len(event["policy"]) == 64  # the file's digest
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"

    import os
    import pwd

    runner = CliRunner()
    refused = runner.invoke(app, ["promote", NAME, "--version", "2", "--reason", "cli",
                                  "--tracking-uri", tracking.uri])  # fmt: skip
    assert refused.exit_code == 5 and "did not pass its gate" in refused.output
    assert "warning: MEDML_GATE_OVERRIDERS is ignored" in refused.output
    override = ["--override-gate", "me", "--tracking-uri", tracking.uri]
    refused = runner.invoke(app, ["promote", NAME, "--version", "2", "--reason", "cli", *override])
    assert refused.exit_code == 5 and f"{pwd.getpwuid(os.getuid()).pw_name} may not override" in (
        refused.output
    )
    assert runner.invoke(app, ["promote", NAME, "--version", "2", "--reviewer", "x", "--reason",
                               "y"]).exit_code == 2  # fmt: skip # no free-text identity


def test_registrar_may_not_approve_where_the_policy_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracking = Tracking.from_env()
    _versions(tracking, 1, registrar="carol")
    registered = audit.events(tracking, NAME)[0]
    assert (registered["event"], registered["registrar"], registered["version"]) == (
        "register", "carol", "1")  # fmt: skip
    _policy(tmp_path, monkeypatch, "registrar_may_approve = false\n")
    with pytest.raises(PromotionError, match="carol registered governed-classifier v1 .*event #1"):
        promote(tracking, NAME, "1", reviewer="carol", reason="my own model")
    assert promote(tracking, NAME, "1", reviewer="dave", reason="reviewed")["registrar"] == "carol"


def test_replaced_gate_evidence_is_refused(tmp_path: Path) -> None:
    """A chance-level version whose run gets a fake passing metrics.json after registration."""
    import mlflow

    tracking = Tracking.from_env()
    _versions(tracking, 1, sensitivity_b=0.3)
    client = tracking.activate()
    run_id = client.get_model_version(NAME, "1").run_id
    with pytest.raises(PromotionError, match="did not pass its gate"):
        promote(tracking, NAME, "1", reviewer="bob", reason="r")
    with mlflow.start_run(run_id=run_id):  # plain MLflow write access, onto the finished run
        mlflow.log_dict(_metrics(0.95).to_dict(), "evaluation/metrics.json")
    with pytest.raises(
        PromotionError,
        match=r"evaluation/metrics.json\) is not what "
        "registration pinned in audit event #1",
    ):
        promote(tracking, NAME, "1", reviewer="bob", reason="r")
    assert _promotions(tracking) == []


def test_an_artifact_registration_did_not_pin_counts_only_where_the_gate_reads_it() -> None:
    """A version registered before operating_point.json was pinned (every binary version of
    then) is not "changed" by it; a version whose pinned gate bounds the operating point is."""
    import mlflow

    point = {"positive_class": "b", "threshold": 0.4,
             "holdout": {"sensitivity": 0.95, "specificity": 0.9, "ppv": 0.9}}  # fmt: skip
    tracking = Tracking.from_env()
    _versions(tracking, 1)  # pinned: metrics.json only
    client = tracking.activate()
    with mlflow.start_run(run_id=client.get_model_version(NAME, "1").run_id):
        mlflow.log_dict(point, "evaluation/operating_point.json")
    assert promote(tracking, NAME, "1", reviewer="bob", reason="r")["version"] == "1"

    bounded = GateConfig.model_validate(
        {
            **load_recipe("kidney-ct").registry.gate.model_dump(),
            "operating_point": {"sensitivity": {"min": 0.9}},
        }
    )
    _versions(tracking, 1, gate_settings=bounded, create_model=False)  # v2: no point at all
    with pytest.raises(PromotionError, match="no holdout rates at the operating point"):
        promote(tracking, NAME, "2", reviewer="bob", reason="r")
    with mlflow.start_run(run_id=client.get_model_version(NAME, "2").run_id):
        mlflow.log_dict(point, "evaluation/operating_point.json")  # a passing point, added
    with pytest.raises(PromotionError, match=r"operating_point.json\) is not what registration"):
        promote(tracking, NAME, "2", reviewer="bob", reason="r")
    from medml.review import review

    text, _ = review(tracking, NAME, "2", markdown=True)  # what the approval request shows
    assert text.startswith("**Warning:** gate evidence evidence-changed"), text[:300]


def test_a_version_registered_outside_medml_is_refused() -> None:
    import mlflow

    tracking = Tracking.from_env()
    _versions(tracking, 1)
    client = tracking.activate()
    with mlflow.start_run() as run:
        mlflow.log_dict(_metrics(0.95).to_dict(), "evaluation/metrics.json")
    client.create_model_version(NAME, f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_model_version_tag(NAME, "2", "medml.complete", "true")  # tags are not evidence
    with pytest.raises(PromotionError, match="v2 has no registration event in the audit trail"):
        promote(tracking, NAME, "2", reviewer="bob", reason="r")


def test_policy_file_the_caller_can_edit_grants_nothing(tmp_path: Path) -> None:
    from medml.policy import PolicyError, load_policy

    path = tmp_path / "mine.toml"
    path.write_text('gate_overriders = ["mallory"]\n')
    path.chmod(0o644)
    tmp_path.chmod(0o755)
    assert load_policy(path, uid=0).gate_overriders == {"mallory"}  # root: the administrator
    other = 65534  # nobody: neither owner nor group of a root-owned 0644 file
    assert load_policy(path, uid=other).gate_overriders == {"mallory"}
    path.chmod(0o666)
    with pytest.raises(PolicyError, match="is writable by everyone"):
        load_policy(path, uid=other)
    path.chmod(0o644)
    path.write_text("gate_overriders = 'mallory'\n")
    with pytest.raises(PolicyError, match="gate_overriders must be a list of user names"):
        load_policy(path, uid=0)
    path.write_text("anyone_may_promote = true\n")
    with pytest.raises(PolicyError, match="unknown keys \\['anyone_may_promote'\\]"):
        load_policy(path, uid=0)
    assert load_policy(tmp_path / "absent.toml").source.startswith("built-in defaults")
    import os

    mount = tmp_path / "configmap"  # how Kubernetes mounts a ConfigMap: links into ..data/
    (mount / "..data").mkdir(parents=True)
    (mount / "..data" / "policy.toml").write_text('gate_overriders = ["dr.chief"]\n')
    (mount / "policy.toml").symlink_to("..data/policy.toml")
    mount.chmod(0o755)
    (mount / "..data").chmod(0o755)
    assert load_policy(mount / "policy.toml", uid=other).gate_overriders == {"dr.chief"}
    os.chown(mount / "..data" / "policy.toml", other, other)  # the target is the caller's
    with pytest.raises(PolicyError, match="is owned by you"):
        load_policy(mount / "policy.toml", uid=other)
    os.mkfifo(tmp_path / "fifo.toml")
    with pytest.raises(PolicyError, match="is not a regular file"):  # refused, never opened
        load_policy(tmp_path / "fifo.toml", uid=0)
    os.chown(path, 1234, 1234)
    with pytest.raises(PolicyError, match="is owned by you \\(uid 1234\\), so it cannot grant"):
        load_policy(path, uid=1234)


def test_a_policy_file_you_own_is_refused_in_an_unprivileged_process(tmp_path: Path) -> None:
    """A user who points MEDML_POLICY at their own file: a forked child really runs as them."""
    import os
    import tempfile

    from medml.policy import PolicyError
    from medml.settings import Settings

    folder = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's own folders are private to root
    folder.chmod(0o755)
    policy = folder / "policy.toml"
    policy.write_text('gate_overriders = ["nobody"]\n')
    os.chown(policy, 65534, 65534)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read)
        os.setgid(65534)
        os.setuid(65534)
        try:
            Settings(home=tmp_path, policy_file=str(policy)).policy()
            message = "believed"
        except PolicyError as err:
            message = str(err)
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    os.waitpid(child, 0)
    shutil.rmtree(folder)
    assert "is owned by you (uid 65534), so it cannot grant you anything" in message, message


def test_local_admin_off_refuses_the_unauthenticated_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracking = Tracking.from_env()
    _versions(tracking, 1)
    _policy(tmp_path, monkeypatch, "local_admin = false\n")
    result = CliRunner().invoke(app, ["promote", NAME, "--version", "1", "--reason", "r",
                                      "--tracking-uri", tracking.uri])  # fmt: skip
    assert result.exit_code == 5 and "turns local-admin mode off" in result.output
    assert _promotions(tracking) == []
    _policy(tmp_path, monkeypatch, "local_admin = true\n")
    result = CliRunner().invoke(app, ["promote", NAME, "--version", "1", "--reason", "r",
                                      "--tracking-uri", tracking.uri])  # fmt: skip
    assert result.exit_code == 0 and "(local-admin)" in result.output, result.output
    assert _promotions(tracking)[0]["identity"] == "local-admin"


def test_gate_settings_are_the_pinned_ones_not_params_added_to_the_run() -> None:
    """Adversarial review: params with a trailing space relaxed the gate after registration."""
    import mlflow

    tracking = Tracking.from_env()
    _versions(tracking, 1, sensitivity_b=0.3)
    run_id = tracking.activate().get_model_version(NAME, "1").run_id
    with mlflow.start_run(run_id=run_id):
        mlflow.log_params({"registry.gate.require_better_than_chance ": "False",
                           "registry.gate.thresholds.balanced_accuracy.min ": "0.0"})  # fmt: skip
    with pytest.raises(PromotionError, match="did not pass its gate"):
        promote(tracking, NAME, "1", reviewer="bob", reason="r")


def test_a_gate_that_failed_at_registration_stays_failed() -> None:
    """Adversarial review: a champion that could not be scored left no champion metrics, so the
    recomputed gate skipped non-inferiority and passed."""
    tracking = Tracking.from_env()
    failed = GateOutcome(False, ["champion v3 could not be scored on this holdout"])
    _versions(tracking, 1, registered_gate=failed)  # its own metrics pass
    with pytest.raises(PromotionError, match="failed its gate at registration .event #1: "
                                             "champion v3 could not be scored"):  # fmt: skip
        promote(tracking, NAME, "1", reviewer="bob", reason="r")


def test_rollback_restores_what_the_trail_says_not_the_alias() -> None:
    """Adversarial review: `previous-champion` moved with the plain client to an unregistered
    version, then an honest rollback made it champion."""
    import mlflow

    tracking = Tracking.from_env()
    _versions(tracking, 2)
    for version in ("1", "2"):
        promote(tracking, NAME, version, reviewer="alice", reason=f"step {version}")
    client = tracking.activate()
    with mlflow.start_run() as run:
        mlflow.log_text("junk", "model/MLmodel")
    junk = client.create_model_version(NAME, f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_model_version_tag(NAME, junk.version, "medml.complete", "true")
    client.set_registered_model_alias(NAME, "previous-champion", junk.version)
    event = rollback(tracking, NAME, reviewer="bob", reason="regression")
    assert (event["version"], event["demoted"]) == ("1", "2")
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"


def test_a_missing_policy_file_named_explicitly_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adversarial review: MEDML_POLICY=/nonexistent fell back to the permissive defaults."""
    tracking = Tracking.from_env()
    _versions(tracking, 1)
    monkeypatch.setenv("MEDML_POLICY", str(tmp_path / "nonexistent.toml"))
    result = CliRunner().invoke(app, ["promote", NAME, "--version", "1", "--reason", "r",
                                      "--tracking-uri", tracking.uri])  # fmt: skip
    assert result.exit_code == 5 and "does not exist" in result.output, result.output
    assert _promotions(tracking) == []


def test_odd_model_names_and_version_spellings_are_one_line() -> None:
    tracking = Tracking.from_env()
    _versions(tracking, 2)
    assert promote(tracking, NAME, " 02", reviewer="alice", reason="r")["version"] == "2"
    result = CliRunner().invoke(app, ["audit", "verify", "gov'x", "--tracking-uri",
                                      tracking.uri])  # fmt: skip
    assert result.exit_code in (3, 5, 6) and "quote" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_the_local_admin_cli_reviewer_is_the_os_account_not_user_or_logname(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``USER="Dr. Chief Radiologist" medml promote …`` on an unauthenticated store (local-admin
    mode): the recorded reviewer is the process's OS account, with its identity source."""
    import os
    import pwd

    tracking = Tracking.from_env()
    _versions(tracking, 1, registrar="trainer")
    monkeypatch.setenv("USER", "Dr. Chief Radiologist")
    monkeypatch.setenv("LOGNAME", "Dr. Chief Radiologist")
    result = CliRunner().invoke(app, ["promote", NAME, "--version", "1", "--reason", "reviewed",
                                      "--tracking-uri", tracking.uri])  # fmt: skip
    assert result.exit_code == 0, result.output
    account = pwd.getpwuid(os.getuid()).pw_name
    promotion = audit.events(tracking, NAME)[-1]
    assert (promotion["reviewer"], promotion["identity"]) == (account, LOCAL_ADMIN)
    assert "Dr. Chief" not in json.dumps(audit.events(tracking, NAME))
