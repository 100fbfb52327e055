"""Credentials that come from the Airflow connection (login, password and the extra's
``endpoint_url`` with its userinfo) never appear in what a failing step prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import _free_port, venv_env

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


def test_a_lost_s3_endpoint_from_the_connection_extras_is_one_line_without_secrets(
    tmp_path: Path,
) -> None:
    connection = {"conn_type": "aws", "login": "AKIAMEDMLTEST", "password": "s3cr3t-key-value",
                  "extra": {"endpoint_url": f"http://medml:pa55w0rd@127.0.0.1:{_free_port()}",
                            "region_name": "us-east-1"}}  # fmt: skip
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from medml_common import export_s3_connection\n"
        "export_s3_connection()  # what every S3 task does first\n"
        "from typer.testing import CliRunner\n"
        "from medml.cli import app\n"
        "result = CliRunner().invoke(app, ['run', '--source', 's3://medml-data/ct/2026-01-05/',"
        " '--recipe', 'kidney-ct', '--run-dir', sys.argv[2]])\n"
        "print('EXIT', result.exit_code)\n"
        "print(result.output)\n"
    )
    env = {**venv_env(), "AIRFLOW_CONN_MEDML_S3": json.dumps(connection)}
    for name in ("MEDML_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY"):  # fmt: skip
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-c", code, str(DAGS_DIR), str(tmp_path / "run")],
                            env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    printed = result.stdout + result.stderr
    assert "EXIT 3" in result.stdout, printed[-3000:]
    said = result.stdout.split("EXIT 3", 1)[1].strip()
    assert len(said.splitlines()) == 1, said  # one line, no traceback
    for secret in ("pa55w0rd", "s3cr3t-key-value"):
        assert secret not in printed, printed[-3000:]
    assert "***" in said or "127.0.0.1" in said, said
