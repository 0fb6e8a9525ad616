"""A bulk request's events stored as one batch row (#11): every reader sees the very events,
seqs, counters, rebuild, archive and dedupe that one row per event gives."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import pyarrow.parquet as pq

from kiro_activity import archive, counters, events, landing, logrows
from kiro_activity.aggregate import counted_day, read_day, rebuild_day
from kiro_activity.landing import BatchRecord, LandingLog, LandingRecord, read_events
from kiro_activity.simulate import WEIGHTS, request_body

ACCOUNT = "111122223333"
DAY = date(2026, 11, 30)
NOON = datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()
COUNTER_TABLES = ("user_day", "dim_day", "dim_users", "interactions", "counters_meta")


def bodies(n: int, seed: int = 1, user: str = "alice") -> list[bytes]:
    rng = random.Random(seed)
    return [orjson.dumps(request_body(rng.choice(list(WEIGHTS)), rng, user_id=user,
                                      client_token=rng.random() < 0.9)) for _ in range(n)]


def singles(lines: list[bytes], user: str = "alice") -> list[LandingRecord]:
    out = []
    for line in lines:
        r = events.parse_request(line)
        out.append(LandingRecord(ACCOUNT, user, r.member, r.client_token, r.opt_out,
                                 r.client_timestamp, r.ide_category, "batch", line))
    return out


def batch(lines: list[bytes], user: str = "alice", counted: bool = False) -> BatchRecord:
    """The batch record of ``lines``; ``counted``: with its counts worked out (as the batch
    checker does), else the writer works them out from the lines."""
    b = BatchRecord(ACCOUNT, user, "batch", [], [], [], [], [], [])
    if counted:
        counter = counters.BatchCounter()
        for r in map(events.parse_request, lines):
            counter.add(r.member, r.event, r.ide_category)
        b.counts = counter.counts()
    for r in singles(lines, user):
        b.append(r)
    return b


def tables(db: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(db)
    try:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in COUNTER_TABLES}
    finally:
        conn.close()


def rows_in(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def store(db: Path, groups: list[list[landing.Record]]) -> None:
    log = LandingLog(db, clock=lambda: NOON)
    try:
        for group in groups:
            log.append_sync(group)
    finally:
        log.close()


def test_a_batch_row_reads_back_as_the_events_one_row_each_gives(tmp_path: Path) -> None:
    first, second = bodies(120, 1), bodies(80, 2)
    second += first[:5]  # retries of the first request: stored once
    extra = bodies(3, 3, "bob")
    one, many = tmp_path / "singles" / "landing.db", tmp_path / "batches" / "landing.db"
    counted = tmp_path / "counted" / "landing.db"
    store(one, [singles(first), singles(extra, "bob"), singles(second)])
    store(many, [[batch(first)], [batch(extra, "bob")], [batch(second)]])
    store(counted, [[batch(first, counted=True)], [batch(extra, "bob", counted=True)],
                    [batch(second, counted=True)]])  # the repeats: the writer counts again
    assert tables(counted) == tables(one)
    total = 203 + sum(b"clientToken" not in line for line in first[:5])  # retried, no token
    assert rows_in(many) == 3 < rows_in(one) == total
    assert read_events(many) == read_events(one)  # seqs, bodies, tokens, keys: all of them
    assert tables(many) == tables(one)  # the writer's counters of a batch, worked out per batch
    conn = landing.connect(many)
    assert logrows.count(conn) == total
    assert logrows.count(conn, "WHERE user_id = ?", ("bob",)) == 3
    conn.close()
    for db in (one, many):  # the day as every reader sees it
        assert read_day(db, ACCOUNT, DAY).read_all() == read_day(one, ACCOUNT, DAY).read_all()
        assert counted_day(db, ACCOUNT, DAY).rows == rebuild_day(one, ACCOUNT, DAY).rows
    sealed = {}
    for db in (one, many):
        done = archive.seal(db, db.parent / "archive", now=NOON + 86_400 * 3)
        assert done.events == total
        [path] = archive.day_files(db, db.parent / "archive", ACCOUNT, DAY)
        sealed[db] = (path.name, pq.read_table(path))
    assert sealed[one] == sealed[many]  # same segment name (seq range), same events
    rebuilt = rebuild_day(many, ACCOUNT, DAY, many.parent / "archive")
    assert rebuilt.rows == rebuild_day(one, ACCOUNT, DAY).rows


def test_a_lost_count_of_a_batch_row_is_recounted_on_open(tmp_path: Path) -> None:
    lines = bodies(50)
    expected, db = tmp_path / "ok" / "landing.db", tmp_path / "crash" / "landing.db"
    store(expected, [[batch(lines)]])
    log = LandingLog(db, clock=lambda: NOON)
    log._flush_counters_now = lambda: None  # type: ignore[method-assign]  # killed before
    log.append_sync([batch(lines)])
    log._conn.close()
    os.close(log._lock_fd)  # a process that dies lets go of its lock
    assert tables(db)["user_day"] == []
    LandingLog(db).close()  # recovery reads the batch row's events back from its lines
    assert tables(db) == tables(expected)


def test_a_batch_rows_keys_keep_deduplicating_after_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "landing.db"
    lines = [line for line in bodies(40) if b"clientToken" in line]
    store(db, [[batch(lines)]])
    log = LandingLog(db, clock=lambda: NOON + 60)
    try:  # the keys come back from the batch row's index
        assert log.append_sync([batch(lines[:10] + bodies(2, 9))]) == 2
        assert log.append_sync(singles(lines[10:12])) == 0
    finally:
        log.close()
    assert len(read_events(db)) == len(lines) + 2


def test_a_batch_with_one_new_event_is_a_plain_row_and_none_is_no_row(tmp_path: Path) -> None:
    db = tmp_path / "landing.db"
    lines = [line for line in bodies(10) if b"clientToken" in line]
    store(db, [[batch(lines[:1])], [batch(lines[:1])]])
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT seq, n, idx IS NULL FROM events").fetchall() == [(1, 1, 1)]
    conn.close()


def test_batch_rows_and_single_rows_in_one_group_get_consecutive_seqs(tmp_path: Path) -> None:
    db = tmp_path / "landing.db"
    a, b, c = bodies(3, 1), bodies(4, 2), bodies(2, 3)

    async def main(log: LandingLog) -> list[int]:  # through the writer process
        return await asyncio.gather(log.append(singles(a)), log.append([batch(b, "bob")]),
                                    log.append(singles(c, "carol")))

    log = LandingLog(db, clock=lambda: NOON)
    try:
        asyncio.run(main(log))
        asyncio.run(main(log))  # all repeats but the events without a clientToken
    finally:
        log.close()
    stored = read_events(db)
    assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
    assert sorted(e["body"] for e in stored[:9]) == sorted(a + b + c)
    conn = landing.connect(db)
    assert conn.execute("SELECT max(seq) FROM events").fetchone()[0] == len(stored)
    assert conn.execute("SELECT watermark FROM counters_meta").fetchone()[0] == len(stored)
    conn.close()


def test_a_landing_log_of_before_batch_rows_is_read_as_it_was(tmp_path: Path) -> None:
    db = tmp_path / "landing.db"
    conn = sqlite3.connect(db)  # the schema before #11: no n, no idx
    conn.executescript(landing.SCHEMA.split("    n            INTEGER")[0].rstrip(",\n")
                       + "\n);")
    conn.execute(landing.INSERT, (int(NOON * 1e6), ACCOUNT, "alice", "chatAddMessageEvent",
                                  None, None, None, None, None, "test", bodies(1)[0]))
    conn.commit()
    conn.close()
    store(db, [[batch(bodies(5, 4))]])
    assert [e["seq"] for e in read_events(db)] == [1, 2, 3, 4, 5, 6]
    assert counted_day(db, ACCOUNT, DAY).events == 6
