"""The CLI's identity from a real MLflow tracking server with authentication
(``mlflow server --app-name basic-auth``): the reviewer recorded is the user the server
authenticated — not ``$USER``, not a name typed on the command line."""

from __future__ import annotations

import http.server
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner

from medml import audit
from medml.cli import app
from medml.identity import IdentityError, mlflow_authenticated_user
from medml.tracking import Tracking
from tests.conftest import _free_port, venv_env
from tests.integration.test_governance import NAME, _policy, _versions

pytestmark = pytest.mark.integration
ADMIN = ("admin", "admin-password-1234")


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server with basic authentication; users ``reviewer1`` and
    ``mallory`` exist besides the admin, and everyone may write (as plain write access)."""
    folder = tmp_path_factory.mktemp("mlflow-auth")
    config = folder / "basic_auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = MANAGE\n"
        f"database_uri = sqlite:///{folder / 'auth.db'}\n"
        f"admin_username = {ADMIN[0]}\nadmin_password = {ADMIN[1]}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n"  # PBKDF2 once per user, not once per request
    )
    port = _free_port()
    mlflow = str(Path(venv_env()["PATH"].split(":")[0]) / "mlflow")
    server = subprocess.Popen(
        [mlflow, "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--default-artifact-root", str(folder / "artifacts")],
        env={**venv_env(), "MLFLOW_AUTH_CONFIG_PATH": str(config),
             "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"mlflow server did not start: {server.stderr.read()[-2000:]}")
        time.sleep(0.5)
    for user in ("reviewer1", "mallory"):
        account = {"username": user, "password": f"{user}-password-1234"}
        created = requests.post(f"{uri}/api/2.0/mlflow/users/create", auth=ADMIN, timeout=30,
                                json=account)  # fmt: skip
        assert created.status_code == 200, created.text
    yield uri
    server.terminate()
    server.wait(timeout=30)


def _as(monkeypatch: pytest.MonkeyPatch, uri: str, user: str, password: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)


@pytest.mark.slow  # a real server with authentication: ~1 minute on 2 cores
def test_the_cli_reviewer_is_the_user_the_server_authenticated(
    auth_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _as(monkeypatch, auth_server, *ADMIN)
    tracking = Tracking.from_env()
    _versions(tracking, 1)  # registered by the admin
    _policy(tmp_path, monkeypatch, "local_admin = false\n")  # a deployment
    monkeypatch.setenv("USER", "Dr. Chief Radiologist")  # changes nothing
    monkeypatch.setenv("LOGNAME", "Dr. Chief Radiologist")
    _as(monkeypatch, auth_server, "reviewer1", "reviewer1-password-1234")
    assert mlflow_authenticated_user(auth_server) == "reviewer1"
    result = CliRunner().invoke(app, ["promote", NAME, "--version", "1", "--reason", "reviewed",
                                      "--tracking-uri", auth_server])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "by reviewer1 (mlflow-auth)" in result.output
    promotion = audit.events(tracking, NAME)[-1]
    assert (promotion["reviewer"], promotion["identity"]) == ("reviewer1", "mlflow-auth")

    _as(monkeypatch, auth_server, "reviewer1", "a guessed password")
    with pytest.raises(IdentityError, match="rejected the credentials of 'reviewer1' .HTTP 401"):
        mlflow_authenticated_user(auth_server)
    result = CliRunner().invoke(app, ["rollback", NAME, "--reason", "x",
                                      "--tracking-uri", auth_server])  # fmt: skip
    assert result.exit_code == 5 and "rejected the credentials" in result.output


def test_a_server_without_authentication_vouches_for_nobody() -> None:
    class Anyone(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"user": {"username": "Dr. Chief Radiologist"}}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Anyone)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(IdentityError, match="does not require authentication .*HTTP 200"):
            mlflow_authenticated_user(uri)
    finally:
        server.shutdown()
