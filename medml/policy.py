"""The deployment's governance policy: a file the people it governs cannot edit.

Who may override a failed gate, whether the four-eyes rule holds and whether the CLI may
promote as the operating-system user ("local admin") are decisions of whoever runs the
deployment, not of the promoter. They are therefore read from a policy file
(``MEDML_POLICY``, default :data:`DEFAULT_POLICY_FILE`), never from the promoter's own
environment, and the file is only believed when the process reading it cannot change it: a
file (or its folder) that the calling user owns or may write is refused with a message saying
so — pointing ``MEDML_POLICY`` at a file of one's own grants nothing. ``root`` is the
administrator and may read any file.

Without a policy file the built-in defaults apply: a single-user installation (a laptop, the
demo) where the CLI acts as local admin, four-eyes holds and nobody may override the gate.

An example (``/etc/medml/policy.toml``, owned by root, mode 0644)::

    local_admin = false          # CLI promotions need an identity the MLflow server vouches for
    gate_overriders = ["dr.chief"]
    four_eyes = true             # whoever requested a promotion may not approve it
    registrar_may_approve = false  # nor may whoever registered (trained) the version
    require_audit_key = true     # an unkeyed audit trail is a broken one
    require_anchor = true        # so is one without an anchor (truncation is undetectable)
"""

from __future__ import annotations

import hashlib
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from medml.errors import RefusedError

DEFAULT_POLICY_FILE = "/etc/medml/policy.toml"
_KEYS = {"local_admin": bool, "gate_overriders": list, "four_eyes": bool,
         "registrar_may_approve": bool, "require_audit_key": bool,
         "require_anchor": bool}  # fmt: skip


class PolicyError(RefusedError):
    """The policy file cannot be believed or read; the message names it and what to do."""


@dataclass(frozen=True)
class Policy:
    """What the deployment allows (see the module docstring for the file format).

    Attributes:
        source: where it came from (the file, or the built-in defaults).
        digest: the SHA-256 of the file's bytes (empty for the defaults), recorded with every
            audited decision so a reviewer can tell which policy applied.
        local_admin: the CLI may act as the operating-system user (audited as ``local-admin``).
        gate_overriders: who may promote a version that failed its gate.
        four_eyes: whoever requested a promotion may not approve it.
        registrar_may_approve: whoever registered a version may approve its promotion (on in
            the built-in defaults, where one person does everything; off in a deployment).
        require_audit_key: an audit trail without ``MEDML_AUDIT_KEY`` does not verify.
        require_anchor: an audit trail without ``MEDML_AUDIT_ANCHOR`` does not verify.
    """

    source: str = "built-in defaults (no policy file)"
    digest: str = ""
    local_admin: bool = True
    gate_overriders: frozenset[str] = field(default_factory=frozenset)
    four_eyes: bool = True
    registrar_may_approve: bool = True
    require_audit_key: bool = False
    require_anchor: bool = False


def load_policy(path: Path | str, uid: int | None = None, *, required: bool = False) -> Policy:
    """The policy in ``path``, or the built-in defaults when there is no such file (and it is
    not ``required``).

    Args:
        path: the policy file (TOML).
        uid: the user reading it (default: this process's user).
        required: a missing file is an error (the deployment names or expects one).

    Raises:
        PolicyError: the caller could change the file (so it cannot grant them anything), it
            is unreadable or not TOML, or it has an unknown key or a value of the wrong type.
    """
    path = Path(path)
    try:
        info = path.lstat()
    except FileNotFoundError:
        if required:
            raise PolicyError(
                f"the policy file {path} does not exist; the deployment names it (MEDML_POLICY) "
                "or keeps its policy there, so medml will not fall back to the permissive "
                "built-in defaults — fix the path, or ask the administrator"
            ) from None
        return Policy()
    except OSError as err:
        raise PolicyError(f"the policy file {path} cannot be read ({err.strerror})") from None
    uid = os.getuid() if uid is None else uid
    real = path.resolve()  # a Kubernetes ConfigMap mount is a link into ..data/
    checked = [
        (path.parent, path.parent.stat()),
        (real, real.stat()),
        (real.parent, real.parent.stat()),
    ]
    if stat.S_ISLNK(info.st_mode) and info.st_uid == uid and uid != 0:
        checked.insert(0, (path, info))  # a link's own mode bits mean nothing; its owner does
    for target, target_info in checked:
        if why := _editable_by(target_info, uid):
            raise PolicyError(
                f"the policy file {path} is not trustworthy: {target} {why}, so it cannot grant "
                "you anything; the administrator should own it (root, mode 0644) in a folder "
                "only they can write"
            )
    if not stat.S_ISREG(real.stat().st_mode):
        raise PolicyError(f"the policy file {path} is not a regular file")
    try:
        data = real.read_bytes()
    except OSError as err:
        raise PolicyError(f"the policy file {path} cannot be read ({err.strerror})") from None
    try:
        values = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise PolicyError(f"the policy file {path} is not valid TOML: {err}") from None
    return Policy(source=str(path), digest=hashlib.sha256(data).hexdigest(),
                  **_validated(path, values))  # fmt: skip


def _editable_by(info: os.stat_result, uid: int) -> str:
    """Why the user ``uid`` could change the file or folder (empty: they cannot)."""
    if uid == 0:
        return ""
    if info.st_uid == uid:
        return f"is owned by you (uid {uid})"
    if info.st_mode & stat.S_IWOTH:
        return "is writable by everyone"
    if info.st_mode & stat.S_IWGRP and info.st_gid in os.getgroups():
        return f"is writable by your group (gid {info.st_gid})"
    return ""


def _validated(path: Path, values: dict[str, object]) -> dict[str, object]:
    unknown = sorted(set(values) - set(_KEYS))
    if unknown:
        raise PolicyError(f"the policy file {path} has unknown keys {unknown}; known: "
                          f"{sorted(_KEYS)}")  # fmt: skip
    for key, value in values.items():
        if not isinstance(value, _KEYS[key]) or (
            key == "gate_overriders" and not all(isinstance(v, str) for v in value)  # type: ignore[union-attr]
        ):
            kind = "a list of user names" if key == "gate_overriders" else "true or false"
            raise PolicyError(f"the policy file {path}: {key} must be {kind}, got {value!r}")
    if "gate_overriders" in values:
        values = {**values, "gate_overriders": frozenset(values["gate_overriders"])}  # type: ignore[arg-type]
    return values
