"""TensorFlow's import-time C++ notices go through Python logging, not raw stderr.

On some CPUs ``import tensorflow`` writes absl's banner ("WARNING: All log messages before
absl::InitializeLog() is called are written to STDERR") and an I-level notice ("oneDNN custom
operations are on …") straight to file descriptor 2, before its log level
(``TF_CPP_MIN_LOG_LEVEL``) is read, so no setting silences them. In an Airflow task every
stderr line is labelled ERROR, and at a terminal they read as problems. While TensorFlow's
module runs its import, :func:`install` catches what is written to descriptor 2 and hands
each line of TensorFlow's own log format to the ``tensorflow`` logger at its own level (I:
info, W: warning, E/F: error; the banner: debug); any other line goes back to stderr as it
was.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from types import ModuleType

_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_NATIVE_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\] (.*)$")
_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.ERROR}


@contextlib.contextmanager
def native_stderr_to_logging(logger_name: str = "tensorflow") -> Iterator[None]:
    """Within the block, what native code writes to descriptor 2 is caught and replayed:
    TensorFlow-format lines to ``logger_name`` at their level, other lines to stderr."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to keep clean
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            replay(caught.read().decode(errors="replace").splitlines(), logger_name)


def replay(lines: Sequence[str], logger_name: str = "tensorflow") -> None:
    """Send TensorFlow-format ``lines`` to the logger at their level, the rest to stderr."""
    logger = logging.getLogger(logger_name)
    others = []
    for line in lines:
        native = _NATIVE_LINE.match(line)
        if line.strip() == _BANNER:
            logger.debug(line.strip())
        elif native:
            logger.log(_LEVELS[native.group(1)], native.group(2))
        elif line.strip():
            others.append(line)
    if others:
        os.write(2, ("\n".join(others) + "\n").encode())


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` with the normal finders and runs its import inside
    :func:`native_stderr_to_logging`; removes itself once used."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = spec.loader if spec is not None else None
        if loader is not None and hasattr(loader, "exec_module"):
            run = loader.exec_module

            def exec_module(module: ModuleType) -> None:
                with native_stderr_to_logging():
                    run(module)

            loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Catch TensorFlow's import-time notices in this process (once; no-op when TensorFlow is
    already imported)."""
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietImport())
