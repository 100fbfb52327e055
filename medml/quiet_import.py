"""TensorFlow's import-time C++ notices go through Python logging, not raw stderr.

On some CPUs ``import tensorflow`` writes absl's banner ("WARNING: All log messages before
absl::InitializeLog() is called are written to STDERR") and an I-level notice ("oneDNN custom
operations are on …") straight to file descriptor 2, before its log level
(``TF_CPP_MIN_LOG_LEVEL``) is read, so no setting silences them. In an Airflow task every
stderr line is labelled ERROR, and at a terminal they read as problems. While TensorFlow's
module runs its import, :func:`install` catches what is written to descriptor 2 and hands
each line of TensorFlow's own log format to the ``tensorflow`` logger at its own level (I:
info, W: warning, E: error; the banner: debug); a fatal (F) line and any other line go back to
stderr as they were, as they come.
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
import threading
from collections.abc import Iterator, Sequence
from types import ModuleType

_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_NATIVE_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\] (.*)$")
_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR}


@contextlib.contextmanager
def native_stderr_to_logging(logger_name: str = "tensorflow") -> Iterator[None]:
    """Within the block, what native code writes to descriptor 2 is read as it comes (a pipe
    and a reader thread) and replayed: TensorFlow-format lines to ``logger_name`` at their
    level, other lines to the real stderr at once (a fatal line is written there before the
    process can abort). Without a usable descriptor 2 the block runs as it is."""
    try:
        saved = os.dup(2)
    except OSError:  # stderr closed: nothing to keep clean
        yield
        return
    _flush_stderr()
    read_end, write_end = os.pipe()
    reader = threading.Thread(target=_forward, args=(read_end, saved, logger_name), daemon=True)
    reader.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        _flush_stderr()
        os.dup2(saved, 2)  # the pipe's last writer closes: the reader sees its end
        reader.join(timeout=10)
        os.close(saved)


def _flush_stderr() -> None:
    with contextlib.suppress(AttributeError, OSError, ValueError):  # None, or closed
        sys.stderr.flush()


def _forward(read_end: int, stderr: int, logger_name: str) -> None:
    """Read the pipe line by line until its writers close it, replaying each line."""
    with os.fdopen(read_end, "rb") as pipe:
        for raw in pipe:
            replay([raw.decode(errors="replace").rstrip("\n")], logger_name, stderr=stderr)


def replay(lines: Sequence[str], logger_name: str = "tensorflow", *, stderr: int = 2) -> None:
    """Send TensorFlow-format ``lines`` to the logger at their level (a fatal one also to
    ``stderr`` as it is), the rest to ``stderr`` as they are."""
    logger = logging.getLogger(logger_name)
    for line in lines:
        native = _NATIVE_LINE.match(line)
        if line.strip() == _BANNER:
            logger.debug(line.strip())
        elif native and native.group(1) != "F":
            logger.log(_LEVELS[native.group(1)], native.group(2))
        elif line.strip():
            with contextlib.suppress(OSError):
                os.write(stderr, (line + "\n").encode())


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
