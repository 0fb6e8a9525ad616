"""The command line, run as a real process, on a data folder that a running server uses."""

from __future__ import annotations

import os
import random
import re
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import orjson

from conftest import ACCOUNT, TARGET, Server, cli
from kiro_activity import store
from kiro_activity.config import Config
from kiro_activity.demo import free_port
from kiro_activity.simulate import request_body

HEADERS = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": TARGET}


def send(server: Server, token: str) -> int:
    import httpx
    body = orjson.dumps(request_body("featureDevEvent", random.Random()))
    r = httpx.post(f"{server.url}/", content=body,
                   headers={**HEADERS, "Authorization": f"Bearer {token}"})
    return r.status_code


def test_issue_use_and_revoke_while_serving(server: Server) -> None:
    issued = cli(server.data_dir, "tokens", "issue", "--account", ACCOUNT, "--user", "dave")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert issued.stdout == token + "\n" and token.startswith("kat_")
    assert send(server, token) == 200
    revoked = cli(server.data_dir, "tokens", "revoke", "--account", ACCOUNT, "--user", "dave")
    assert revoked.returncode == 0, revoked.stderr
    assert send(server, token) == 403  # refused from the very next request
    again = cli(server.data_dir, "tokens", "revoke", "--account", ACCOUNT, "--user", "dave")
    assert again.returncode == 1


def test_thousand_users_in_one_call_and_tokens_stored_hashed(server: Server) -> None:
    users = [f"u{i:04d}" for i in range(1000)]
    args = [a for u in users for a in ("--user", u)]
    out = cli(server.data_dir, "tokens", "issue", "--account", ACCOUNT, *args)
    assert out.returncode == 0, out.stderr
    lines = [line.split("\t") for line in out.stdout.splitlines()]
    assert [u for u, _ in lines] == users
    tokens = [t for _, t in lines]
    assert len(set(tokens)) == 1000
    assert send(server, tokens[-1]) == 200
    raw = b"".join(p.read_bytes() for p in server.data_dir.glob("control.db*"))
    assert not any(t.encode() in raw for t in tokens[:50])
    listing = cli(server.data_dir, "tokens", "list", "--account", ACCOUNT, "--json")
    assert listing.returncode == 0
    assert not any(t in listing.stdout for t in tokens[:50])
    assert "u0999" in listing.stdout


def test_accounts_and_errors(tmp_path: Path) -> None:
    data = tmp_path / "d"
    out = cli(data, "accounts", "add", "999988887777", "--region", "eu-central-1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("arn:aws:codewhisperer:eu-central-1:999988887777:profile/")
    arn = "arn:aws:codewhisperer:us-west-2:123456789012:profile/ABCDEFGHIJKL"
    out = cli(data, "accounts", "add", "123456789012", "--region", "us-west-2",
              "--profile-arn", arn)
    assert out.stdout.strip() == arn
    listed = cli(data, "accounts", "list", "--json")
    assert [a["account_id"] for a in orjson.loads(listed.stdout)] == ["123456789012",
                                                                      "999988887777"]
    for args, needle in [
        (("accounts", "add", "12345", "--region", "us-east-1"), "12-digit"),
        (("accounts", "add", "999988887777", "--region", "eu-central-1"), "already exists"),
        (("accounts", "add", "111111111111", "--region", "Mars"), "Region"),
        (("tokens", "issue", "--account", "000000000000", "--user", "x"), "does not exist"),
        (("tokens", "issue", "--account", "999988887777", "--user", " x"), "user id"),
        (("tokens", "revoke", "--account", "999988887777"), "--user"),
    ]:
        out = cli(data, *args)
        assert out.returncode == 1, (args, out.stdout)
        assert needle in out.stderr and "Traceback" not in out.stderr
        assert out.stdout == ""
    assert cli(data, "tokens", "issue").returncode == 2  # usage error


def test_expired_token_is_refused(server: Server) -> None:
    out = cli(server.data_dir, "tokens", "issue", "--account", ACCOUNT, "--user", "eve",
              "--expires-in-days", "-1")
    assert out.returncode == 0
    assert send(server, out.stdout.strip()) == 403


def test_events_summary(server: Server) -> None:
    out = cli(server.data_dir, "events", "--account", ACCOUNT)
    assert out.returncode == 0
    assert orjson.loads(out.stdout)[ACCOUNT]["events"] >= 1


def test_demo_runs_the_main_job_end_to_end(tmp_path: Path) -> None:
    """`make demo` in small: telemetry over HTTP, the day closed, reports delivered, and an
    admin token that logs in to the pages."""
    data = tmp_path / "demo"
    r = cli(data, "demo", "--users", "12")
    assert r.returncode == 0, r.stderr
    reports = sorted((data / "reports").rglob("*.csv"))
    assert len(reports) == 2  # one per demo account
    assert all(p.read_text().count("\n") >= 2 for p in reports)  # a header and users
    token = re.search(r"log in with this admin token \(shown once\): (kat_[\w-]{43})",
                      r.stderr.replace("\n", " "))
    assert token is not None
    out = r.stderr.replace("\n", " ")
    assert re.search(r"dashboard: http://127\.0\.0\.1:8080/admin/login\?next=/admin/accounts/"
                     r"\d{12}/usage%3Ffrom%3D\d{4}-\d\d-\d\d%26to%3D", out), out
    conn = store.connect(Config(data_dir=data).control_db)
    p = store.lookup_token(conn, token.group(1), now=time.time())
    conn.close()
    assert p is not None and p.kind == "admin" and len(p.scopes) == 2


def test_bad_user_ids_and_damaged_databases_give_one_line_errors(tmp_path: Path) -> None:
    """#13: C1 controls and undecodable bytes in user ids, and a damaged database, gave
    tracebacks (or were let in) instead of one line naming the value or the file."""
    assert cli(tmp_path, "accounts", "add", ACCOUNT, "--region", "us-east-1").returncode == 0
    for bad in ("\x85alice", "bob\x9f", "\udcff\udcfe", "eve\u202elice"):  # and bidi controls
        r = subprocess.run([sys.executable, "-m", "kiro_activity", "--data-dir", str(tmp_path),
                            "tokens", "issue", "--account", ACCOUNT, "--user", bad],
                           capture_output=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"},
                           timeout=60)
        assert r.returncode == 1, bad
        err = r.stderr.decode("utf-8", "replace")
        assert "Traceback" not in err and "without control characters" in err
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) == 0o700
    for f in tmp_path.iterdir():
        if f.is_file():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    control = tmp_path / "control.db"
    control.write_bytes(b"this is not a database" * 100)
    for args in (("tokens", "list", "--account", ACCOUNT),
                 ("serve", "--port", str(free_port()))):
        r = cli(tmp_path, *args)
        assert r.returncode == 1, args
        assert "Traceback" not in r.stderr
        assert f"error: {control}: file is not a database" in r.stderr
    control.unlink()
    landing_db = tmp_path / "landing.db"
    conn = sqlite3.connect(landing_db)
    conn.executescript("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
    conn.close()
    data = bytearray(landing_db.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the first page's b-tree header: damaged
    landing_db.write_bytes(bytes(data))
    r = cli(tmp_path, "serve", "--port", str(free_port()))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"error: {landing_db}: " in r.stderr
