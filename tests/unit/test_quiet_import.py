"""TensorFlow's import-time C++ notices reach logging at their level, never raw stderr."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from medml.quiet_import import native_stderr_to_logging


def test_native_lines_are_relevelled_and_other_lines_kept(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG, logger="tensorflow")
    with native_stderr_to_logging():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                    b"written to STDERR\n")  # fmt: skip
        os.write(2, b"I0000 00:00:1796367147.460430   25524 port.cc:153] oneDNN custom "
                    b"operations are on.\n")  # fmt: skip
        os.write(2, b"E0000 00:00:1796367147.5   25524 cuda_driver.cc:97] failed call to "
                    b"cuInit\n")  # fmt: skip
        os.write(2, b"a line of someone else\n")
    levels = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "tensorflow"]
    assert levels == [
        (logging.DEBUG, "WARNING: All log messages before absl::InitializeLog() is called are "
                        "written to STDERR"),
        (logging.INFO, "oneDNN custom operations are on."),
        (logging.ERROR, "failed call to cuInit"),
    ]  # fmt: skip
    assert capfd.readouterr().err == "a line of someone else\n"  # not lost, not relabelled


def test_importing_tensorflow_after_medml_writes_nothing_to_stderr() -> None:
    code = "import medml, tensorflow, keras; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr
    assert "InitializeLog" not in done.stderr and "oneDNN" not in done.stderr, done.stderr


def test_tensorflow_imports_after_medml_with_stderr_closed() -> None:
    code = "import medml, tensorflow; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=False, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=120,
                          close_fds=True, preexec_fn=lambda: os.close(2))  # fmt: skip
    assert done.returncode == 0 and done.stdout == "ok\n"
