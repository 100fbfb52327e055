"""Operational faults (a full disk, a denied permission, S3 or MLflow lost) are one line with
credentials masked and exit code 3, never a traceback; SIGTERM ends a step's MLflow run."""

from __future__ import annotations

import base64
import errno
import http.server
import os
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medml import runs
from medml.cli import app
from medml.errors import OperationalFault, operational_fault
from tests.conftest import TINY

runner = CliRunner()


def _one_line(result, fragment: str) -> str:
    assert result.exit_code == 3, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert fragment in lines[0] and "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(("code", "said"), [(errno.ENOSPC, "the disk is full"),
                                            (errno.EACCES, "permission denied")])  # fmt: skip
def test_a_fault_while_a_step_writes_is_one_line_and_publishes_nothing(
    monkeypatch: pytest.MonkeyPatch, phantom_dir: Path, tmp_path: Path, code: int, said: str
) -> None:
    ctx = runs.init_run(tmp_path / "run", phantom_dir, "kidney-ct", overrides=TINY)

    def refuse(src: object, dst: object) -> None:
        raise OSError(code, os.strerror(code), str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    result = runner.invoke(app, ["ingest", "--run-dir", str(ctx.layout.root)])
    _one_line(result, f"{said} at {ctx.layout.manifest}")
    assert not ctx.layout.manifest.exists() and not ctx.layout.step_record("ingest").exists()


def test_a_full_disk_in_any_data_step_is_one_line_and_the_next_step_refuses(
    monkeypatch: pytest.MonkeyPatch, phantom_dir: Path, tmp_path: Path
) -> None:
    """Each step after ingest, run with every publishing rename failing for a full disk: one
    line naming the disk, no step record, and the next step refuses to start."""
    ctx = runs.init_run(tmp_path / "run", phantom_dir, "kidney-ct", overrides=TINY)
    run_dir = str(ctx.layout.root)
    replace = os.replace
    assert runner.invoke(app, ["ingest", "--run-dir", run_dir]).exit_code == 0
    for step, after in (("validate", "split"), ("split", "preprocess"), ("preprocess", "train")):

        def full(src: object, dst: object) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

        monkeypatch.setattr(os, "replace", full)
        _one_line(runner.invoke(app, [step, "--run-dir", run_dir]), "the disk is full at")
        assert not ctx.layout.step_record(step).exists(), step
        monkeypatch.setattr(os, "replace", replace)
        refused = runner.invoke(app, [after, "--run-dir", run_dir])
        assert refused.exit_code == 3 and f"`{step}`" in refused.output, refused.output
        assert runner.invoke(app, [step, "--run-dir", run_dir]).exit_code == 0  # space freed


def test_a_lost_s3_endpoint_is_one_line_without_its_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.conftest import _free_port

    endpoint = f"http://medml:pa55w0rd@127.0.0.1:{_free_port()}"
    monkeypatch.setenv("MEDML_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-key-value")
    source = "s3://medml-data/kidney-ct/2026-01-05/"
    result = runner.invoke(app, ["run", "--source", source, "--recipe", "kidney-ct",
                                 "--run-dir", str(tmp_path / "run")])  # fmt: skip
    line = _one_line(result, "")
    assert "pa55w0rd" not in result.output and "secret-key-value" not in result.output, line


def test_botocore_connection_errors_are_operational() -> None:
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    for err in (EndpointConnectionError(endpoint_url="http://u:p4ss@s3.local"),
                ReadTimeoutError(endpoint_url="http://u:p4ss@s3.local")):  # fmt: skip
        fault = operational_fault(err)
        assert isinstance(fault, OperationalFault) and "p4ss" not in str(fault)
    assert operational_fault(TypeError("a bug")) is None
    assert operational_fault(OSError(errno.ENOENT, "missing")) is None  # not a machine fault


class _AuthOnly(http.server.BaseHTTPRequestHandler):
    expected = "Basic " + base64.b64encode(b"medml:s3cr:t").decode()

    def do_GET(self) -> None:
        ok = self.path == "/health" and self.headers.get("Authorization") == self.expected
        self.send_response(200 if ok else 401)
        self.end_headers()
        self.wfile.write(b"OK" if ok else b"no")

    def log_message(self, *args: object) -> None:
        pass


def test_health_probe_sends_the_uris_credentials_as_basic_auth() -> None:
    from medml.tracking import _health_request

    server = http.server.HTTPServer(("127.0.0.1", 0), _AuthOnly)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        import urllib.request

        uri = f"http://medml:s3cr%3At@127.0.0.1:{server.server_port}/"
        request = _health_request(uri)
        assert "s3cr" not in request.full_url and request.full_url.endswith("/health")
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 200
    finally:
        server.shutdown()


def test_a_dataset_created_concurrently_is_logged_on_the_next_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    from medml.steps import _log_input

    calls: list[str] = []

    def log_input(dataset: object, context: str) -> None:
        calls.append(context)
        if len(calls) == 1:  # what the SQL store says when another fold inserted it first
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets")

    monkeypatch.setattr(mlflow, "log_input", log_input)
    _log_input(object(), "training")
    assert calls == ["training", "training"]

    def refuse(dataset: object, context: str) -> None:
        raise MlflowException("RESOURCE_DOES_NOT_EXIST")

    monkeypatch.setattr(mlflow, "log_input", refuse)
    with pytest.raises(MlflowException):  # any other refusal is not retried
        _log_input(object(), "training")


@pytest.mark.parametrize(("text", "secret"), [
    ("http://u:pa/ss@host:5000/x", "pa/ss"), ("http://u:p@ss@host/y", "p@ss"),
    ("mlflow at https://medml:s3cr3t@127.0.0.1:9 lost", "s3cr3t"),
])  # fmt: skip
def test_a_password_with_slashes_or_at_signs_is_masked_whole(text: str, secret: str) -> None:
    from medml.errors import MedmlError, redact

    assert secret not in redact(text) and "***@" in redact(text)
    assert secret not in str(MedmlError(text))
    assert redact("s3://bucket/a@b.jpg") == "s3://bucket/a@b.jpg"  # an @ in a path stays


def test_a_tracking_uri_that_answers_but_not_in_http_is_unavailable_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Something listens on the port but speaks no HTTP (a wrong port, another service): the
    same one clear error as an unreachable server, never a raw http.client traceback."""
    import socket
    import threading

    import medml.tracking as tracking_module

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def banner() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"SSH-2.0-not-http\r\n")
            conn.close()

    threading.Thread(target=banner, daemon=True).start()
    monkeypatch.setattr(tracking_module, "REACH_ATTEMPTS", 2)
    uri = f"http://user:s3cret@127.0.0.1:{server.getsockname()[1]}"
    try:
        with pytest.raises(tracking_module.TrackingUnavailable, match="not an HTTP server") as err:
            tracking_module._wait_for_server(uri)
    finally:
        server.close()
    assert "s3cret" not in str(err.value) and "after 2 attempts" in str(err.value)


class _DropsMidDownload(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint that lists three objects and then loses the connection in the middle of
    every download (a header promising 4 KiB, 100 bytes, a closed socket)."""

    protocol_version = "HTTP/1.1"
    keys = ("kidney-ct/2026-01-05/Normal/a.jpg", "kidney-ct/2026-01-05/Cyst/b.jpg",
            "kidney-ct/2026-01-05/Stone/c.jpg")  # fmt: skip
    size = 4096

    def _object_headers(self) -> None:
        self.send_header("Content-Length", str(self.size))
        self.send_header("ETag", '"0123456789abcdef0123456789abcdef"')
        self.send_header("Last-Modified", "Mon, 05 Jan 2026 03:00:00 GMT")
        self.send_header("Content-Type", "image/jpeg")

    def do_HEAD(self) -> None:
        self.send_response(200)
        self._object_headers()
        self.end_headers()

    def do_GET(self) -> None:
        if "list-type=2" in self.path:
            contents = "".join(
                f"<Contents><Key>{key}</Key><Size>{self.size}</Size><LastModified>"
                "2026-01-05T03:00:00.000Z</LastModified><ETag>&quot;0123456789abcdef0123456789"
                "abcdef&quot;</ETag><StorageClass>STANDARD</StorageClass></Contents>"
                for key in self.keys
            )
            body = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.'
                    'amazonaws.com/doc/2006-03-01/"><Name>medml-data</Name><Prefix>kidney-ct/'
                    f"2026-01-05/</Prefix><KeyCount>{len(self.keys)}</KeyCount><MaxKeys>1000"
                    f"</MaxKeys><IsTruncated>false</IsTruncated>{contents}"
                    "</ListBucketResult>").encode()  # fmt: skip
            self.send_response(200)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self._object_headers()
        self.end_headers()
        self.wfile.write(b"\xff\xd8" + b"x" * 98)
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(2)

    def log_message(self, *args: object) -> None:
        pass


def test_s3_lost_in_the_middle_of_a_download_is_one_line_without_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DropsMidDownload)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://medml:pa55w0rd@127.0.0.1:{server.server_port}"
        monkeypatch.setenv("MEDML_S3_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-key-value")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        run_dir = tmp_path / "run"
        source = "s3://medml-data/kidney-ct/2026-01-05/"
        result = runner.invoke(app, ["run", "--source", source, "--recipe", "kidney-ct",
                                     "--run-dir", str(run_dir)])  # fmt: skip
    finally:
        server.shutdown()
    line = _one_line(result, "S3")
    assert "pa55w0rd" not in result.output and "secret-key-value" not in result.output, line
    assert not list(run_dir.glob("manifest.parquet")), "nothing half-downloaded is published"
