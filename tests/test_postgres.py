"""The control state in PostgreSQL across processes: a token revoked by the command line is
refused by a running server (its cache follows the control_version trigger), and a database
that cannot be reached gives one line without the password, not a traceback."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from conftest import ACCOUNT, TARGET, cli, make_server
from test_e2e_report import utd


def test_a_token_revoked_elsewhere_is_refused_by_the_server(tmp_path: Path,
                                                            pg_url: str) -> None:
    server = make_server(tmp_path / "data", database_url=pg_url)
    try:
        body = orjson.dumps(utd("ACCEPT", 1))
        headers = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": TARGET}
        with server.client("alice") as client:
            assert client.post("/", content=body, headers=headers).status_code == 200
            done = cli(tmp_path / "data", "tokens", "revoke", "--account", ACCOUNT, "--user",
                       "alice", database_url=pg_url)
            assert done.returncode == 0, done.stderr
            deadline = time.monotonic() + 5
            while (status := client.post("/", content=body, headers=headers).status_code) == 200:
                assert time.monotonic() < deadline, "the revoked token is still accepted"
                time.sleep(0.05)
            assert status == 403
    finally:
        server.stop()


def test_an_unreachable_database_is_one_line_without_its_password(tmp_path: Path,
                                                                  postgres: object) -> None:
    url = "postgresql://kiro:s3cret-pass@127.0.0.1:9/nowhere"
    done = cli(tmp_path / "data", "accounts", "list", database_url=url)
    assert done.returncode == 1
    assert "s3cret-pass" not in done.stderr + done.stdout
    assert done.stderr.startswith("error: cannot reach the control database "
                                  "postgresql://kiro:***@127.0.0.1:9/nowhere"), done.stderr
    assert "Traceback" not in done.stderr
