"""Secrets and personal data stay where they belong: a real server process (access log on) is
put through everything that touches a secret (telemetry and admin tokens good, guessed, revoked
and expired; logins that work and fail; a session, its CSRF token and logout; the admin API and
its errors; refused bodies carrying a marker), and then its log, the audit log, every answer's
body and headers, and the bytes of the databases are searched: no token, no session id and no
piece of a raw request body may appear anywhere but where it must (the token printed once when
issued; the session id in the login answer's Set-Cookie).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import orjson

from conftest import ACCOUNT, OTHER_ACCOUNT, PROFILE, free_port, setup_accounts
from kiro_activity import store
from kiro_activity.config import Config


def wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError("the server did not start")


def test_no_secret_or_body_leaks_into_logs_audit_answers_or_files(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path / "data")
    setup_accounts(config.data_dir)
    conn = store.connect(config.control_db)
    now = time.time()
    [(_, alice)] = store.issue_tokens(conn, ACCOUNT, ["alice"], now=now, actor="test")
    [(_, revoked)] = store.issue_tokens(conn, ACCOUNT, ["bob"], now=now, actor="test")
    [(_, expired)] = store.issue_tokens(conn, ACCOUNT, ["carol"], now=now, actor="test",
                                        expires_at=now - 1)
    [(_, admin)] = store.issue_tokens(conn, ACCOUNT, ["ada"], now=now, actor="test",
                                      kind="admin")
    [(_, other_admin)] = store.issue_tokens(conn, OTHER_ACCOUNT, ["mallory"], now=now,
                                            actor="test", kind="admin")
    store.revoke_tokens(conn, ACCOUNT, now=now, actor="test", token=revoked)
    conn.close()
    guessed = alice[:-4] + ("aaaa" if not alice.endswith("aaaa") else "bbbb")
    marker = f"BODYMARK{uuid.uuid4().hex}"  # in values: nowhere but the stored events
    keymark = f"KEYMARK{uuid.uuid4().hex}"  # in a key: an error may name it, a log may not
    port = free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kiro_activity", "--data-dir", str(config.data_dir), "serve",
             "--host", "127.0.0.1", "--port", str(port), "--access-log", "--no-schedule"],
            stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    answers: list[httpx.Response] = []
    session_id = csrf = ""
    try:
        wait_healthy(url, proc)
        target = {"X-Amz-Target": "AWSCodeWhispererStreamingService.SendTelemetryEvent",
                  "Content-Type": "application/x-amz-json-1.0"}
        good = {"telemetryEvent": {"chatAddMessageEvent": {"conversationId": marker + "c",
                                                           "messageId": marker + "m"}},
                "profileArn": PROFILE}
        bad_bodies = [
            {"telemetryEvent": {"userTriggerDecisionEvent": {"sessionId": marker,
                                                             "generatedLine": marker}}},
            {"telemetryEvent": {"notAMember" + keymark: {}}},
            {"telemetryEvent": {"chatAddMessageEvent": {"conversationId": 1}},
             "clientToken": marker},
        ]
        with httpx.Client(base_url=url, timeout=30) as c:
            for token in (alice, guessed, revoked, expired, admin, "x", "kat_" + marker):
                headers = {**target, "Authorization": f"Bearer {token}"}
                answers.append(c.post("/", content=orjson.dumps(good), headers=headers))
                answers.append(c.post("/SendTelemetryEvent", content=orjson.dumps(good),
                                      headers={"Authorization": f"Bearer {token}",
                                               "Content-Type": "application/json"}))
            auth = {**target, "Authorization": f"Bearer {alice}"}
            for body in bad_bodies:
                answers.append(c.post("/", content=orjson.dumps(body), headers=auth))
            answers.append(c.post("/", content=b"{" + marker.encode(), headers=auth))
            answers.append(c.post("/v1/batch/SendTelemetryEvent", headers={
                "Authorization": f"Bearer {alice}", "Content-Type": "application/x-ndjson"},
                content=orjson.dumps(good) + b"\n" + b"{" + marker.encode() + b"\n"))
            # the admin API: good, guessed, telemetry token, another account's admin
            for token in (admin, guessed, alice, other_admin):
                h = {"Authorization": f"Bearer {token}"}
                answers.append(c.get(f"/admin/v1/accounts/{ACCOUNT}/settings", headers=h))
                answers.append(c.patch(f"/admin/v1/accounts/{ACCOUNT}/settings", headers=h,
                                       json={"s3_uri": "s3://" + marker.lower() + "/x/"}))
            answers.append(c.get(f"/admin/v1/accounts/{ACCOUNT}/usage", headers={
                "Authorization": f"Bearer {admin}"}))
        with httpx.Client(base_url=url, timeout=30, follow_redirects=False) as browser:
            for token in (guessed, alice, marker):  # failed logins
                answers.append(browser.post("/admin/login", data={"token": token}))
            login = browser.post("/admin/login", data={"token": admin, "next": "/admin/"})
            assert login.status_code == 303
            session_id = browser.cookies["kat_session"]
            page = browser.get(f"/admin/accounts/{ACCOUNT}")
            answers.append(page)
            found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
            assert found
            csrf = found.group(1)
            answers.append(browser.post(f"/admin/accounts/{ACCOUNT}/settings", data={
                "csrf": csrf, "enabled": "", "s3_uri": "", "layout": "delivered",
                "sse": "AES256", "kms_key_arn": ""}))
            answers.append(browser.post(f"/admin/accounts/{ACCOUNT}/settings", data={
                "csrf": "0" * 64, "s3_uri": marker}))
            answers.append(browser.post("/admin/logout", data={"csrf": csrf}))
            browser.cookies.set("kat_session", session_id)  # the ended session, replayed
            answers.append(browser.get(f"/admin/accounts/{ACCOUNT}"))
    finally:
        proc.terminate()
        proc.wait(20)
    assert {a.status_code for a in answers} >= {200, 400, 401, 403, 303}
    secrets = {"telemetry token": alice, "revoked token": revoked, "expired token": expired,
               "admin token": admin, "other admin token": other_admin,
               "guessed token": guessed, "session id": session_id, "csrf token": csrf}
    places: dict[str, bytes] = {"server log": log_path.read_bytes()}
    for i, a in enumerate(answers):
        headers = b"\n".join(f"{k}: {v}".encode() for k, v in a.headers.items()
                             if k.lower() != "set-cookie" or a.request.url.path != "/admin/login")
        places[f"answer {i} {a.request.method} {a.request.url.path} {a.status_code}"] = (
            headers + b"\n" + a.content)
    conn = store.connect(config.control_db)
    places["audit log"] = orjson.dumps(
        [list(r) for r in conn.execute("SELECT * FROM audit")])
    conn.close()
    for db in sorted(config.data_dir.glob("*.db*")):
        places[db.name] = db.read_bytes()
    leaks = []
    for where, data in places.items():
        for what, secret in secrets.items():
            if what == "csrf token" and where.startswith("answer"):
                continue  # the session's own forms carry it: that is what it is for
            if secret and secret.encode() in data:
                leaks.append(f"{what} in {where}")
        # the raw body: its values only in the landing log (the stored events), nowhere else
        if marker.encode() in data and not where.startswith("landing.db"):
            leaks.append(f"request body in {where}")
        if keymark.encode() in data and not where.startswith("answer"):
            leaks.append(f"request body (a key) in {where}")
    print(f"secrets: places={len(places)} answers={len(answers)} secrets={len(secrets)} "
          f"leaks={len(leaks)}")
    assert leaks == [], leaks
