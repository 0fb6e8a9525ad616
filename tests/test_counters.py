"""The fast path equals the full rebuild: per-user-day counters kept at commit time (with their
watermark, crash recovery and lagging readers) give the same numbers as DuckDB over every raw
event."""

from __future__ import annotations

import os
import random
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ACCOUNT, make_server
from kiro_activity import archive as archive_mod
from kiro_activity import events, usage
from kiro_activity.aggregate import counted_day, rebuild_day
from kiro_activity.breakdown import NOT_RECORDED, dim_of
from kiro_activity.counters import GroupCounts, N, write
from kiro_activity.landing import BatchRecord, LandingLog, LandingRecord, Record, connect
from kiro_activity.metrics import AMOUNT_MAX, INDEX, LAYOUTS, METRICS, SUM_MAX, deltas
from kiro_activity.report import build_drop
from kiro_activity.simulate import WEIGHTS, request_body

DAYS = [date(2026, 11, 29), date(2026, 11, 30)]
ACCOUNTS = ["111122223333", "444455556666"]


def record(account: str, user: str, body: dict[str, object], precomputed: bool) -> LandingRecord:
    raw = orjson.dumps(body)
    req = events.parse_request(raw)
    amounts, interaction = (deltas(req.member, req.event, req.ide_category) if precomputed
                            else (None, None))
    return LandingRecord(account, user, req.member, req.client_token, req.opt_out,
                         req.client_timestamp, req.ide_category, "test", raw, amounts,
                         interaction, dim_of(req.event, req.ide_category))


SEALED_AT = datetime(2026, 12, 10, tzinfo=UTC).timestamp()  # the days are closed


def assert_equal(db: Path, seal: bool = False, recorded: bool = True) -> None:
    generated = datetime(2026, 12, 1, tzinfo=UTC)
    archive = db.parent / "archive"
    if seal:
        archive_mod.seal(db, archive, now=SEALED_AT)
    for account in ACCOUNTS:
        for day in DAYS:
            fast, full = counted_day(db, account, day), rebuild_day(db, account, day)
            assert fast.rows == full.rows
            assert fast.events == full.events
            assert_breakdown_sums(db, account, day, full.rows, full.events, recorded)
            if seal:  # the archived day (typed Parquet segments) rebuilds to the same numbers
                files = archive_mod.day_files(db, archive, account, day)
                assert bool(files) == (full.events > 0)
                sealed = rebuild_day(db, account, day, archive)
                assert (sealed.rows, sealed.events) == (full.rows, full.events)
                cells = rebuild_day(db, account, day, archive, "documented")
                assert cells.cells == [(u, ",".join(map(str, v))) for u, v in full.rows]
            for layout in LAYOUTS:  # cells rendered by SQLite or DuckDB: the very same bytes
                b = build_drop(full, region="us-east-1", prefix="p", layout=layout,
                               generated_at=generated)
                for agg in (counted_day(db, account, day, layout),
                            rebuild_day(db, account, day, layout=layout)):
                    a = build_drop(agg, region="us-east-1", prefix="p", layout=layout,
                                   generated_at=generated)
                    assert [o.data for o in a.objects] == [o.data for o in b.objects]


def assert_breakdown_sums(db: Path, account: str, day: date,
                          rows: list[tuple[str, list[int]]], n_events: int,
                          recorded: bool = True) -> None:
    """The dashboard's day: per user the report's rows, and a breakdown per IDE and language
    that sums to them, with every event's dimensions (none is 'not recorded', unless counted
    by an earlier version: ``recorded`` False)."""
    conn = connect(db, readonly=True)
    try:
        d = usage.read_day(conn, account, day)
    finally:
        conn.close()
    assert sorted((u, c[:len(METRICS)]) for u, c in d.users.items()) == rows
    assert sum(c[len(METRICS)] for c in d.users.values()) == n_events
    if recorded:
        assert NOT_RECORDED not in {ide for ide, _ in d.dims} | {lang for _, lang in d.dims}
    totals = [sum(column) for column in zip(*d.users.values(), strict=True)] or [0] * N
    dims = [sum(column) for column in zip(*d.dims.values(), strict=True)] or [0] * N
    assert dims == totals
    assert {user for _, _, user in d.present} == set(d.users)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), crash_at=st.integers(0, 4), n_batches=st.integers(1, 5),
       bulk=st.booleans())
def test_counters_equal_the_rebuild(tmp_path_factory: pytest.TempPathFactory, seed: int,
                                    crash_at: int, n_batches: int, bulk: bool) -> None:
    """Counters, rebuild, breakdown and the sealed archive agree, whatever crashes; with
    ``bulk`` most events arrive as batch rows (one per user and group, as bulk requests)."""
    rng = random.Random(seed)
    db = tmp_path_factory.mktemp("counters") / "landing.db"
    sent: list[LandingRecord] = []
    for batch in range(n_batches):
        day = rng.choice(DAYS)
        now = datetime(day.year, day.month, day.day, rng.randint(0, 23), tzinfo=UTC).timestamp()
        log = LandingLog(db, clock=lambda now=now: now)
        if batch == crash_at:  # committed, but the counters never written: a crash
            log._flush_counters_now = lambda: None  # type: ignore[method-assign]
        records = []
        for _ in range(rng.randint(1, 30)):
            if sent and rng.random() < 0.15:
                records.append(rng.choice(sent))  # a retry of an earlier send
                continue
            member = rng.choice(list(WEIGHTS))
            user = rng.choice(["alice", "bob", "=carol", "dave"])
            body = request_body(member, rng, user_id=user, client_token=rng.random() < 0.9)
            records.append(record(rng.choice(ACCOUNTS), user, body, rng.random() < 0.5))
        new = log.append_sync(as_batches(records, rng) if bulk else records)
        sent += records
        if batch == crash_at:
            conn = connect(db, readonly=True)
            lag = conn.execute("SELECT (SELECT max(seq) FROM events) > watermark"
                               " FROM counters_meta").fetchone()[0]
            conn.close()
            assert lag or not new  # this group's counters were never written
            assert_equal(db)  # a reader while the counters lag behind
            log._conn.close()
            os.close(log._lock_fd)  # a process that dies lets go of its lock
        else:
            log.close()
    LandingLog(db).close()  # reopening recovers whatever a crash left past the watermark
    conn = connect(db, readonly=True)
    watermark = conn.execute("SELECT watermark FROM counters_meta").fetchone()[0]
    last = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    conn.close()
    assert watermark == last
    assert_equal(db, seal=True)


def as_batches(records: list[LandingRecord], rng: random.Random) -> list[Record]:
    """Most of ``records`` as batch records, one per (account, user), as bulk requests store
    them; the rest as they are."""
    out: list[Record] = []
    batches: dict[tuple[str, str], BatchRecord] = {}
    for r in records:
        if rng.random() < 0.2:
            out.append(r)
            continue
        b = batches.get((r.account_id, r.user_id))
        if b is None:
            b = batches[r.account_id, r.user_id] = BatchRecord(
                r.account_id, r.user_id, r.protocol, [], [], [], [], [], [])
            out.append(b)
        b.append(r)
    return out


# --- amounts bounded, sums saturated (#13) ------------------------------------------------------
BIG = 2**63 - 1
FIX_LINES = INDEX["CodeFix_GeneratedLines"]


def fix_body(lines: int, token: str) -> dict[str, object]:
    return {"telemetryEvent": {"codeFixGenerationEvent": {"jobId": "j", "linesOfCodeGenerated":
                                                          lines}}, "clientToken": token}


def test_a_huge_amount_is_refused_naming_the_bound(tmp_path: Path) -> None:
    """Two batch lines of 2**63-1 used to overflow the writer's sum: the counters stopped for
    every user and the service could not start again."""
    server = make_server(tmp_path)
    try:
        lines = [fix_body(BIG, "a"), fix_body(BIG, "b"), fix_body(AMOUNT_MAX, "c"),
                 fix_body(AMOUNT_MAX, "d")]
        with server.client("huge") as client:
            r = client.post("/v1/batch/SendTelemetryEvent", content=b"\n".join(
                orjson.dumps(x) for x in lines), headers={"Content-Type": "application/x-ndjson"})
            single = client.post("/SendTelemetryEvent", json=fix_body(BIG, "e"))
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["status"] for x in results] == [400, 400, 200, 200]
        assert "linesOfCodeGenerated: must be an integer from 0 to 2147483647" in (
            results[0]["message"])
        assert single.status_code == 400 and "2147483647" in single.json()["message"]
        server.stop()
        server.start()  # the counters were written: the service starts again
        with server.client("other") as client:
            assert client.post("/SendTelemetryEvent", json=fix_body(5, "f")).status_code == 200
    finally:
        server.stop()
    today = datetime.now(UTC).date()
    fast = counted_day(server.config.landing_db, ACCOUNT, today)
    full = rebuild_day(server.config.landing_db, ACCOUNT, today)
    assert (fast.rows, fast.events) == (full.rows, full.events)
    assert dict(fast.rows)["huge"][FIX_LINES] == 2 * AMOUNT_MAX


def test_sums_saturate_instead_of_overflowing(tmp_path: Path) -> None:
    conn = connect(tmp_path / "landing.db")
    counts = GroupCounts()
    for _ in range(3):
        counts.add(("a", 1, "u"), [(FIX_LINES, BIG)], None)
    for _ in range(2):  # once inserted, once added to the stored cell by the upsert
        write(conn, counts, 1)
    cell = conn.execute(f"SELECT c{FIX_LINES}, typeof(c{FIX_LINES}) FROM user_day").fetchone()
    assert cell == (SUM_MAX, "integer")
    conn.close()


def legacy_record(user: str, lines: int, token: str) -> LandingRecord:
    """An event as the validator before #13 let it in: amounts up to 2**63-1."""
    raw = orjson.dumps(fix_body(lines, token))
    return LandingRecord(ACCOUNTS[0], user, "codeFixGenerationEvent", token, None, None, None,
                         "test", raw)


def test_events_stored_with_huge_amounts_count_as_the_rebuild_counts_them(
        tmp_path: Path) -> None:
    """A database written before #13: huge amounts in the raw events, REAL (overflowed) and
    unclamped cells, some events past the watermark. Starting must not crash, and the counters
    must agree with the rebuild (both clamp each amount to AMOUNT_MAX)."""
    db = tmp_path / "landing.db"
    noon = datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()
    log = LandingLog(db, clock=lambda: noon)
    log.append_sync([legacy_record("alice", 5, "a1"), legacy_record("bob", 7, "b1")])
    log.close()
    conn = connect(db)
    conn.executemany("INSERT INTO events (received_us, account_id, user_id, member, client_token,"
                     " protocol, body) VALUES (?, ?, ?, 'codeFixGenerationEvent', ?, 'test', ?)",
                     [(int(noon * 1e6), ACCOUNTS[0], "alice", t, orjson.dumps(fix_body(BIG, t)))
                      for t in ("a2", "a3")])
    watermark = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
    conn.execute(f"UPDATE user_day SET c{FIX_LINES} = ?, c{N - 1} = 3 WHERE user_id = 'alice'",
                 (2.0 * BIG,))  # what the old upsert left: an overflowed, REAL cell
    conn.execute("UPDATE counters_meta SET watermark = ?", (watermark - 1,))
    conn.execute("DELETE FROM counters_bounded")
    conn.close()
    LandingLog(db).close()  # recovery: the legacy cells recounted, the tail counted
    for day in DAYS:
        fast, full = counted_day(db, ACCOUNTS[0], day), rebuild_day(db, ACCOUNTS[0], day)
        assert (fast.rows, fast.events) == (full.rows, full.events)
    assert sorted(dict(fast.rows)) == ["alice", "bob"]
    assert dict(fast.rows)["alice"][FIX_LINES] == 5 + 2 * AMOUNT_MAX
    assert dict(fast.rows)["bob"][FIX_LINES] == 7
    assert_equal(db, seal=True, recorded=False)  # recounted: shown as not recorded
    conn = connect(db)
    assert conn.execute(f"SELECT typeof(c{FIX_LINES}) FROM user_day").fetchall() == [
        ("integer",), ("integer",)]
    conn.close()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=12), st.sampled_from(
    ["python", " Python ", "JAVA", "typescript", "", "  ", "c#", "Klingon"])), max_size=30))
def test_the_language_of_an_event_is_remembered_not_changed(names: list[str]) -> None:
    """breakdown.language_of remembers each languageName it has seen: the same answer as
    folding and looking it up every time, also once the memory is full and starts again."""
    from kiro_activity import breakdown

    def folded(name: str) -> str:
        if not name:
            return breakdown.NONE
        name = name.strip().lower()
        return name if name in breakdown.LANGUAGES else breakdown.OTHER

    for name in [*names, *names, *(f"lang{i}" for i in range(5000))][:5100]:
        event = {"programmingLanguage": {"languageName": name}}
        assert breakdown.language_of(event) == folded(name)
    assert len(breakdown._SEEN) <= 4096
