"""The landing log: every acknowledged event, durably, exactly once.

Request handlers add their records to the pending group and wait. While one group is being made
durable, the next one gathers; when that ends, everything gathered is prepared (receipt time,
dedupe), inserted in one SQLite transaction on the event loop's thread, and then made durable by
one ``fdatasync`` of the write-ahead log, done by a small helper process (:class:`WalSync`);
when the helper answers, the waiters are released. So durability costs one sync per group of
concurrent requests, not one per request, and a 200 is never sent for an event not on disk.

Why a helper process and ``synchronous=NORMAL``: SQLite's own ``synchronous=FULL`` syncs the WAL
inside the commit, so the commit must run on a thread of its own to keep the event loop going,
and under load each return from SQLite must then win the GIL back from the busy loop, which cost
more than the insert itself (measured: handing each group to a writer thread and back, with the
commit made a no-op, already halved the rate). With ``synchronous=NORMAL`` SQLite writes the
WAL at commit without syncing it, and syncs the WAL before each checkpoint and the database
after it, so a checkpoint never loses what was synced; the helper's ``fdatasync`` of the WAL
after the commit then makes the transaction exactly as durable as ``FULL`` would. The loop only
writes eight bytes to a pipe and is woken when the answer comes; no thread needs the GIL.
Large groups (bulk import) are inserted on a thread, where SQLite releases the GIL, so the loop
parses the next batch meanwhile.

Rows are visible to readers from the insert on, a few hundred microseconds before they are
synced; readers that must see only durable rows (the daily run) wait on :meth:`barrier`. If the
sync fails (an I/O error), the waiters get 503 but the rows stay stored and their clientTokens
count as seen, so a retry is not stored twice.

Exactly once: a repeated clientToken of the same user within the retention is recognised by the
in-memory :class:`~.dedupe.DedupeIndex` (kept off disk so that writes stay sequential) and not
stored again; events without a clientToken are each stored.

The receipt time of an event is the clock when its group is prepared, so a day closes cleanly:
once the clock has passed midnight no event can get a receipt time in the day before.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    """Open the landing database; the schema is created on first open.

    Every connection syncs as ``FULL`` (each commit is durable on its own), except the landing
    log's writer, which syncs the WAL itself after each group (:class:`LandingLog`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    if not readonly:
        conn.execute("PRAGMA cache_size=-131072")
        conn.executescript(SCHEMA + counters.SCHEMA)
    return conn


#: the helper: read sync requests (8-byte sequence numbers), fdatasync the WAL once for all of
#: those read, answer the last one with the errno (0: durable). Exits when the pipe closes.
_SYNC_HELPER = """
import os, sys
wal, requests, answers = os.open(sys.argv[1], os.O_RDWR), int(sys.argv[2]), int(sys.argv[3])
while True:
    asked = os.read(requests, 65536)
    if not asked:
        break
    try:
        os.fdatasync(wal)
        error = 0
    except OSError as exc:
        error = exc.errno or 5
    os.write(answers, asked[-8:] + error.to_bytes(8, "little"))
"""
BIG_GROUP = 256  # rows from which a group is inserted on a thread (bulk import)
COUNTERS_EVERY = 0.05  # seconds between writes of the per-user-day counters


class WalSync:
    """``fdatasync`` of the WAL file in a helper process, asked for and answered through pipes
    watched by the event loop."""

    def __init__(self, wal: Path, loop: asyncio.AbstractEventLoop,
                 on_synced: Callable[[int, int], None]) -> None:
        self.wal, self.loop, self.on_synced = wal, loop, on_synced
        self.asked = 0
        self._start()

    def _start(self) -> None:
        requests_r, self._requests = os.pipe()
        self._answers, answers_w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _SYNC_HELPER, str(self.wal), str(requests_r),
             str(answers_w)], pass_fds=(requests_r, answers_w))
        os.close(requests_r)
        os.close(answers_w)
        os.set_blocking(self._answers, False)
        self.loop.add_reader(self._answers, self._read)
        self._answered = False

    def ask(self) -> int:
        """Ask for a sync of everything written so far; returns the number of the request."""
        self.asked += 1
        with contextlib.suppress(OSError):  # the helper is gone: _read restarts it, asks again
            os.write(self._requests, self.asked.to_bytes(8, "little"))
        return self.asked

    def _read(self) -> None:
        try:
            data = os.read(self._answers, 65536)
        except BlockingIOError:
            return
        if not data:  # the helper died: start another, which syncs everything written so far
            never_worked = not self._answered
            log.error("the WAL sync helper exited (code %s); starting another", self.proc.wait())
            self.close()
            self._start()
            if never_worked:  # it cannot even start (the WAL gone?): 503, not a spin
                self.on_synced(self.asked, errno.EIO)
            else:
                with contextlib.suppress(OSError):
                    os.write(self._requests, self.asked.to_bytes(8, "little"))
            return
        self._answered = True
        for at in range(0, len(data) - len(data) % 16, 16):
            self.on_synced(int.from_bytes(data[at:at + 8], "little"),
                           int.from_bytes(data[at + 8:at + 16], "little"))

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop may be closed already
            self.loop.remove_reader(self._answers)
        for fd in (self._requests, self._answers):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


@dataclass(slots=True)
class _Group:
    """A group being inserted, then synced."""

    waiters: list[tuple[Sequence[LandingRecord], asyncio.Future[int]]]
    prepared: _Prepared
    done: asyncio.Future[None]
    last_seq: int = 0
    ticket: int = 0


class LandingLog:
    """The durable, deduplicating event log with group commit."""

    def __init__(
        self, path: Path, *, clock: Callable[[], float] = time.time, max_group: int = 4096,
        retention_days: int = 30,
    ) -> None:
        self.path = path
        self.clock = clock
        self.max_group = max_group
        self._conn = connect(path)
        self._conn.execute("PRAGMA synchronous=NORMAL")  # the WAL is synced after each group
        self.wal_path = Path(f"{path}-wal")  # what the helper syncs
        self._wal_fd = os.open(self.wal_path, os.O_RDWR | os.O_CREAT, 0o644)
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
        self._counters_at = time.monotonic()  # when they were last written out
        self._counters_timer = False
        self._bulk = ThreadPoolExecutor(1, thread_name_prefix="landing-bulk")
        self._lock = threading.Lock()  # one user of the connection at a time
        self._inflight: set[int] = set()
        self._pending: deque[tuple[Sequence[LandingRecord], asyncio.Future[int]]] = deque()
        self._group: _Group | None = None  # being inserted or synced
        self._busy = False  # a group is in flight or about to be taken
        self._sync: WalSync | None = None
        self.commits = 0
        self.healthy = True

    def close(self) -> None:
        """Write the counters and close the database (the groups in flight are synced)."""
        self._bulk.shutdown(wait=True)
        if self._sync is not None:
            self._sync.close()
        with self._lock:
            os.fdatasync(self._wal_fd)
            self._flush_counters_now()
            self._conn.close()
        os.close(self._wal_fd)

    async def append(self, records: Sequence[LandingRecord]) -> int:
        """Store records durably; returns how many were new (the rest were repeats)."""
        return await self.submit(records, asyncio.get_running_loop())

    def submit(self, records: Sequence[LandingRecord],
               loop: asyncio.AbstractEventLoop) -> asyncio.Future[int]:
        """Queue records for the next group commit (on the loop's thread); the future gets how
        many were new once they are durable, or the error that kept them from the disk."""
        fut: asyncio.Future[int] = loop.create_future()
        self._pending.append((records, fut))
        if not self._busy:
            self._busy = True
            loop.call_soon(self._flush, loop)
        return fut

    async def barrier(self) -> None:
        """Wait until the group in flight, if any, is durable (on the loop's thread): every
        event with a receipt time before now is then on disk; later ones get later times."""
        group = self._group
        if group is not None:
            await asyncio.shield(group.done)

    def append_sync(self, records: Sequence[LandingRecord]) -> int:
        """Blocking form of :meth:`append`, for callers without a running event loop."""
        prepared = self._prepare([records])
        try:
            with self._lock:
                last_seq = _insert(self._conn, prepared.rows)
                os.fdatasync(self._wal_fd)
        except Exception as exc:
            raise self._failed(prepared, exc) from exc
        self._settle(prepared, last_seq)
        with self._lock:
            self._flush_counters_now()
        return prepared.counts[0]

    def run_in_writer(self, fn: Callable[[sqlite3.Connection], object]) -> object:
        """Run ``fn(conn)`` on the writer's connection between inserts (maintenance, tests)."""
        with self._lock:
            return fn(self._conn)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take the pending requests as one group, insert it and ask for its sync."""
        waiters: list[tuple[Sequence[LandingRecord], asyncio.Future[int]]] = []
        size = 0
        while self._pending and (not waiters
                                 or size + len(self._pending[0][0]) <= self.max_group):
            item = self._pending.popleft()
            waiters.append(item)
            size += len(item[0])
        try:
            prepared = self._prepare([records for records, _ in waiters])
        except Exception as exc:  # a bug, not the disk: answer 500 and go on
            log.exception("could not prepare a group")
            for _, fut in waiters:
                if not fut.done():
                    fut.set_exception(exc)
            self._next(loop)
            return
        group = _Group(waiters, prepared, loop.create_future())
        self._group = group
        if len(prepared.rows) >= BIG_GROUP:  # bulk: SQLite releases the GIL on the thread
            done = loop.run_in_executor(self._bulk, self._insert, prepared)
            done.add_done_callback(lambda f: self._inserted(loop, group, f))
            return
        inserted: asyncio.Future[int] = loop.create_future()
        try:
            inserted.set_result(self._insert(prepared))
        except Exception as exc:
            inserted.set_exception(exc)
        self._inserted(loop, group, inserted)

    def _insert(self, prepared: _Prepared) -> int:
        with self._lock:
            return _insert(self._conn, prepared.rows)

    def _inserted(self, loop: asyncio.AbstractEventLoop, group: _Group,
                  inserted: asyncio.Future[int]) -> None:
        error = None if inserted.cancelled() else inserted.exception()
        if inserted.cancelled() or error is not None:
            self._finish(loop, group, self._failed(group.prepared, error or Exception("closed")))
            return
        group.last_seq = inserted.result()
        if not group.prepared.rows:  # nothing new: nothing to sync
            self._settle(group.prepared, group.last_seq)
            self._finish(loop, group, None)
            return
        if self._sync is None or self._sync.loop is not loop:
            if self._sync is not None:
                self._sync.close()
            self._sync = WalSync(self.wal_path, loop,
                                 lambda ticket, code: self._synced(loop, ticket, code))
        group.ticket = self._sync.ask()

    def _synced(self, loop: asyncio.AbstractEventLoop, ticket: int, code: int) -> None:
        group = self._group
        if group is None or ticket < group.ticket:
            return  # an answer to an earlier request
        self._settle(group.prepared, group.last_seq)  # stored either way: see the docstring
        error = None
        if code:
            self.healthy = False
            log.error("the landing log's WAL could not be synced (%s); answering 503",
                      os.strerror(code))
            error = StoreUnavailableError(
                f"the event may not be on disk ({os.strerror(code)}); retry with the same "
                "clientToken")
        self._finish(loop, group, error)

    def _finish(self, loop: asyncio.AbstractEventLoop, group: _Group,
                error: Exception | None) -> None:
        """Answer the group's waiters, then write the counters if due, then the next group."""
        self._group = None
        group.done.set_result(None)
        for (_, fut), count in zip(group.waiters, group.prepared.counts, strict=True):
            if fut.done():  # the client went away; the event is stored anyway
                continue
            if error is None:
                fut.set_result(count)
            else:
                fut.set_exception(error)
        if self.counters.pending.cells:
            if time.monotonic() - self._counters_at >= COUNTERS_EVERY:
                self._flush_counters(loop)
            elif not self._counters_timer:
                self._counters_timer = True
                loop.call_later(COUNTERS_EVERY, self._flush_counters, loop)
        self._next(loop)

    def _next(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._pending:
            self._flush(loop)
        else:
            self._busy = False

    def _flush_counters(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop, never during an insert: write out the counters (kept and retried on
        failure). Under load this happens between groups; when idle, from a timer."""
        self._counters_timer = False
        if self._group is not None:
            return  # a group is in flight: its _finish writes them
        self._counters_at = time.monotonic()
        with self._lock:
            self._flush_counters_now()

    def _flush_counters_now(self) -> None:
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

    def _settle(self, prepared: _Prepared, last_seq: int) -> None:
        """The group is stored: its keys count as seen, its amounts go to the counters."""
        self._inflight -= prepared.keys
        self.seen.add(prepared.day, prepared.keys)
        if prepared.rows:
            self.counters.add(prepared.totals, last_seq)
        self.commits += 1
        self.healthy = True

    def _failed(self, prepared: _Prepared, exc: BaseException) -> StoreUnavailableError:
        """The group is not stored: forget its keys so that a retry is stored."""
        self._inflight -= prepared.keys
        self.healthy = False
        log.error("landing log commit failed (%s); answering 503 until it works", exc)
        return StoreUnavailableError(
            f"the event could not be stored ({exc}); nothing was stored, retry later"
        )


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
