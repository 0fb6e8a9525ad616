"""The landing log: every acknowledged event, durably, exactly once.

Request handlers add their records to the pending group and wait. While one group is being
committed, the next one gathers; when the commit ends, everything gathered is prepared (receipt
time, dedupe) on the event loop and handed to the writer thread, which owns the SQLite (WAL,
``synchronous=FULL``) connection and does nothing but the insert and its commit: one fsync for
the whole group, then the waiters are released. So durability costs one fsync per group of
concurrent requests, not one per request, and a 200 is never sent for an event not on disk.

The writer thread does as little Python as possible: under load each return from SQLite must win
the GIL back from the busy event loop, which costs far more than the SQLite call itself.

Exactly once: a repeated clientToken of the same user within the retention is recognised by the
writer's in-memory :class:`~.dedupe.DedupeIndex` (kept off disk so that writes stay sequential)
and not stored again; events without a clientToken are each stored.

The receipt time of an event is the writer's clock at the commit of its group, so a day closes
cleanly: once the clock has passed midnight no event can get a receipt time in the day before.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import counters
from .counters import GroupCounts
from .dedupe import DAY_US, DedupeIndex, dedupe_key
from .errors import StoreUnavailableError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY,
    received_us  INTEGER NOT NULL,
    account_id   TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    member       TEXT NOT NULL,
    client_token TEXT,
    dedupe_key   INTEGER,
    opt_out      TEXT,
    client_ts    REAL,
    ide_category TEXT,
    protocol     TEXT NOT NULL,
    body         BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_time ON events(received_us);
"""
INSERT = (
    "INSERT INTO events (received_us, account_id, user_id, member, client_token, dedupe_key,"
    " opt_out, client_ts, ide_category, protocol, body) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)
COLUMNS = (
    "seq", "received_us", "account_id", "user_id", "member", "client_token", "dedupe_key",
    "opt_out", "client_ts", "ide_category", "protocol", "body",
)


@dataclass(frozen=True, slots=True)
class LandingRecord:
    """One accepted request, as it will be stored (the receipt time is added at commit)."""

    account_id: str
    user_id: str
    member: str
    client_token: str | None
    opt_out: str | None
    client_ts: float | None
    ide_category: str | None
    protocol: str
    body: bytes
    #: what the event adds to its user-day's counters (None: worked out from the body)
    amounts: tuple[tuple[int, int], ...] | None = None
    interaction: tuple[str | None, ...] | None = None


@dataclass(slots=True)
class _Prepared:
    """A group ready for the writer: rows to insert and what each waiter gets back."""

    rows: list[tuple[object, ...]]
    counts: list[int]
    keys: set[int]
    day: int
    totals: GroupCounts


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the landing database; the schema is created on first open."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    if not readonly:
        conn.execute("PRAGMA cache_size=-131072")
        conn.executescript(SCHEMA + counters.SCHEMA)
    return conn


class LandingLog:
    """The durable, deduplicating event log with group commit on one writer thread."""

    def __init__(
        self, path: Path, *, clock: Callable[[], float] = time.time, max_group: int = 4096,
        retention_days: int = 30, inline: bool = False,
    ) -> None:
        self.path = path
        self.clock = clock
        self.max_group = max_group
        self._conn = connect(path)
        self.seen = DedupeIndex(retention_days)
        now_us = int(clock() * 1_000_000)
        self.seen.load(self._conn.execute(
            "SELECT received_us, dedupe_key FROM events"
            " WHERE dedupe_key IS NOT NULL AND received_us >= ?",
            (self.seen.oldest_kept_us(now_us),),
        ))
        recovered = counters.recover(self._conn)
        if recovered:
            log.info("counters brought up to date with %d events past their watermark", recovered)
        self.counters = counters.Counters()
        self._flush_scheduled = False
        self._writer: ThreadPoolExecutor | _Inline = (
            _Inline() if inline else ThreadPoolExecutor(1, thread_name_prefix="landing-writer"))
        self._lock = threading.Lock()  # guards the dedupe state between loop and sync callers
        self._inflight: set[int] = set()
        self._pending: deque[tuple[Sequence[LandingRecord], asyncio.Future[int]]] = deque()
        self._committing = False
        self.commits = 0
        self.healthy = True

    def close(self) -> None:
        """Finish what was handed to the writer, write the counters, close the database."""
        self._writer.submit(self._flush_counters)
        self._writer.shutdown(wait=True)
        self._conn.close()

    async def append(self, records: Sequence[LandingRecord]) -> int:
        """Store records durably; returns how many were new (the rest were repeats)."""
        return await self.submit(records, asyncio.get_running_loop())

    def submit(self, records: Sequence[LandingRecord],
               loop: asyncio.AbstractEventLoop) -> asyncio.Future[int]:
        """Queue records for the next group commit (on the loop's thread); the future gets how
        many were new once they are durable, or the error that kept them from the disk."""
        fut: asyncio.Future[int] = loop.create_future()
        self._pending.append((records, fut))
        if not self._committing:
            self._committing = True
            loop.call_soon(self._flush, loop)
        return fut

    def append_sync(self, records: Sequence[LandingRecord]) -> int:
        """Blocking form of :meth:`append`, for callers without an event loop."""
        prepared = self._prepare([records])
        try:
            self._writer.submit(self._commit, prepared).result()
        except Exception as exc:
            raise self._failed(prepared, exc) from exc
        self._settle(prepared)
        self._writer.submit(self._flush_counters).result()
        return prepared.counts[0]

    def run_in_writer(self, fn: Callable[[sqlite3.Connection], object]) -> object:
        """Run ``fn(conn)`` on the writer thread between groups (maintenance, tests)."""
        return self._writer.submit(fn, self._conn).result()

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        group: list[tuple[Sequence[LandingRecord], asyncio.Future[int]]] = []
        size = 0
        while self._pending and (not group or size + len(self._pending[0][0]) <= self.max_group):
            item = self._pending.popleft()
            group.append(item)
            size += len(item[0])
        prepared = self._prepare([records for records, _ in group])
        done = self._writer.submit(self._commit, prepared)
        done.add_done_callback(
            lambda f: loop.call_soon_threadsafe(self._finish, loop, group, prepared, f)
        )

    def _finish(self, loop: asyncio.AbstractEventLoop,
                group: list[tuple[Sequence[LandingRecord], asyncio.Future[int]]],
                prepared: _Prepared, done: Future[None]) -> None:
        error = done.exception()
        if error is None:
            self._settle(prepared)
        else:
            error = self._failed(prepared, error)
        for (_, fut), count in zip(group, prepared.counts, strict=True):
            if fut.done():  # the client went away; the event is stored anyway
                continue
            if error is None:
                fut.set_result(count)
            else:
                fut.set_exception(error)
        if self._pending:
            self._flush(loop)
        else:
            self._committing = False
        if error is None and not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_later(0.05, self._schedule_counters)

    def _schedule_counters(self) -> None:
        self._flush_scheduled = False
        with contextlib.suppress(RuntimeError):  # closed meanwhile: close() wrote them
            self._writer.submit(self._flush_counters)

    def _commit(self, prepared: _Prepared) -> None:
        """On the writer: insert the group, then note its amounts for the counters."""
        last_seq = _insert(self._conn, prepared.rows)
        self.counters.add(prepared.totals, last_seq)

    def _flush_counters(self) -> None:
        """On the writer: write out the counters (kept in memory and retried if it fails)."""
        try:
            self.counters.flush(self._conn)
        except Exception as exc:  # the watermark did not move: nothing is lost
            log.warning("counters not written yet (%s); will retry", exc)

    def _prepare(self, group: list[Sequence[LandingRecord]]) -> _Prepared:
        """Receipt time and dedupe for a group; its new keys are held as in flight."""
        received_us = int(self.clock() * 1_000_000)
        rows: list[tuple[object, ...]] = []
        counts: list[int] = []
        keys: set[int] = set()
        day = received_us // DAY_US
        totals = GroupCounts()
        with self._lock:
            self.seen.expire(received_us)
            for records in group:
                before = len(rows)
                for r in records:
                    key = None
                    if r.client_token is not None:
                        key = dedupe_key(r.account_id, r.user_id, r.client_token)
                        if key in keys or key in self._inflight or key in self.seen:
                            continue  # a repeat: answered as stored, not stored again
                        keys.add(key)
                    rows.append((received_us, r.account_id, r.user_id, r.member,
                                 r.client_token, key, r.opt_out, r.client_ts, r.ide_category,
                                 r.protocol, r.body))
                    amounts, interaction = r.amounts, r.interaction
                    if amounts is None:
                        amounts, interaction = counters.amounts_of(r.member, r.body,
                                                                   r.ide_category)
                    totals.add((r.account_id, day, r.user_id), amounts, interaction)
                counts.append(len(rows) - before)
            self._inflight |= keys
        return _Prepared(rows, counts, keys, day, totals)

    def _settle(self, prepared: _Prepared) -> None:
        """The group is on disk: its keys count as seen from now on."""
        with self._lock:
            self._inflight -= prepared.keys
            self.seen.add(prepared.day, prepared.keys)
        self.commits += 1
        self.healthy = True

    def _failed(self, prepared: _Prepared, exc: BaseException) -> StoreUnavailableError:
        """The group is not stored: forget its keys so that a retry is stored."""
        with self._lock:
            self._inflight -= prepared.keys
        self.healthy = False
        log.error("landing log commit failed (%s); answering 503 until it works", exc)
        return StoreUnavailableError(
            f"the event could not be stored ({exc}); nothing was stored, retry later"
        )


class _Inline:
    """The writer of a process that does nothing but commit (the store process of
    ``serve --workers``): the work runs at once on the calling thread, the event loop's, so a
    group needs no hand-over to another thread and back; what arrives meanwhile waits in the
    sockets and forms the next group."""

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        done: Future[Any] = Future()
        try:
            done.set_result(fn(*args))
        except BaseException as exc:
            done.set_exception(exc)
        return done

    def shutdown(self, wait: bool = True) -> None:
        pass


CHUNK = 256


@functools.cache
def _insert_sql(n: int) -> str:
    return INSERT + ",(?,?,?,?,?,?,?,?,?,?,?)" * (n - 1)


def _insert(conn: sqlite3.Connection, rows: list[tuple[object, ...]]) -> int:
    """Insert rows atomically with as few calls into SQLite as possible (runs on the writer).

    A group of up to CHUNK rows is one multi-row INSERT committed on its own (autocommit: one
    statement, one transaction, one fsync); larger groups are several such statements inside
    BEGIN ... COMMIT. On any error the transaction is rolled back and the error raised. Returns
    the seq of the last row (the rows of one group get consecutive seqs).
    """
    if not rows:
        return 0
    if len(rows) <= CHUNK:
        cur = conn.execute(_insert_sql(len(rows)), [v for row in rows for v in row])
        return int(cur.lastrowid or 0)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start:start + CHUNK]
            cur = conn.execute(_insert_sql(len(chunk)), [v for row in chunk for v in row])
        conn.execute("COMMIT")
        return int(cur.lastrowid or 0)
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # the transaction may be gone already
            conn.execute("ROLLBACK")
        raise


def read_events(path: Path, where: str = "", args: Sequence[object] = ()) -> list[dict[str, Any]]:
    """All stored events (as dicts) matching an optional SQL condition; for tools and tests."""
    conn = connect(path, readonly=True)
    try:
        sql = f"SELECT {', '.join(COLUMNS)} FROM events {where} ORDER BY seq"
        return [dict(zip(COLUMNS, row, strict=True)) for row in conn.execute(sql, args)]
    finally:
        conn.close()
