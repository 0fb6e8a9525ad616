"""The dashboard's pages on a real server process: in real headless Chromium (log in, open the
overview, change the range, sort and search users, open a user, download the export, with the
figures on screen checked against tests/usage_data.py's hand-worked values; a screenshot of each
page in test-artifacts/screenshots/), with scripts off, and the pages' isolation over HTTP."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import ACCOUNT, OTHER_ACCOUNT, Server, screenshot, setup_accounts
from kiro_activity.config import Config
from kiro_activity.demo import free_port
from usage_data import seed

BASE = f"/admin/accounts/{ACCOUNT}/usage"
SPAN = "from=2026-11-28&to=2026-11-29"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("dash-web")
    setup_accounts(data)
    seed(Config(data_dir=data))
    s = Server(data_dir=data, port=free_port(),
               extra=("--no-schedule", "--fake-clock-start", "2026-11-30T12:00:00+00:00"))
    s.start()
    yield s
    s.stop()


@pytest.fixture
def page(server: Server, browser: Any) -> Iterator[Any]:
    """A logged-in page; fails the test on a script error or a CSP violation."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    pg.on("console", lambda m: problems.append(m.text) if m.type == "error"
          and "favicon" not in m.text and "404" not in m.text else None)
    pg.goto(server.url + "/admin/login")
    pg.fill("input[name=token]", server.admin_token("ada", ACCOUNT))
    pg.click("button[type=submit]")
    pg.wait_for_url(re.compile(r".*/admin/$"))
    yield pg
    context.close()
    assert problems == []


def figure(pg: Any, name: str) -> str:
    return str(pg.locator(f"#fig-{name} .value").inner_text())


def column(pg: Any, table: str, index: int) -> list[str]:
    cells = pg.locator(f"#{table} tbody tr td:nth-child({index})")
    return [str(t) for t in cells.all_inner_texts()]


def test_overview_range_users_user_and_export(page: Any, server: Server) -> None:
    pg = page
    pg.click(f"a[href='/admin/accounts/{ACCOUNT}/usage']")  # from the accounts list
    # the default range: the last 30 closed days (2026-10-31 to 2026-11-29)
    assert pg.input_value("#from") == "2026-10-31" and pg.input_value("#to") == "2026-11-29"
    expected = {"active-users": "3", "idle-seats": "1", "shown": "5", "accepted": "3",
                "rate": "60.0%", "line-rate": "46.7%", "ai-lines": "21", "chat-sent": "1",
                "chat-interacted": "1", "findings": "0"}
    assert {k: figure(pg, k) for k in expected} == expected
    assert pg.locator("#not-final").count() == 0
    pg.wait_for_selector(".chart[data-drawn='1'] canvas")
    assert pg.locator(".chart[data-drawn='1']").count() == 5
    assert column(pg, "by_ide", 1) == ["VSCODE", "JETBRAINS"]
    assert column(pg, "by_ide", 3) == ["6", "2"]
    assert column(pg, "by_language", 1) == ["python", "typescript", "java", "none"]
    assert pg.locator("#idle li").all_inner_texts() == ["carol"]
    definition = pg.locator("#def-Inline_AICodeLines").inner_text()
    assert "Lines of inline suggestions accepted" in definition
    screenshot(pg, "dashboard-overview")

    pg.click("#preset-today")  # today so far: alice's one chat message, marked not final
    assert pg.input_value("#from") == pg.input_value("#to") == "2026-11-30"
    assert (figure(pg, "active-users"), figure(pg, "chat-sent"), figure(pg, "idle-seats")) == (
        "1", "1", "3")
    assert pg.locator("#not-final").is_visible()
    assert column(pg, "days", 2) == ["open"]

    pg.fill("#from", "2026-11-28")
    pg.fill("#to", "2026-11-30")
    pg.click("#apply")
    assert (figure(pg, "active-users"), figure(pg, "chat-sent"), figure(pg, "shown")) == (
        "3", "2", "5")
    assert column(pg, "days", 1) == ["2026-11-28", "2026-11-29", "2026-11-30"]
    assert column(pg, "days", 3) == ["2", "2", "1"]
    assert column(pg, "days", 2) == ["not delivered", "not delivered", "open"]

    pg.click("nav.tabs >> text=Users")
    assert column(pg, "users", 1) == ["alice", "bob", "=dave"]  # by events, most first
    assert column(pg, "users", 3) == ["5", "3", "1"]
    pg.click("a[data-sort='user_id']")
    assert column(pg, "users", 1) == ["=dave", "alice", "bob"]  # code-point order
    pg.click("a[data-sort='inline_acceptance_rate']")
    assert column(pg, "users", 6) == ["100.0%", "66.7%", "0.0%"]
    pg.fill("#q", "BO")
    pg.click("#search-button")
    assert column(pg, "users", 1) == ["bob"]
    assert "1 user active" in pg.locator("#count").inner_text()
    screenshot(pg, "dashboard-users")

    pg.click("#users >> text=bob")
    assert pg.locator("#user-id").inner_text() == "bob"
    assert (figure(pg, "active-users"), figure(pg, "shown"), figure(pg, "accepted"),
            figure(pg, "rate"), figure(pg, "ai-lines")) == ("1", "1", "0", "0.0%", "14")
    assert pg.locator("#fig-idle-seats").count() == 0
    assert column(pg, "days", 4) == ["1", "2", "0"]
    pg.wait_for_selector(".chart[data-drawn='1'] canvas")
    screenshot(pg, "dashboard-user")

    with pg.expect_download() as download:
        pg.click("#export")
    path = download.value.path()
    assert download.value.suggested_filename == f"{ACCOUNT}_usage_2026-11-28_2026-11-30.csv"
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["UserId"] for r in rows] == ["'=dave", "alice", "bob"]
    assert [r["Chat_MessagesSent"] for r in rows] == ["0", "2", "0"]
    assert [r["Inline_AICodeLines"] for r in rows] == ["1", "6", "0"]


def test_pages_work_with_scripts_off(server: Server, browser: Any) -> None:
    context = browser.new_context(java_script_enabled=False)
    pg = context.new_page()
    try:
        pg.goto(server.url + "/admin/login")
        pg.fill("input[name=token]", server.admin_token("ada", ACCOUNT))
        pg.click("button[type=submit]")
        pg.goto(f"{server.url}{BASE}?{SPAN}")
        assert figure(pg, "active-users") == "3"
        assert column(pg, "days", 5) == ["4", "1"]  # suggestions shown per day
        assert pg.locator(".chart[data-drawn='1']").count() == 0
        screenshot(pg, "dashboard-overview-no-script")
    finally:
        context.close()


def test_pages_send_a_csp_that_allows_only_own_scripts(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.post("/admin/login", data={"token": server.admin_token("ada", ACCOUNT)})
        r = client.get(f"{BASE}?{SPAN}")
        assert r.status_code == 200
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "default-src 'none'" in csp
        for src in re.findall(r'<script src="([^"]+)"', r.text):
            assert src.startswith("/admin/static/")
            asset = client.get(src)
            assert asset.status_code == 200 and "javascript" in asset.headers["content-type"]
        assert client.get("/admin/static/vendor/uplot/uPlot.min.css").status_code == 200
        assert client.get("/admin/static/nothing.js").status_code == 404


PAGES = [f"{BASE}?{SPAN}", f"{BASE}/users?{SPAN}", f"{BASE}/user?id=alice&{SPAN}",
         f"{BASE}.csv?{SPAN}"]


@pytest.mark.parametrize("path", PAGES)
def test_pages_are_isolated(server: Server, path: str) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.get(path)  # no session
        assert r.status_code == 303 and r.headers["location"].startswith("/admin/login")
        bearer = {"Authorization": f"Bearer {server.admin_token('x', ACCOUNT)}"}
        r = client.get(path, headers=bearer)
        assert r.status_code == 303  # a bearer token is not a session
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.post("/admin/login", data={"token": server.admin_token("eve", OTHER_ACCOUNT)})
        r = client.get(path)
        assert r.status_code == 403 and "does not administer" in r.text
        assert "alice" not in r.text.replace("id=alice", "") and "Inline" not in r.text
        mine = client.get(f"/admin/accounts/{OTHER_ACCOUNT}/usage?from=2026-11-28&to=2026-11-28")
        assert mine.status_code == 200 and "mallory" not in mine.text  # her own: no users list
        users = client.get(f"/admin/accounts/{OTHER_ACCOUNT}/usage/users?from=2026-11-28"
                           "&to=2026-11-28")
        assert "mallory" in users.text and "alice" not in users.text


@pytest.mark.parametrize(("query", "message"), [
    ("from=2026-11-30&to=2026-11-01", "is after"),
    ("preset=365", "preset"),
    ("from=nope", "not YYYY-MM-DD"),
])
def test_bad_ranges_get_a_clear_page(server: Server, query: str, message: str) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.post("/admin/login", data={"token": server.admin_token("ada", ACCOUNT)})
        r = client.get(f"{BASE}?{query}")
        assert r.status_code == 400 and message in r.text
        r = client.get(f"{BASE}/users?{SPAN}&sort=evil")
        assert r.status_code == 400 and "sort &#39;evil&#39; is not one of" in r.text
        r = client.get(f"{BASE}/users?{SPAN}&page=-1")
        assert r.status_code == 400
        r = client.get(f"{BASE}/user?{SPAN}")
        assert r.status_code == 400 and "which user" in r.text
        assert "Traceback" not in r.text
