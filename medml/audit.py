"""The audit trail of the registry: append-only, complete and tamper-evident.

Every promotion, rollback and review decision is one MLflow run in the experiment
:data:`AUDIT_EXPERIMENT`, tagged with the registered model. The event is logged as run
*params*, which MLflow never lets a client change, together with its sequence number, the hash
of the event before it and its own hash of the previous hash and the event's canonical JSON:
HMAC-SHA256 keyed with the deployment's secret (``MEDML_AUDIT_KEY``,
:attr:`medml.settings.Settings.audit_key`) when one is set, else plain SHA-256. Each event
records its ``scheme`` (:data:`KEYED` or :data:`UNKEYED`; events written before the field
existed are unkeyed), so an old unkeyed trail still verifies, as unkeyed. The newest
``seq:hash`` is also kept on the registered model (:data:`HEAD_TAG`).

- **Complete**: one run per event, nothing is cut (an event longer than an MLflow param is
  refused before anything moves); events are appended under a lock (an MLflow registered model
  named ``<model>.audit-lock``, whose creation is atomic in every MLflow store), so concurrent
  promotions each get their own sequence number.
- **Tamper-evident**: :func:`verify` recomputes the chain. An edited event (its params changed
  in the database), a deleted event (a run deleted or missing), a reordered or inserted event,
  or removed newest events (the head tag disagrees) are each reported by sequence number.
  ``medml audit verify MODEL`` runs it.
- **Keyed**: with a key, an event appended by someone without it (an unkeyed event after keyed
  ones, or a keyed hash that does not match) fails :func:`verify`; without a key, the report
  warns that the chain is unkeyed (a plain SHA-256 chain can be extended by anyone).
- **Anchored**: with ``MEDML_AUDIT_ANCHOR`` (:attr:`medml.settings.Settings.audit_anchor`) each
  event's ``seq:hash`` is also appended to a local file the MLflow client cannot reach
  (:func:`anchor_path`), or written as one object per event under an ``s3://`` prefix that
  every Airflow worker shares (created only if absent); :func:`verify` compares the trail
  with it, so removed newest events (the head tag reset too), an erased trail (every audit
  run deleted, hidden or renamed away) and events appended outside medml are detected.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medml.errors import MedmlError
from medml.settings import Settings
from medml.tracking import Tracking

AUDIT_EXPERIMENT = "medml-audit"
HEAD_TAG = "medml.audit.head"
MODEL_TAG = "medml.audit.model"
LOCK_SUFFIX = ".audit-lock"
GENESIS = "0" * 64
MAX_EVENT_CHARS = 6000  # an MLflow param's limit
LOCK_TIMEOUT_S = 600.0
STALE_LOCK_S = 900.0  # a lock older than this was left by a process that died (a promotion
# verifies the trail and downloads its evidence under the lock: never break a live one)
KEYED = "hmac-sha256"
UNKEYED = "sha256"


class AuditError(MedmlError):
    """The audit trail cannot be written (the message says why; nothing was changed)."""


@dataclass(frozen=True)
class AuditReport:
    """What :func:`verify` found."""

    model: str
    events: int
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """What weakens the trail without breaking it (e.g. an unkeyed chain)."""

    @property
    def intact(self) -> bool:
        """True when the chain is complete and unedited."""
        return not self.problems


def event_hash(previous: str, event: dict[str, Any], key: bytes | None = None) -> str:
    """The hash of the previous event's hash and this event's canonical JSON: HMAC-SHA256 with
    ``key``, plain SHA-256 without one."""
    canonical = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    message = f"{previous}\n{canonical}".encode()
    if key:
        return hmac.new(key, message, hashlib.sha256).hexdigest()
    return hashlib.sha256(message).hexdigest()


def _key(settings: Settings | None) -> bytes | None:
    """The deployment's audit key as bytes (``None``: not set)."""
    key = (settings or Settings.from_env()).audit_key
    return key.encode() if key else None


class Trail:
    """``model``'s trail while :func:`transaction` holds its lock: read it, append to it, and
    move aliases in the same order as the events that record them."""

    def __init__(self, client: Any, experiment_id: str, model: str, settings: Settings) -> None:
        self._client, self._experiment_id, self.model = client, experiment_id, model
        self._settings = settings
        self._read: list[dict[str, Any]] | None = None

    def records(self) -> list[dict[str, Any]]:
        """The trail's stored records, read once: under the lock only this trail appends."""
        if self._read is None:
            self._read = _records(self._client, self._experiment_id, self.model)
        return self._read

    def events(self) -> list[dict[str, Any]]:
        """The model's events, oldest first (deleted ones left out)."""
        ordered = sorted(self.records(), key=lambda r: r["seq"])
        return [r["event"] for r in ordered if not r["deleted"]]

    def append(self, event: dict[str, Any]) -> dict[str, Any]:
        """Append ``event``; returns it with ``seq``, ``scheme``, ``prev_hash`` and ``hash``.

        Raises:
            AuditError: the event is too long to be stored whole, or the anchor could not be
                written.
        """
        key = _key(self._settings)
        text = json.dumps(event, sort_keys=True, ensure_ascii=False)
        if len(text) > MAX_EVENT_CHARS - 200:
            raise AuditError(
                f"the audit event is {len(text)} characters; at most {MAX_EVENT_CHARS - 200} are "
                "stored whole: shorten the reason"
            )
        records = [r for r in self.records() if not r["deleted"]]
        self._refuse_downgrade(records, key)
        last = max(records, key=lambda r: r["seq"], default=None)
        seq = 1 if last is None else last["seq"] + 1
        previous = GENESIS if last is None else last["hash"]
        record = {**event, "model": self.model, "seq": seq, "scheme": KEYED if key else UNKEYED,
                  "anchored": bool(self._settings.audit_anchor)}  # fmt: skip
        digest = event_hash(previous, record, key)
        _write(self._client, self._experiment_id, self.model, record, previous, digest)
        self._client.set_registered_model_tag(self.model, HEAD_TAG, f"{seq}:{digest}")
        _anchor(self._settings, self.model, f"{seq}:{digest}")
        self.records().append({"seq": seq, "event": record, "prev_hash": previous,
                               "hash": digest, "run_id": "", "deleted": False})  # fmt: skip
        return {**record, "prev_hash": previous, "hash": digest}

    def _refuse_downgrade(self, records: list[dict[str, Any]], key: bytes | None) -> None:
        """A process without the key or the anchor must not append to a trail that has them:
        its event would break the chain for everyone (a misconfigured writer)."""
        if key is None and any(r["event"].get("scheme") == KEYED for r in records):
            raise AuditError(f"{self.model}'s audit trail is keyed and MEDML_AUDIT_KEY is not "
                             "set in this process; nothing was written")  # fmt: skip
        if not self._settings.audit_anchor and any(r["event"].get("anchored") for r in records):
            raise AuditError(f"{self.model}'s audit trail is anchored and MEDML_AUDIT_ANCHOR is "
                             "not set in this process; nothing was written")  # fmt: skip


@contextmanager
def transaction(tracking: Tracking, model: str, *,
                settings: Settings | None = None) -> Iterator[Trail]:  # fmt: skip
    """Hold ``model``'s audit lock: whatever the caller reads, appends and moves inside is one
    step in one order (two racing promotions cannot both see the same champion).

    Raises:
        AuditError: the lock could not be taken.
    """
    client = tracking.activate()
    experiment_id = _experiment_id(client)
    with _lock(client, model):
        yield Trail(client, experiment_id, model, settings or Settings.from_env())


def append(tracking: Tracking, model: str, event: dict[str, Any], *,
           settings: Settings | None = None) -> dict[str, Any]:  # fmt: skip
    """Append ``event`` to ``model``'s trail under its lock (:meth:`Trail.append`); keyed
    with ``settings.audit_key`` when set (default settings: from the environment).

    Raises:
        AuditError: the event is too long to be stored whole, the lock could not be taken, or
            the anchor (``settings.audit_anchor``) could not be written.
    """
    with transaction(tracking, model, settings=settings) as trail:
        return trail.append(event)


def events(tracking: Tracking, model: str) -> list[dict[str, Any]]:
    """``model``'s events, oldest first (deleted ones left out; :func:`verify` reports them)."""
    records = _stored(tracking.activate(), model)
    return [r["event"] for r in sorted(records, key=lambda r: r["seq"]) if not r["deleted"]]


def verify(tracking: Tracking, model: str, settings: Settings | None = None,
           trail: Trail | None = None) -> AuditReport:  # fmt: skip
    """Recompute ``model``'s hash chain and report every break by sequence number (of the
    records ``trail`` holds, when the caller holds the trail's lock; else read now).

    With the deployment's key (``settings.audit_key``; default settings: from the environment)
    keyed events are checked with it, and an unkeyed event after a keyed one is a break (it was
    appended without the key); unkeyed events before the first keyed one (written before the
    key was set) are a warning. Without a key the report warns that the chain is unkeyed.
    """
    settings = settings or Settings.from_env()
    key = _key(settings)
    client = tracking.activate()
    records = trail.records() if trail is not None else _stored(client, model)
    problems = [f"event #{r['seq']} was deleted (MLflow run {r['run_id']})"
                for r in records if r["deleted"]]  # fmt: skip
    alive = sorted((r for r in records if not r["deleted"]), key=lambda r: r["seq"])
    previous, keyed_seen, legacy = GENESIS, False, 0
    for expected, record in enumerate(alive, start=1):
        if record["seq"] != expected:
            problems.append(f"event #{expected} is missing (the next one is #{record['seq']})")
        if record["prev_hash"] != previous:
            problems.append(f"event #{record['seq']} does not follow the event before it "
                            "(one was removed, inserted or reordered)")  # fmt: skip
        problems.extend(_hash_problems(record, key, keyed_seen))
        if record["event"].get("model", model) != model:
            problems.append(f"event #{record['seq']} belongs to {record['event'].get('model')!r},"
                            " not this model (copied from another trail)")  # fmt: skip
        keyed_seen = keyed_seen or record["event"].get("scheme") == KEYED
        legacy += not keyed_seen
        previous = record["hash"]
    head = _head(client, model)
    newest = f"{alive[-1]['seq']}:{alive[-1]['hash']}" if alive else None
    if head != newest:
        problems.append(f"the newest event should be {head or 'none'}, found {newest or 'none'} "
                        "(the newest events were removed, or the head was changed)")  # fmt: skip
    warnings = []
    if key is None:
        warnings.append("the hash chain is unkeyed (MEDML_AUDIT_KEY is not set): anyone with "
                        "MLflow write access can append an event that verifies")  # fmt: skip
    elif legacy and not keyed_seen:
        problems.append(f"events #1 to #{legacy} are unkeyed and no keyed event vouches for "
                        "them (anyone could have appended them); check them with `medml audit "
                        "log`, then `medml audit seal` them where the key is set")  # fmt: skip
    elif legacy:
        warnings.append(f"events #1 to #{legacy} are unkeyed (written before MEDML_AUDIT_KEY "
                        "was set)")  # fmt: skip
    if settings.audit_anchor:
        try:
            anchored, unanchored = _anchor_findings(anchor_path(settings, model), alive)
        except AuditError as err:
            anchored, unanchored = [str(err)], []
        problems.extend(anchored)
        warnings.extend(unanchored)
    else:
        warnings.append("the trail has no anchor (MEDML_AUDIT_ANCHOR is not set): removing the "
                        "newest events and resetting the head tag to an older event cannot be "
                        "detected")  # fmt: skip
    policy = settings.policy()
    required = [
        (policy.require_audit_key and key is None, "MEDML_AUDIT_KEY"),
        (policy.require_anchor and not settings.audit_anchor, "MEDML_AUDIT_ANCHOR"),
    ]
    problems += [f"{name} is not set here, and the deployment's policy ({policy.source}) "
                 "requires it" for missing, name in required if missing]  # fmt: skip
    return AuditReport(model, len(alive), problems, warnings)


def anchor_path(settings: Settings, model: str) -> str:
    """``model``'s anchor under ``settings.audit_anchor``: a file in a local folder, or an
    ``s3://`` prefix holding one object per event (a name no other model gets)."""
    from medml.io import safe_name

    name = f"{safe_name(model)}-{hashlib.sha256(model.encode()).hexdigest()[:12]}"
    if settings.audit_anchor.startswith("s3://"):
        return f"{settings.audit_anchor.rstrip('/')}/{name}/"
    return str(Path(settings.audit_anchor) / f"{name}.anchor")


def _anchor(settings: Settings | None, model: str, line: str) -> None:
    """Record ``seq:hash`` in ``model``'s anchor (when one is configured): appended to the local
    file and synced, or written as the object ``<seq>`` under the S3 prefix only if no object of
    that name exists (a second, different event with the same number is refused).

    Raises:
        AuditError: the anchor cannot be written (the event is in MLflow; no alias moved).
    """
    settings = settings or Settings.from_env()
    if not settings.audit_anchor:
        return
    where = anchor_path(settings, model)
    seq = line.split(":")[0]
    try:
        if where.startswith("s3://"):
            _anchor_object(where, int(seq), line)
            return
        path = Path(where)
        if not path.parent.is_dir():  # a mistyped or unmounted anchor must not be created
            raise OSError(f"the anchor folder {path.parent} does not exist")
        with path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        raise AuditError(
            f"event #{seq} was written but not anchored in {where} ({err.strerror or err}); fix "
            "the anchor, then run `medml audit verify`"
        ) from None


def _anchor_object(prefix: str, seq: int, line: str) -> None:
    """Create ``<prefix><seq>`` holding ``line``, refusing to replace an existing one."""
    from botocore.exceptions import BotoCoreError, ClientError

    from medml.data.sources import parse_s3_uri, s3_client

    bucket, key_prefix = parse_s3_uri(prefix)
    client = s3_client()
    key = f"{key_prefix}{seq:010d}"
    try:
        client.put_object(Bucket=bucket, Key=key, Body=line.encode(), IfNoneMatch="*")
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "412"):
            raise OSError(f"S3 refused the anchor object: {err.response['Error'].get('Code')}") \
                from None  # fmt: skip
        held = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        if held != line:
            raise OSError(f"the anchor already holds event #{seq} as {held}: two events claim "
                          "the same number (a forked trail)") from None  # fmt: skip
    except BotoCoreError as err:
        raise OSError(f"S3 cannot be reached: {type(err).__name__}") from None


def _anchored_lines(where: str) -> list[str]:
    """The ``seq:hash`` lines in an anchor (none when it does not exist yet)."""
    if not where.startswith("s3://"):
        if not Path(where).parent.is_dir():
            raise AuditError(f"the anchor folder {Path(where).parent} does not exist (mistyped, "
                             "or not mounted here)")  # fmt: skip
        try:
            return Path(where).read_text(encoding="utf-8").split()
        except FileNotFoundError:
            return []
    from medml.data.sources import parse_s3_uri, s3_client

    bucket, key_prefix = parse_s3_uri(where)
    client = s3_client()
    lines = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix):
        for item in page.get("Contents", []):
            lines.append(client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode())
    return lines


def _anchor_findings(where: str, alive: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """``(problems, warnings)``: the trail's events compared with the anchor's lines."""
    path = where
    lines = _anchored_lines(where)
    anchored: dict[int, str] = {}
    for line in lines:
        seq, _, digest = line.partition(":")
        anchored[int(seq) if seq.isdigit() else -1] = digest
    chain = {r["seq"]: r["hash"] for r in alive}
    gone = [s for s in sorted(anchored) if s not in chain]
    changed = [s for s in sorted(anchored) if s in chain and chain[s] != anchored[s]]
    first = min(anchored, default=None)
    outside = [s for s in sorted(chain) if s not in anchored and first is not None and s > first]
    before = [s for s in sorted(chain) if first is None or s < first]
    problems = []
    if gone:
        problems.append(f"events {_seqs(gone)} are anchored in {path} but not in the trail (the "
                        "newest were removed, or the trail was erased)")  # fmt: skip
    if changed:
        problems.append(f"events {_seqs(changed)} differ from their anchored hashes in {path}")
    if outside:
        problems.append(f"events {_seqs(outside)} are not anchored in {path} (appended outside "
                        "medml, or the anchor could not be written)")  # fmt: skip
    claimed = [r["seq"] for r in alive if r["seq"] in before and r["event"].get("anchored")]
    if claimed:
        problems.append(f"events {_seqs(claimed)} were anchored when written but are not in "
                        f"{path} (the anchor was replaced, or is not the one they were written "
                        "to)")  # fmt: skip
    before = [seq for seq in before if seq not in claimed]
    warnings = [f"events {_seqs(before)} are not anchored (written before MEDML_AUDIT_ANCHOR "
                "was set)"] if before else []  # fmt: skip
    return problems, warnings


def _seqs(numbers: list[int]) -> str:
    return ", ".join(f"#{n}" for n in numbers)


def _hash_problems(record: dict[str, Any], key: bytes | None, keyed_seen: bool) -> list[str]:
    """Why ``record``'s own hash cannot be trusted (empty: it can)."""
    seq, scheme = record["seq"], record["event"].get("scheme", UNKEYED)
    if scheme == KEYED:
        if key is None:
            return [f"event #{seq} is keyed ({KEYED}) and MEDML_AUDIT_KEY is not set here: it "
                    "cannot be verified"]  # fmt: skip
        if not hmac.compare_digest(event_hash(record["prev_hash"], record["event"], key),
                                   record["hash"]):  # fmt: skip
            return [f"event #{seq} was edited after it was written, or written without the "
                    "deployment's audit key"]  # fmt: skip
        return []
    if scheme != UNKEYED:
        return [f"event #{seq} names an unknown hash scheme {scheme!r}"]
    if event_hash(record["prev_hash"], record["event"]) != record["hash"]:
        return [f"event #{seq} was edited after it was written"]
    if key is not None and keyed_seen:
        return [f"event #{seq} is unkeyed after keyed events: it was appended without the "
                "deployment's audit key"]  # fmt: skip
    return []


def _experiment_id(client: Any) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(AUDIT_EXPERIMENT, tags={"medml.kind": "audit"}))
    except MlflowException:  # created by a concurrent writer
        return str(client.get_experiment_by_name(AUDIT_EXPERIMENT).experiment_id)


def _write(client: Any, experiment_id: str, model: str, record: dict[str, Any], previous: str,
           digest: str) -> None:  # fmt: skip
    from mlflow.entities import Param

    run = client.create_run(experiment_id, run_name=f"{model} #{record['seq']}",
                            tags={MODEL_TAG: model, "medml.kind": "audit"})  # fmt: skip
    event = json.dumps(record, sort_keys=True, ensure_ascii=False)
    params = {"event": event, "seq": str(record["seq"]), "prev_hash": previous, "hash": digest}
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    client.set_terminated(run.info.run_id)


def _stored(client: Any, model: str) -> list[dict[str, Any]]:
    """``model``'s records as stored now (none before the audit experiment exists)."""
    experiment = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    return [] if experiment is None else _records(client, experiment.experiment_id, model)


def _records(client: Any, experiment_id: str, model: str) -> list[dict[str, Any]]:
    from mlflow.entities import ViewType

    if "'" in model or "\\" in model:  # MLflow's filter strings cannot quote them
        raise AuditError(f"model name {model!r} has a quote or backslash; medml does not "
                         "govern such names (rename the registered model)")  # fmt: skip
    found: list[dict[str, Any]] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{MODEL_TAG}` = '{model}'",
                                  run_view_type=ViewType.ALL, max_results=1000,
                                  page_token=token)  # fmt: skip
        for run in page:
            params = run.data.params
            try:
                event = json.loads(params["event"])
                seq = int(params["seq"])
            except (KeyError, ValueError):
                continue  # a run being written right now (its params are not there yet)
            found.append({"seq": seq, "event": event, "prev_hash": params.get("prev_hash", ""),
                          "hash": params.get("hash", ""), "run_id": run.info.run_id,
                          "deleted": run.info.lifecycle_stage == "deleted"})  # fmt: skip
        token = page.token
        if not token:
            return found


def _head(client: Any, model: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(model).tags.get(HEAD_TAG)
    except MlflowException:
        return None


@contextmanager
def _lock(client: Any, model: str) -> Iterator[None]:
    """Hold ``<model>.audit-lock`` (a registered model: creating one is atomic) while appending."""
    from mlflow.exceptions import MlflowException

    name = f"{model}{LOCK_SUFFIX}"
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    # A lock wait, not a retry (tenacity): between tries it breaks a stale lock, and it ends
    # with what to do about a held one.
    while True:
        try:
            client.create_registered_model(
                name, tags={"medml.kind": "audit-lock"},
                description=f"held while an event is appended to {model}'s audit trail",
            )  # fmt: skip
            break
        except MlflowException as err:  # held; or broken as stale while being created
            if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
        _break_if_stale(client, name)
        if time.monotonic() > deadline:
            raise AuditError(
                f"could not take {name} within {LOCK_TIMEOUT_S:.0f} s; nothing was changed. "
                "If no promotion is running, delete that registered model and retry"
            )
        time.sleep(random.uniform(0.02, 0.2))
    try:
        yield
    finally:
        try:
            client.delete_registered_model(name)
        except MlflowException:
            pass  # broken as stale by another process: nothing left to release


def _break_if_stale(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        created = client.get_registered_model(name).creation_timestamp or 0
        if time.time() * 1000 - created > STALE_LOCK_S * 1000:
            client.delete_registered_model(name)
    except MlflowException:
        pass  # released meanwhile
