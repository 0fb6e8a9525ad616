"""The dashboard's figures: a fixed data set worked out by hand (tests/usage_data.py), the
export equal to the sum of the delivered reports, the breakdowns equal to the totals, snapshots
equal to the live counters, and the data endpoints' isolation on a real server process."""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ACCOUNT, OTHER_ACCOUNT, Server, setup_accounts
from kiro_activity import daily, dashboard, settings, store, usage
from kiro_activity.config import Config
from kiro_activity.demo import free_port
from kiro_activity.errors import UsageError
from kiro_activity.metrics import METRICS, column_metric
from kiro_activity.schedule import Scheduler
from usage_data import D1, D2, NOW, TODAY, seed

USAGE = f"/admin/v1/accounts/{ACCOUNT}/usage"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    cfg = Config(data_dir=tmp_path_factory.mktemp("dash"))
    setup_accounts(cfg.data_dir)
    seed(cfg)
    return cfg


def rng(first: str | None = "2026-11-28", last: str | None = "2026-11-29") -> dashboard.Range:
    return dashboard.parse_range(first, last, NOW)


def test_overview_figures_worked_out_by_hand(config: Config) -> None:
    o = dashboard.overview(config, ACCOUNT, rng(), NOW)
    assert [(d["day"], d["active_users"], d["events"]) for d in o["days"]] == [
        ("2026-11-28", 2, 5), ("2026-11-29", 2, 3)]
    t = o["totals"]
    assert o["active_users"] == 3 and t["events"] == 8
    assert (t["Inline_SuggestionsCount"], t["Inline_AcceptanceCount"], t["Inline_AICodeLines"],
            t["Inline_SuggestedLines"]) == (5, 3, 7, 15)
    assert (t["Chat_AICodeLines"], t["Chat_MessagesInteracted"], t["Chat_MessagesSent"]) == (
        14, 1, 1)
    assert o["rates"]["inline_acceptance_rate"] == pytest.approx(3 / 5)
    assert o["rates"]["inline_line_acceptance_rate"] == pytest.approx(7 / 15)
    assert o["rates"]["dev_line_acceptance_rate"] is None  # nothing to rate
    lines = {a["feature"]: a["lines"] for a in o["ai_lines"]}
    assert lines["Inline"] == 7 and lines["Chat"] == 14 and lines["/dev"] == 0
    ide = {b["value"]: (b["active_users"], b["events"]) for b in o["by_ide"]}
    assert ide == {"VSCODE": (3, 6), "JETBRAINS": (2, 2)}
    lang = {b["value"]: (b["active_users"], b["events"]) for b in o["by_language"]}
    assert lang == {"python": (2, 4), "typescript": (1, 2), "java": (1, 1), "none": (1, 1)}
    assert sorted(o["active"]) == ["=dave", "alice", "bob"]  # never the other account's
    assert o["partial_line_rate"] is False


def test_one_user_and_today(config: Config) -> None:
    bob = dashboard.overview(config, ACCOUNT, rng(), NOW, user="bob")
    assert [d["events"] for d in bob["days"]] == [1, 2]
    assert bob["totals"]["Chat_AICodeLines"] == 14 and bob["totals"]["Inline_SuggestionsCount"] == 1
    assert bob["by_ide"] == [{"value": "JETBRAINS", "active_users": 1},
                             {"value": "VSCODE", "active_users": 1}]
    assert [b["value"] for b in bob["by_language"]] == ["java", "typescript"]
    assert bob["rates"]["inline_line_acceptance_rate"] == 0.0  # 0 of 3 lines shown
    today = dashboard.overview(config, ACCOUNT, rng("2026-11-30", "2026-11-30"), NOW)
    assert today["active_users"] == 1 and today["totals"]["Chat_MessagesSent"] == 1
    conn = store.connect(config.control_db)
    try:
        assert dashboard.idle_seats(conn, ACCOUNT, today["active"], NOW) == ["=dave", "bob",
                                                                             "carol"]
        assert dashboard.idle_seats(conn, ACCOUNT, ["alice", "bob", "=dave"], NOW) == ["carol"]
        fresh = dashboard.freshness(conn, ACCOUNT, rng("2026-11-29", "2026-11-30"), NOW)
    finally:
        conn.close()
    assert fresh["includes_today"] and fresh["as_of"] == "2026-11-30T12:00:00Z"
    assert [(d["day"], d["state"], d["final"]) for d in fresh["days"]] == [
        ("2026-11-29", "not delivered", True), ("2026-11-30", "open", False)]


def test_users_table_sorts_searches_and_pages(config: Config) -> None:
    page = dashboard.users(config, ACCOUNT, rng(), NOW, sort="events")
    assert [(u["user_id"], u["active_days"], u["events"]) for u in page["users"]] == [
        ("alice", 1, 4), ("bob", 2, 3), ("=dave", 1, 1)]
    up = dashboard.users(config, ACCOUNT, rng(), NOW, sort="inline_acceptance_rate",
                         descending=False)
    assert [u["user_id"] for u in up["users"]] == ["bob", "alice", "=dave"]
    found = dashboard.users(config, ACCOUNT, rng(), NOW, search="AL")
    assert [u["user_id"] for u in found["users"]] == ["alice"] and found["total"] == 1
    second = dashboard.users(config, ACCOUNT, rng(), NOW, sort="user_id", descending=False,
                             page=2, size=2)
    assert [u["user_id"] for u in second["users"]] == ["bob"]
    assert (second["total"], second["pages"]) == (3, 2)
    past = dashboard.users(config, ACCOUNT, rng(), NOW, sort="user_id", page=99, size=2)
    assert past["page"] == 2 and past["users"]  # past the end: the last page
    with pytest.raises(UsageError, match="sort 'drop table'"):
        dashboard.users(config, ACCOUNT, rng(), NOW, sort="drop table")


@pytest.mark.parametrize(("first", "last", "message"), [
    ("2026-11-30", "2026-11-28", "is after"),
    ("2026-11-28", "2026-12-01", "in the future"),
    ("2025-01-01", "2026-11-29", "at most 366"),
    ("28-11-2026", None, "not YYYY-MM-DD"),
    ("2026-02-30", None, "not a day of the calendar"),
])
def test_bad_ranges_are_refused(first: str, last: str | None, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        dashboard.parse_range(first, last, NOW)


def test_from_today_alone_is_today() -> None:
    r = dashboard.parse_range("2026-11-30", None, NOW)
    assert (r.first, r.last) == (TODAY, TODAY)
    r = dashboard.parse_range("2026-11-20", None, NOW)
    assert (r.first.isoformat(), r.last.isoformat()) == ("2026-11-20", "2026-11-29")


def test_default_range_is_the_last_30_closed_days() -> None:
    r = dashboard.parse_range(None, None, NOW)
    assert (r.first.isoformat(), r.last.isoformat(), len(r.days)) == (
        "2026-10-31", "2026-11-29", 30)


def read_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


@pytest.mark.parametrize("layout", ["delivered", "documented"])
def test_export_equals_the_sum_of_the_delivered_reports(tmp_path: Path, layout: str) -> None:
    cfg = Config(data_dir=tmp_path / "data")
    setup_accounts(cfg.data_dir)
    seed(cfg)
    conn = store.connect(cfg.control_db)
    settings.update(conn, ACCOUNT, {"enabled": True, "layout": layout}, actor="test", now=NOW,
                    today=D1, writer=cfg.writer_principal)
    conn.close()
    delivered: dict[str, dict[str, int]] = {}
    for day in (D1, D2):
        out = daily.deliver_day(cfg, ACCOUNT, day, now=lambda: NOW)
        assert out.state == "delivered"
        [key] = [k for k, _ in out.objects if k.endswith(".csv")]
        for row in read_rows((cfg.data_dir / "reports" / key).read_bytes()):
            user = row.pop("UserId")
            row.pop("Date")
            mine = delivered.setdefault(user, dict.fromkeys(row, 0))
            for name, value in row.items():
                mine[name] += int(value)
    export = dashboard.export_csv(dashboard.user_totals(cfg, ACCOUNT, rng(), NOW), layout)
    rows = read_rows(export)
    assert {r.pop("UserId"): {k: int(v) for k, v in r.items()} for r in rows} == delivered
    assert export.splitlines()[0].decode().split(",")[1:] == list(delivered["alice"])
    assert b'"\'=dave"' in export  # quoted and neutralised as in the report
    assert len(column_metric(layout)) == len(METRICS) == 44


def test_breakdowns_sum_to_the_totals(config: Config) -> None:
    o = dashboard.overview(config, ACCOUNT, rng("2026-11-28", "2026-11-30"), NOW)
    for dim in ("by_ide", "by_language"):
        for figure in usage.FIGURES:
            assert sum(b[figure] for b in o[dim]) == o["totals"][figure], (dim, figure)
    assert sum(d["events"] for d in o["days"]) == o["totals"]["events"] == 9


def test_snapshots_equal_the_live_counters(config: Config) -> None:
    shutil.rmtree(config.data_dir / "usage", ignore_errors=True)
    just_closed = NOW - 12 * 3600 + 60  # a minute after D2 closed: not settled yet
    live = dashboard.overview(config, ACCOUNT, rng(), just_closed)
    assert usage.snapshot_paths(config, ACCOUNT, D1)["users"].exists()
    assert not usage.complete(usage.snapshot_paths(config, ACCOUNT, D2))
    snapped = dashboard.overview(config, ACCOUNT, rng(), NOW)
    assert usage.snapshot_paths(config, ACCOUNT, D2)["users"].exists()
    assert not usage.snapshot_paths(config, ACCOUNT, TODAY)["users"].exists()  # not final
    assert snapped == live == dashboard.overview(config, ACCOUNT, rng(), NOW)


def test_old_counters_show_as_not_recorded(tmp_path: Path) -> None:
    """Counters kept before the breakdown existed still sum to the totals."""
    cfg = Config(data_dir=tmp_path / "data")
    setup_accounts(cfg.data_dir)
    seed(cfg)
    from kiro_activity import landing
    conn = landing.connect(cfg.landing_db)
    d1 = (D1 - date(1970, 1, 1)).days
    for table in ("dim_day", "dim_users"):  # D1 counted by a version without the breakdown
        conn.execute(f"DELETE FROM {table} WHERE day = ?", (d1,))
    conn.execute("UPDATE interactions SET ide = NULL, language = NULL")
    conn.close()
    o = dashboard.overview(cfg, ACCOUNT, rng(), NOW)
    ide = {b["value"]: (b["active_users"], b["events"]) for b in o["by_ide"]}
    assert ide == {"VSCODE": (2, 3), "not recorded": (2, 5)}
    assert o["partial_line_rate"]  # D1's suggested lines were not kept: the page says so
    assert o["totals"]["events"] == 8 and o["totals"]["Chat_AICodeLines"] == 14
    for dim in ("by_ide", "by_language"):
        for figure in usage.FIGURES:
            assert sum(b[figure] for b in o[dim]) == o["totals"][figure], (dim, figure)


# --- the data endpoints on a real server process ---------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("dash-api")
    setup_accounts(data)
    seed(Config(data_dir=data))
    conn = store.connect(Config(data_dir=data).control_db)
    settings.update(conn, ACCOUNT, {"layout": "delivered"}, actor="test", now=NOW, today=D1,
                    writer="q.amazonaws.com")
    conn.close()
    s = Server(data_dir=data, port=free_port(),
               extra=("--no-schedule", "--fake-clock-start", "2026-11-30T12:00:00+00:00"))
    s.start()
    yield s
    s.stop()


def get(server: Server, token: str | None, path: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(server.url + path, headers=headers, timeout=60)


def test_usage_endpoint(server: Server) -> None:
    r = get(server, server.admin_token("ada", ACCOUNT), f"{USAGE}?from=2026-11-28&to=2026-11-29")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["layout"] == "delivered"
    day = body["days"][0]
    assert day["day"] == "2026-11-28" and day["active_users"] == 2
    assert "InlineChat_TotalEventCount" in day and "InlineChat_EventCount" not in day
    assert all(m.name in day for m in METRICS if m.name != "InlineChat_EventCount")
    users = {u["user_id"]: u for u in body["users"]}
    assert set(users) == {"alice", "bob", "=dave"}
    assert users["bob"]["Chat_AICodeLines"] == 14 and users["alice"]["Inline_AICodeLines"] == 6
    assert body["idle_seats"] == {"count": 1, "users": ["carol"]}
    csv_r = get(server, server.admin_token("ada", ACCOUNT),
                f"{USAGE}.csv?from=2026-11-28&to=2026-11-29")
    assert csv_r.status_code == 200 and csv_r.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv_r.headers["content-disposition"]
    assert [r["UserId"] for r in read_rows(csv_r.content)] == ["'=dave", "alice", "bob"]
    bad = get(server, server.admin_token("ada", ACCOUNT), f"{USAGE}?from=2026-13-01")
    assert bad.status_code == 400 and "not a day of the calendar" in bad.json()["error"][
        "message"]


@pytest.mark.parametrize("path", [USAGE, f"{USAGE}.csv"])
def test_usage_endpoints_are_isolated(server: Server, path: str) -> None:
    for token, status in [(None, 401), ("kat_unknown", 401),
                          (server.token("alice"), 403),
                          (server.admin_token("mallory", OTHER_ACCOUNT), 403)]:
        r = get(server, token, path)
        assert r.status_code == status, (token, r.text)
        assert "alice" not in r.text and "Inline" not in r.text
    other = get(server, server.admin_token("mallory", OTHER_ACCOUNT),
                f"/admin/v1/accounts/{OTHER_ACCOUNT}/usage?from=2026-11-28&to=2026-11-28")
    assert other.status_code == 200
    assert [u["user_id"] for u in other.json()["users"]] == ["mallory"]


def test_openapi_describes_the_usage_endpoints(server: Server) -> None:
    paths = httpx.get(server.url + "/openapi.json", timeout=30).json()["paths"]
    for path in ("usage", "usage.csv"):
        op = paths[f"/admin/v1/accounts/{{account_id}}/{path}"]["get"]
        assert {p["name"] for p in op["parameters"]} >= {"from", "to"}


def test_the_schedule_snapshots_settled_days(tmp_path: Path) -> None:
    cfg = Config(data_dir=tmp_path / "data")
    setup_accounts(cfg.data_dir)
    seed(cfg)
    midnight = NOW - 12 * 3600
    clock = [midnight + 60]  # 2026-11-30 00:01: D2 has just closed
    sched = Scheduler(cfg, lambda: clock[0])
    sched.run_due()
    assert usage.snapshot_paths(cfg, ACCOUNT, D1)["users"].exists()
    assert not usage.snapshot_paths(cfg, ACCOUNT, D2)["users"].exists()
    assert sched.next_wake() == midnight + usage.GRACE_SECONDS + 1  # wakes when D2 settles
    clock[0] = NOW
    sched.run_due()
    assert usage.snapshot_paths(cfg, ACCOUNT, D2)["users"].exists()
    assert not usage.snapshot_paths(cfg, ACCOUNT, TODAY)["users"].exists()
    # a day without activity gets no file
    assert not usage.snapshot_paths(cfg, OTHER_ACCOUNT, D2)["users"].exists()
    assert usage.snapshot_paths(cfg, OTHER_ACCOUNT, D1)["users"].exists()
    assert sched.next_wake() == midnight + 86_400


def test_a_snapshot_with_a_file_missing_is_written_again(config: Config) -> None:
    first = dashboard.overview(config, ACCOUNT, rng(), NOW)
    paths = usage.snapshot_paths(config, ACCOUNT, D1)
    paths["dimsums"].unlink()  # a power loss before the rename reached the disk, say
    assert dashboard.overview(config, ACCOUNT, rng(), NOW) == first
    assert usage.complete(paths)
