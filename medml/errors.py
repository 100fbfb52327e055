"""One base class for every error medml raises on purpose.

A :class:`MedmlError` means "the input, the configuration or the state is not what this step
needs, and the message says what to do". The CLI prints such an error as one line and exits
with its ``exit_code``; any other exception is a bug and keeps its traceback.

Exit codes of the ``medml`` command (also in ``docs/operations.md``):

====  =====================================================================================
0     success
1     an unexpected error (a bug, or a failure in a library): the traceback is printed
2     the command line itself is wrong (unknown option, missing argument; typer's usage error)
3     a medml error: bad config, missing input, unreadable source, refused operation …
4     the data validation gate failed (report and quarantine list written; nothing deleted)
5     a promotion, rollback or review was refused (audit rules, gate, unknown version), or
      ``medml predict`` refused a champion the audit trail does not back
6     ``medml audit verify``: the audit trail was edited, events were deleted, reordered,
      forged without the key or missing from the anchor, or the champion moved outside it
====  =====================================================================================
"""

from __future__ import annotations

import re

_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>\S+)")


def _masked(match: re.Match[str]) -> str:
    rest = match["rest"]
    if "@" not in rest:
        return match[0]
    userinfo, host = rest[: rest.rindex("@")], rest[rest.rindex("@") + 1 :]
    if ":" not in userinfo and "/" in userinfo:  # an "@" in a path (s3://bucket/a@b.jpg)
        return match[0]
    return f"{match['scheme']}***@{host}"


def redact(text: str) -> str:
    """``text`` with the user-info of every URL (``scheme://user:password@``) masked, up to
    the URL's last ``@``: a password holding ``/`` or ``@`` is masked whole (a path holding
    ``:`` and ``@`` is masked too: better too much than a leak)."""
    return _URL.sub(_masked, str(text))


class MedmlError(Exception):
    """Base of every deliberate medml error; the message names the file/field and the fix.

    Credentials embedded in URLs are masked in the message (:func:`redact`).
    """

    exit_code = 3

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigError(MedmlError, ValueError):
    """A recipe, params file or override is invalid; the message says which and why."""


class RunError(MedmlError):
    """A run directory is missing, or a step's inputs are not there yet."""


class SplitError(MedmlError, ValueError):
    """The data cannot be split as ``split.*`` asks (a class has too few images or groups for
    the holdout or the folds, or the dataset lacks the validation folder it names)."""


class SynthError(MedmlError, ValueError):
    """A phantom dataset cannot be written as asked (output not empty, ``n`` too small for the
    layout, no generator for the recipe/layout pair)."""


class DataGateFailed(MedmlError):
    """The data validation gate failed (exit code 4)."""

    exit_code = 4


class AuditBroken(MedmlError):
    """The audit trail's hash chain is broken: an event was edited, deleted or reordered."""

    exit_code = 6


class RefusedError(MedmlError):
    """A lifecycle operation (promote, rollback, review) was refused (exit code 5)."""

    exit_code = 5


class Terminated(SystemExit):
    """The process was asked to stop (SIGTERM: a pod deleted, a task killed): raised in the
    main thread so every ``finally`` runs and the open MLflow run ends ``KILLED``."""

    def __init__(self) -> None:
        super().__init__(143)  # 128 + SIGTERM, what the shell reports


def stop_on_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` in this (main) thread."""
    import signal

    def terminated(signum: int, frame: object) -> None:
        raise Terminated

    signal.signal(signal.SIGTERM, terminated)


class OperationalFault(MedmlError):
    """The machine or a service failed under a step (disk full, permission denied, storage or
    S3 connection lost): one line naming what and where, credentials masked (exit code 3).
    Outputs are published atomically, so nothing half-written is left behind."""


_OS_FAULTS = {
    28: "the disk is full",  # ENOSPC
    122: "the disk quota is exceeded",  # EDQUOT
    13: "permission denied",  # EACCES
    1: "operation not permitted",  # EPERM
    30: "the file system is read-only",  # EROFS
    5: "an input/output error",  # EIO
}


def operational_fault(err: BaseException) -> OperationalFault | None:
    """``err`` as an :class:`OperationalFault` when it is a fault of the machine or a service
    rather than a bug (``None`` otherwise): an ``OSError`` of a full disk, a permission or an
    I/O error, or a lost S3 connection (botocore's connection and read-timeout errors, and
    s3transfer's retries exhausted mid-download)."""
    if isinstance(err, OSError) and err.errno in _OS_FAULTS:
        where = f" at {err.filename}" if err.filename else ""
        return OperationalFault(f"{_OS_FAULTS[err.errno]}{where} ({err.strerror}); free space "
                                "or fix the permission, then run the step again")  # fmt: skip
    names = {cls.__name__ for cls in type(err).__mro__}
    if names & {
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "IncompleteReadError",
        "ResponseStreamingError",
        "RetriesExceededError",  # s3transfer: a download lost its connection on every retry
    }:
        cause = getattr(err, "last_exception", None) or err
        return OperationalFault(f"lost the connection to S3 ({type(cause).__name__}: {cause}); "
                                "check the endpoint and the network, then run the step "
                                "again")  # fmt: skip
    return None
