"""The admin web pages on a real server process: the session rules over plain HTTP, and the
settings page driven in real headless Chromium (Debian's package) through Playwright, against
real buckets on moto's S3 server."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import httpx
import pytest

from conftest import ACCOUNT, OTHER_ACCOUNT, PROFILE, REGION, Server, cli, make_server
from kiro_activity import location, store
from kiro_activity.store import Account

PAGE = f"/admin/accounts/{ACCOUNT}"


@pytest.fixture(scope="module")
def bucket(moto_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A bucket with the documented policy for user-activity-reports/, and the environment
    that sends the server's boto3 there."""
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL_S3": moto_url,
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
           "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    s3 = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                               region_name=REGION).client("s3", endpoint_url=moto_url)
    name = f"kiro-web-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    policy = location.documented_policy(name, "user-activity-reports",
                                        Account(ACCOUNT, REGION, PROFILE))
    s3.put_bucket_policy(Bucket=name, Policy=json.dumps(policy))
    yield name, env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           bucket: tuple[str, dict[str, str]]) -> Iterator[Server]:
    with pytest.MonkeyPatch.context() as mp:
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(key, raising=False)
        for key, value in bucket[1].items():
            mp.setenv(key, value)
        s = make_server(tmp_path_factory.mktemp("web"), "--no-schedule")
    yield s
    s.stop()


@contextmanager
def login(server: Server, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        r = client.post("/admin/login", data={"token": token, "next": "/admin/"})
        assert r.status_code == 303, r.text
        yield client


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def saved_state(server: Server) -> Any:
    conn = store.connect(server.config.control)
    try:
        return (conn.execute("SELECT * FROM settings ORDER BY 1").fetchall(),
                conn.execute("SELECT * FROM audit ORDER BY 1").fetchall(),
                conn.execute("SELECT * FROM drops ORDER BY 1, 2").fetchall())
    finally:
        conn.close()


def test_pages_need_a_session(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for method, path in [("GET", "/admin/"), ("GET", PAGE),
                             ("POST", f"{PAGE}/settings"),
                             ("POST", f"{PAGE}/deliveries/2020-01-01/replace")]:
            r = client.request(method, path, data={"enabled": "on"})
            assert r.status_code == 303 and r.headers["location"].startswith("/admin/login")
    with httpx.Client(base_url=server.url, timeout=30,
                      cookies={"kat_session": "forged"}) as client:
        r = client.get("/admin/")
        assert r.status_code == 303
        r = client.get("/")
        assert r.status_code == 303 and r.headers["location"] == "/admin/"


def test_login_refuses_telemetry_and_unknown_tokens(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post("/admin/login", data={"token": server.token("alice")})
        # #13: the same answer for a telemetry token and an unknown one: the login page must
        # not tell whether a token is a valid telemetry token
        assert r.status_code == 401 and "That is not a valid admin token" in r.text
        assert "telemetry" not in r.text
        assert "set-cookie" not in r.headers
        unknown = client.post("/admin/login", data={"token": "kat_unknown"})
        assert unknown.status_code == 401 and unknown.text == r.text


def test_session_cookie_flags_and_redirects(server: Server) -> None:
    token = server.admin_token("ada", ACCOUNT)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post("/admin/login", data={"token": token, "next": "https://evil.example/"})
        assert r.headers["location"] == "/admin/"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/admin" in cookie
        assert token not in cookie
        r = client.get("/admin/")
        assert r.status_code == 200 and ACCOUNT in r.text and OTHER_ACCOUNT not in r.text
        assert "default-src 'none'" in r.headers["content-security-policy"]
        assert "<script" not in r.text


def test_another_accounts_admin_sees_and_changes_nothing(server: Server) -> None:
    with login(server, server.admin_token("mallory", OTHER_ACCOUNT)) as client:
        csrf = csrf_of(client.get("/admin/").text)
        before = saved_state(server)
        r = client.get(PAGE)
        assert r.status_code == 403 and "does not administer" in r.text
        assert PROFILE not in r.text
        r = client.post(f"{PAGE}/settings", data={"csrf": csrf, "enabled": "on", "action": "save",
                                                  "layout": "delivered", "sse": "AES256"})
        assert r.status_code == 403
        r = client.post(f"{PAGE}/deliveries/2020-01-01/replace", data={"csrf": csrf})
        assert r.status_code == 403
        assert saved_state(server) == before


def test_changes_need_the_csrf_token_and_our_origin(server: Server) -> None:
    with login(server, server.admin_token("ada", ACCOUNT)) as client:
        csrf = csrf_of(client.get(PAGE).text)
        form = {"enabled": "on", "layout": "delivered", "sse": "AES256", "action": "save"}
        before = saved_state(server)
        assert client.post(f"{PAGE}/settings", data=form).status_code == 403
        assert client.post(f"{PAGE}/settings", data={**form, "csrf": "0" * 64}).status_code == 403
        r = client.post(f"{PAGE}/settings", data={**form, "csrf": csrf},
                        headers={"origin": "https://evil.example"})
        assert r.status_code == 403 and "cannot post" in r.text
        assert saved_state(server) == before
        r = client.post(f"{PAGE}/settings", data={**form, "csrf": csrf},
                        headers={"origin": server.url})
        assert r.status_code == 303 and r.headers["location"] == f"{PAGE}?saved=1"
        client.post(f"{PAGE}/settings", data={**form, "enabled": "", "layout": "documented",
                                              "csrf": csrf})


def test_revoking_the_token_ends_the_session(server: Server) -> None:
    token = server.admin_token("temp", ACCOUNT)
    with login(server, token) as client:
        assert client.get(PAGE).status_code == 200
        conn = store.connect(server.config.control)
        store.revoke_tokens(conn, ACCOUNT, now=time.time(), actor="test", token=token)
        conn.close()
        r = client.get(PAGE)
        assert r.status_code == 303 and r.headers["location"].startswith("/admin/login")


#: a closed day within the retention (a report of a day past it is refused)
RECENT = (datetime.now(UTC).date() - timedelta(days=2)).isoformat()


def test_report_again_from_the_page(server: Server) -> None:
    ran = cli(server.data_dir, "report", "run", "--account", ACCOUNT, "--date", RECENT)
    assert ran.returncode == 0, ran.stderr
    with login(server, server.admin_token("ada", ACCOUNT)) as client:
        csrf = csrf_of(client.get(PAGE).text)
        r = client.post(f"{PAGE}/deliveries/{RECENT}/replace", data={"csrf": csrf})
        assert r.status_code == 303, r.text
        page = client.get(r.headers["location"]).text
        assert f"The report of {RECENT} was produced and delivered again." in page
        assert "report.replace" in page and "admin:ada" in page


# --- in a real browser --------------------------------------------------------------------------


def test_settings_page_in_chromium(server: Server, browser: Any,
                                   bucket: tuple[str, dict[str, str]]) -> None:
    """Log in, set a bad location and see its errors, fix it, save."""
    name = bucket[0]
    token = server.admin_token("ada", ACCOUNT)
    page = browser.new_page()
    page.goto(f"{server.url}{PAGE}")
    assert "/admin/login" in page.url
    page.fill("#token", "kat_wrong")
    page.click("#login button")
    assert "unknown, revoked or expired" in page.inner_text("#login-error")
    page.fill("#token", token)
    page.click("#login button")
    page.wait_for_url(f"{server.url}{PAGE}")
    assert page.inner_text("h1") == f"Account {ACCOUNT}"

    # 1. the bucket root: refused by the URI check
    page.fill("#s3_uri", f"s3://{name}")
    page.check("#enabled")
    page.click("#save")
    problems = page.inner_text("#findings")
    assert "the CSV file cannot be saved in the root of the bucket" in problems
    assert page.input_value("#s3_uri") == f"s3://{name}"  # what was typed is kept

    # 2. a prefix the bucket policy does not cover: refused by the policy check
    page.fill("#s3_uri", f"s3://{name}/other-prefix/")
    page.click("#save")
    problems = page.inner_text("#findings")
    assert "Not saved" in problems and "policy" in problems.lower()
    assert "other-prefix" in problems

    # 3. a bucket that does not exist
    page.fill("#s3_uri", f"s3://{name}-missing/user-activity-reports/")
    page.click("#check")
    assert "does not exist" in page.inner_text("#findings")

    # 4. fixed: check first (not saved), then save
    page.fill("#s3_uri", f"s3://{name}/user-activity-reports/")
    page.select_option("#layout", "delivered")
    page.click("#check")
    assert "passes every check" in page.inner_text("#notice")
    conn = store.connect(server.config.control)
    assert conn.execute("SELECT s3_uri FROM settings WHERE account_id = ?",
                        (ACCOUNT,)).fetchone() in (None, (None,))
    page.click("#save")
    page.wait_for_url(re.compile(r".*\?saved=1$"))
    assert page.inner_text("#notice") == "Settings saved."
    assert page.input_value("#s3_uri") == f"s3://{name}/user-activity-reports/"
    assert page.input_value("#layout") == "delivered"
    assert page.is_checked("#enabled")
    audit = page.inner_text("#audit")
    assert "settings.update" in audit and "admin:ada" in audit
    row = conn.execute("SELECT enabled, s3_uri, layout FROM settings WHERE account_id = ?",
                       (ACCOUNT,)).fetchone()
    conn.close()
    assert row == (1, f"s3://{name}/user-activity-reports/", "delivered")

    # the session cookie is out of reach of page scripts
    assert page.evaluate("document.cookie") == ""
    # logging out ends the session
    page.click("header form button")
    page.wait_for_url(re.compile(r".*/admin/login$"))
    page.goto(f"{server.url}{PAGE}")
    assert "/admin/login" in page.url
    page.close()


def test_login_from_another_site_and_bad_forms(server: Server) -> None:
    token = server.admin_token("ada", ACCOUNT)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for headers in ({"origin": "https://evil.example"}, {"sec-fetch-site": "cross-site"},
                        {"sec-fetch-site": "same-site"}):
            r = client.post("/admin/login", data={"token": token}, headers=headers)
            assert r.status_code == 403, headers
            assert "set-cookie" not in r.headers
        r = client.post("/admin/login", data={"token": token},
                        headers={"sec-fetch-site": "same-origin"})
        assert r.status_code == 303
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post("/admin/login", data={f"f{i}": "x" for i in range(50)})
        assert r.status_code == 400 and "could not be read" in r.text
        r = client.post("/admin/login", content=b"--x\r\n",
                        headers={"content-type": "multipart/form-data"})
        assert r.status_code == 400
        r = client.post("/admin/login", files={"token": ("t.txt", b"x")})
        assert r.status_code == 400
        r = client.post("/admin/login", content=b"token=" + b"x" * 300_000,
                        headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 400 and "over" in r.text
        assert client.get("/health").status_code == 200


def test_logout_ends_the_session_on_the_server(server: Server) -> None:
    with login(server, server.admin_token("ada", ACCOUNT)) as client:
        page = client.get(PAGE)
        cookie = client.cookies["kat_session"]
        r = client.post("/admin/logout", data={"csrf": csrf_of(page.text)})
        assert r.status_code == 303
    with httpx.Client(base_url=server.url, timeout=30,
                      cookies={"kat_session": cookie}) as replay:
        r = replay.get(PAGE)
        assert r.status_code == 303 and r.headers["location"].startswith("/admin/login")


def test_notice_is_not_free_text(server: Server) -> None:
    with login(server, server.admin_token("ada", ACCOUNT)) as client:
        page = client.get(f"{PAGE}?replaced=your session expired, log in at evil.example").text
        assert "evil.example" not in page
