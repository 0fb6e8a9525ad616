"""The landing log: every acknowledged event, durably, exactly once.

One writer thread owns the SQLite (WAL, ``synchronous=FULL``) connection. Request handlers queue
their records and wait; the writer takes everything queued, inserts it in **one** transaction,
commits (one fsync for the whole group) and only then releases the waiters. So durability costs
one fsync per group of concurrent requests, not one per request, and a 200 is never sent for an
event that is not on disk.

Exactly once: a repeated clientToken of the same user within the retention is recognised by the
writer's in-memory :class:`~.dedupe.DedupeIndex` (kept off disk so that writes stay sequential)
and not stored again; events without a clientToken are each stored.

The receipt time of an event is the writer's clock at the commit of its group, so a day closes
cleanly: once the clock has passed midnight no event can get a receipt time in the day before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


Done = Callable[[int | BaseException], None] | asyncio.Future[int]
_STOP = object()


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the landing database; the schema is created on first open."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    if not readonly:
        conn.execute("PRAGMA cache_size=-131072")
        conn.executescript(SCHEMA)
    return conn


class LandingLog:
    """The durable, deduplicating event log with a group-committing writer thread."""

    def __init__(
        self, path: Path, *, clock: Callable[[], float] = time.time, max_group: int = 4096,
        retention_days: int = 30,
    ) -> None:
        self.path = path
        self.clock = clock
        self.max_group = max_group
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._conn = connect(path)
        self.seen = DedupeIndex(retention_days)
        now_us = int(clock() * 1_000_000)
        self.seen.load(self._conn.execute(
            "SELECT received_us, dedupe_key FROM events"
            " WHERE dedupe_key IS NOT NULL AND received_us >= ?",
            (self.seen.oldest_kept_us(now_us),),
        ))
        self._thread = threading.Thread(target=self._run, name="landing-writer", daemon=True)
        self.commits = 0
        self.healthy = True

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Finish what is queued, then stop the writer and close the database."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._conn.close()

    def submit(self, records: Sequence[LandingRecord], done: Done) -> None:
        """Queue records; ``done`` (a callback, or a future of an event loop) gets the number
        newly stored, or the error, once the group is committed."""
        self._queue.put((records, done))

    async def append(self, records: Sequence[LandingRecord]) -> int:
        """Store records durably; returns how many were new (the rest were repeats)."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put((records, fut))
        return await fut

    def append_sync(self, records: Sequence[LandingRecord]) -> int:
        """Blocking form of :meth:`append`, for callers without an event loop."""
        box: queue.SimpleQueue[int | BaseException] = queue.SimpleQueue()
        self.submit(records, box.put)
        result = box.get()
        if isinstance(result, BaseException):
            raise result
        return result

    def run_in_writer(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """Run ``fn(conn)`` on the writer thread between groups (maintenance, tests)."""
        box: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._queue.put(("call", fn, box))
        box.get()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            group: list[tuple[Sequence[LandingRecord], Done]] = []
            while True:
                if item is _STOP:
                    self._commit_group(group)
                    return
                if item[0] == "call":
                    self._commit_group(group)
                    group = []
                    _call(item[1], self._conn, item[2])
                else:
                    group.append(item)
                if sum(len(r) for r, _ in group) >= self.max_group:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._commit_group(group)

    def _commit_group(self, group: list[tuple[Sequence[LandingRecord], Done]]) -> None:
        if not group:
            return
        results: list[int | BaseException]
        try:
            results = self._write(group)
            self.healthy = True
        except Exception as exc:  # disk full, I/O error, a bug: refuse, never crash the writer
            self.healthy = False
            log.error("landing log commit failed (%s); answering 503 until it works", exc)
            _rollback(self._conn)
            error = StoreUnavailableError(
                f"the event could not be stored ({exc}); nothing was stored, retry later"
            )
            results = [error] * len(group)
        wakeups: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[int], Any]]] = {}
        for (_, done), result in zip(group, results, strict=True):
            if isinstance(done, asyncio.Future):  # one wake-up per event loop, not per request
                wakeups.setdefault(done.get_loop(), []).append((done, result))
            else:
                done(result)
        for loop, pairs in wakeups.items():
            try:
                loop.call_soon_threadsafe(_resolve_all, pairs)
            except RuntimeError:
                log.warning("event loop closed before %d results could be delivered", len(pairs))

    def _write(
        self, group: list[tuple[Sequence[LandingRecord], Done]]
    ) -> list[int | BaseException]:
        received_us = int(self.clock() * 1_000_000)
        self.seen.expire(received_us)
        new_keys: set[int] = set()
        rows: list[tuple[object, ...]] = []
        counts: list[int | BaseException] = []
        for records, _ in group:
            before = len(rows)
            for r in records:
                key = None
                if r.client_token is not None:
                    key = dedupe_key(r.account_id, r.user_id, r.client_token)
                    if key in new_keys or key in self.seen:
                        continue  # a repeat: answered as stored, not stored again
                    new_keys.add(key)
                rows.append((received_us, r.account_id, r.user_id, r.member, r.client_token,
                             key, r.opt_out, r.client_ts, r.ide_category, r.protocol, r.body))
            counts.append(len(rows) - before)
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT, rows)
        conn.execute("COMMIT")
        self.seen.add(received_us // DAY_US, new_keys)  # only once they are on disk
        self.commits += 1
        return counts


def _resolve_all(pairs: list[tuple[asyncio.Future[int], int | BaseException]]) -> None:
    for fut, result in pairs:
        if fut.done():  # the request was cancelled (client went away); the event is stored anyway
            continue
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)


def _rollback(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):  # no transaction was open (BEGIN itself failed)
        conn.execute("ROLLBACK")


def _call(fn: Callable[[sqlite3.Connection], object], conn: sqlite3.Connection,
          box: queue.SimpleQueue[object]) -> None:
    try:
        box.put(fn(conn))
    except Exception as exc:  # handed back to the caller, never kills the writer
        box.put(exc)


def read_events(path: Path, where: str = "", args: Sequence[object] = ()) -> list[dict[str, Any]]:
    """All stored events (as dicts) matching an optional SQL condition; for tools and tests."""
    conn = connect(path, readonly=True)
    try:
        sql = f"SELECT {', '.join(COLUMNS)} FROM events {where} ORDER BY seq"
        return [dict(zip(COLUMNS, row, strict=True)) for row in conn.execute(sql, args)]
    finally:
        conn.close()
