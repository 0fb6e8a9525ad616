"""The admin HTTP API (/admin/v1/) on a real server process: authorization, settings, audit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from conftest import ACCOUNT, OTHER_ACCOUNT, Server, cli, make_server
from kiro_activity import audit, store

A = f"/admin/v1/accounts/{ACCOUNT}"
YESTERDAY = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
TOMORROW = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
#: every admin endpoint, with a body that would change something if it were let through
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/admin/v1/accounts/{a}", None),
    ("GET", "/admin/v1/accounts/{a}/settings", None),
    ("PATCH", "/admin/v1/accounts/{a}/settings", {"enabled": True, "layout": "delivered"}),
    ("POST", "/admin/v1/accounts/{a}/settings/validate", {}),
    ("GET", "/admin/v1/accounts/{a}/deliveries", None),
    ("POST", f"/admin/v1/accounts/{{a}}/deliveries/{YESTERDAY}/replace", None),
    ("GET", "/admin/v1/accounts/{a}/audit", None),
    ("GET", "/admin/v1/accounts/{a}/tokens", None),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = make_server(tmp_path_factory.mktemp("admin"), "--no-schedule")
    yield s
    s.stop()


def call(server: Server, method: str, path: str, token: str | None = None,
         body: Any = None, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        return client.request(method, path, headers=headers, json=body, **kwargs)


def snapshot(server: Server) -> dict[str, Any]:
    """Everything an admin call could change."""
    conn = store.connect(server.config.control)
    try:
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                for table in ("settings", "audit", "drops", "drop_objects", "tokens",
                              "token_scopes", "delivery_errors")}
    finally:
        conn.close()


def test_every_endpoint_refuses_strangers(server: Server) -> None:
    """No token, a bad token, a telemetry token, another account's admin, a revoked admin:
    each is refused on every endpoint of ACCOUNT, and nothing is read or changed."""
    telemetry = server.token("alice")
    other_admin = server.admin_token("mallory", OTHER_ACCOUNT)
    revoked = server.admin_token("former", ACCOUNT)
    conn = store.connect(server.config.control)
    store.revoke_tokens(conn, ACCOUNT, now=time.time(), actor="test", token=revoked)
    conn.close()
    before = snapshot(server)
    cases = [(None, 401, "missing Authorization"), ("kat_nonsense", 401, "unknown"),
             (revoked, 401, "revoked"), (telemetry, 403, "telemetry token"),
             (other_admin, 403, f"does not administer account '{ACCOUNT}'")]
    for method, template, body in ENDPOINTS:
        for token, status, words in cases:
            r = call(server, method, template.format(a=ACCOUNT), token, body)
            assert r.status_code == status, (method, template, token, r.text)
            error = r.json()["error"]
            assert words in error["message"]
            assert set(error) == {"type", "message", "problems", "warnings"}
            assert "111122223333_by_user" not in r.text and "profile/" not in r.text
            if status == 401:
                assert r.headers["www-authenticate"].startswith("Bearer")
    assert snapshot(server) == before


def test_an_admin_of_one_account_cannot_probe_others(server: Server) -> None:
    """A missing account and someone else's account get the same answer."""
    token = server.admin_token("ada", ACCOUNT)
    for target in (OTHER_ACCOUNT, "999999999999", "not-an-account"):
        r = call(server, "GET", f"/admin/v1/accounts/{target}/settings", token)
        assert r.status_code == 403
        assert r.json()["error"]["message"] == (
            f"this admin token does not administer account {target!r}")
    listed = call(server, "GET", "/admin/v1/accounts", token).json()["accounts"]
    assert [a["account_id"] for a in listed] == [ACCOUNT]
    # the ingest side does not take admin tokens either
    r = call(server, "POST", "/SendTelemetryEvent", token, {"telemetryEvent": {}})
    assert r.status_code == 403 and "needs a user token" in r.json()["message"]


def test_admin_of_two_accounts_sees_both(server: Server) -> None:
    token = server.admin_token("both", ACCOUNT, OTHER_ACCOUNT)
    listed = call(server, "GET", "/admin/v1/accounts", token).json()["accounts"]
    assert [a["account_id"] for a in listed] == [ACCOUNT, OTHER_ACCOUNT]
    for account in (ACCOUNT, OTHER_ACCOUNT):
        assert call(server, "GET", f"/admin/v1/accounts/{account}", token).status_code == 200


def test_change_settings_lists_every_problem_and_saves_nothing(server: Server) -> None:
    token = server.admin_token("ada", ACCOUNT)
    before = snapshot(server)
    r = call(server, "PATCH", f"{A}/settings", token,
             {"enabled": "yes", "layout": "sideways", "colour": "blue",
              "s3_uri": "s3://Bad..Bucket/", "sse": "aws:kms", "kms_key_arn": "alias/reports"})
    assert r.status_code == 400
    problems = {(p["check"], p["message"]) for p in r.json()["error"]["problems"]}
    text = "\n".join(m for _, m in problems)
    assert "enabled must be true or false, not 'yes'" in text
    assert "layout 'sideways' must be one of: documented, delivered" in text
    assert "unknown setting 'colour'" in text
    assert "the CSV file cannot be saved in the root of the bucket" in text
    assert "is an alias, and aliases are refused" in text
    assert any(check == "uri" for check, _ in problems)
    assert snapshot(server) == before


def test_change_settings_saves_and_audits(server: Server) -> None:
    token = server.admin_token("grace", ACCOUNT)
    r = call(server, "PATCH", f"{A}/settings", token, {"enabled": True, "layout": "documented"})
    assert r.status_code == 200, r.text
    saved = r.json()["settings"]
    assert saved["enabled"] is True and saved["layout"] == "documented"
    assert r.json()["validation"]["valid"] is True
    got = call(server, "GET", f"{A}/settings", token).json()
    assert got["settings"] == saved
    assert set(got["schema"]["properties"]) == {"enabled", "s3_uri", "layout", "sse",
                                                "kms_key_arn"}
    entries = call(server, "GET", f"{A}/audit", token).json()["entries"]
    newest = entries[0]
    assert newest["action"] == "settings.update"
    assert newest["actor"].startswith("admin:grace (token ")
    assert newest["after"] == {"enabled": True, "layout": "documented"}
    assert newest["before"]["layout"] == "delivered"
    # the same change again changes nothing and adds no audit entry
    call(server, "PATCH", f"{A}/settings", token, {"layout": "documented"})
    assert call(server, "GET", f"{A}/audit", token).json()["entries"][0]["id"] == newest["id"]
    # the other account is untouched
    conn = store.connect(server.config.control)
    assert conn.execute("SELECT count(*) FROM settings WHERE account_id = ?",
                        (OTHER_ACCOUNT,)).fetchone()[0] == 0
    assert not [e for e in audit.audit_log(conn, OTHER_ACCOUNT)
                if e.action == "settings.update"]
    conn.close()


def test_validate_is_a_dry_run(server: Server) -> None:
    token = server.admin_token("ada", ACCOUNT)
    before = call(server, "GET", f"{A}/settings", token).json()["settings"]
    r = call(server, "POST", f"{A}/settings/validate", token,
             {"settings": {"s3_uri": "s3://bucket-name"}})
    assert r.status_code == 200
    body = r.json()
    assert body["valid"] is False
    assert "root of the bucket" in body["problems"][0]["message"]
    assert call(server, "GET", f"{A}/settings", token).json()["settings"] == before
    r = call(server, "POST", f"{A}/settings/validate", token, {"nonsense": 1})
    assert r.status_code == 400 and "unknown field" in r.json()["error"]["message"]


def test_bad_bodies(server: Server) -> None:
    token = server.admin_token("ada", ACCOUNT)
    for raw, words in [(b"{not json", "not valid JSON"), (b"[1, 2]", "must be a JSON object"),
                       (b"x" * (2 << 20), "bytes")]:
        r = call(server, "PATCH", f"{A}/settings", token, content=raw)
        assert r.status_code == 400, raw[:20]
        assert words in r.json()["error"]["message"]
    for query in ("limit=0", "limit=%C2%B2", "limit=1e3", "before=-1", "before=%D9%A3"):
        r = call(server, "GET", f"{A}/audit?{query}", token)
        assert r.status_code == 400, query
        assert "must be an integer" in r.json()["error"]["message"]
    for policy in (5, [1], True, 1.5):
        for path, body in ((f"{A}/settings", {"policy": policy}),
                           (f"{A}/settings/validate", {"policy": policy})):
            r = call(server, "PATCH" if path.endswith("settings") else "POST", path, token,
                     body)
            assert r.status_code == 400, (path, policy)
            assert "policy must be a JSON object or JSON text" in r.json()["error"]["message"]
    r = call(server, "POST", f"{A}/settings/validate", token,
             {"settings": {"s3_uri": "s3://bucket-name/p/"}, "policy": "[" * 100_000})
    assert r.status_code == 200  # S3 is out of reach here: refused, not crashed
    assert not r.json()["valid"]


def test_unknown_routes_and_methods(server: Server) -> None:
    """Authentication comes first; then a 404 or a 405, in the JSON error shape."""
    token = server.admin_token("ada", ACCOUNT)
    r = call(server, "GET", "/admin/v1/nothing-here")
    assert r.status_code == 401
    r = call(server, "GET", "/admin/v1/nothing-here", server.token("alice"))
    assert r.status_code == 403
    r = call(server, "GET", "/admin/v1/nothing-here", token)
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFound"
    r = call(server, "DELETE", f"{A}/settings", token)
    assert r.status_code == 405 and r.json()["error"]["type"] == "MethodNotAllowed"
    assert "takes GET, PATCH" in r.json()["error"]["message"]


def test_deliveries_and_report_again(server: Server) -> None:
    token = server.admin_token("ada", ACCOUNT)
    r = call(server, "POST", f"{A}/deliveries/{TOMORROW}/replace", token)
    assert r.status_code == 409 and "not closed" in r.json()["error"]["message"]
    for day in ("yesterday", "2020W011", "20201130", "2020-11-31", "0001-01-01"):
        r = call(server, "POST", f"{A}/deliveries/{day}/replace", token)
        assert r.status_code == 400, day
        assert day in r.json()["error"]["message"]
    # reports are off for this account and the day was never produced: nothing to replace
    r = call(server, "POST", f"/admin/v1/accounts/{OTHER_ACCOUNT}/deliveries/{YESTERDAY}/"
             "replace", server.admin_token("olga", OTHER_ACCOUNT))
    assert r.status_code == 409 and "reports were not on" in r.json()["error"]["message"]
    ran = cli(server.data_dir, "report", "run", "--account", ACCOUNT, "--date", YESTERDAY)
    assert ran.returncode == 0, ran.stderr  # produced once by the operator: now replaceable
    r = call(server, "POST", f"{A}/deliveries/{YESTERDAY}/replace", token)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "delivered"
    assert all(o["result"] in ("created", "replaced") for o in r.json()["objects"])
    status = call(server, "GET", f"{A}/deliveries", token).json()
    [day] = [d for d in status["days"] if d["day"] == YESTERDAY]
    assert day["state"] == "delivered" and day["objects_delivered"] == day["objects"]
    again = call(server, "POST", f"{A}/deliveries/{YESTERDAY}/replace", token).json()
    assert {o["result"] for o in again["objects"]} == {"replaced"}
    entries = [e for e in call(server, "GET", f"{A}/audit", token).json()["entries"]
               if e["action"] == "report.replace"]
    assert entries[0]["target"] == f"report {YESTERDAY}"
    assert entries[0]["after"]["replacements"] == entries[0]["before"]["replacements"] + 1


def test_tokens_are_listed_never_shown(server: Server) -> None:
    token = server.admin_token("ada", ACCOUNT)
    telemetry = server.token("bob")
    r = call(server, "GET", f"{A}/tokens", token)
    assert r.status_code == 200
    assert token not in r.text and telemetry not in r.text and "kat_" not in r.text
    users = {(t["kind"], t["user"]) for t in r.json()["tokens"]}
    assert ("admin", "ada") in users and ("user", "bob") in users
    # an admin of both accounts is listed, and audited, without naming the other account
    server.admin_token("both-ways", ACCOUNT, OTHER_ACCOUNT)
    listed = call(server, "GET", f"{A}/tokens", token)
    assert "both-ways" in listed.text and OTHER_ACCOUNT not in listed.text
    assert OTHER_ACCOUNT not in call(server, "GET", f"{A}/audit?limit=1000", token).text
    audit = call(server, "GET", f"{A}/audit?limit=1000", token)
    assert "kat_" not in audit.text
    issued = [e for e in audit.json()["entries"] if e["action"] == "token.issue"]
    assert {"kind", "user", "token_id"} <= set(issued[0]["after"])


def test_audit_pages(server: Server) -> None:
    token = server.admin_token("ada", ACCOUNT)
    first = call(server, "GET", f"{A}/audit?limit=2", token).json()["entries"]
    assert len(first) == 2 and first[0]["id"] > first[1]["id"]
    rest = call(server, "GET", f"{A}/audit?limit=2&before={first[1]['id']}", token).json()
    assert all(e["id"] < first[1]["id"] for e in rest["entries"])
