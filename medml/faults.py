"""Named failpoints for the kill tests (in the spirit of FreeBSD's fail(9) and TiKV's fail-rs).

``failpoint("name")`` does nothing unless ``$MEDML_FAILPOINT`` is ``name``; then the process
kills itself with SIGKILL right there, as an operator's ``kill -9`` or an OOM kill would. The
kill tests use them to hit narrow windows (a model version created but not yet tagged) that a
randomly timed kill rarely finds; they also kill at random times.
"""

from __future__ import annotations

import os
import signal


def failpoint(name: str) -> None:
    """SIGKILL this process if ``$MEDML_FAILPOINT`` names this point."""
    from medml.settings import Settings

    if Settings.from_env().failpoint == name:
        os.kill(os.getpid(), signal.SIGKILL)
