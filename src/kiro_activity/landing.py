"""The landing log: every acknowledged event, durably, exactly once.

Request handlers add their records to the pending group and wait. On the next turn of the
event loop everything gathered is prepared (receipt time, dedupe, the rows) and sent as one
group to the **writer process** (:mod:`.writer`), also while earlier groups are still with it
(up to ``max_group`` events at a time). The writer inserts all the groups that have arrived
while it committed the last ones in one SQLite transaction (WAL, ``synchronous=FULL``: one
fsync for all of them), adds them to the per-user-day counters, and answers each group, in the
order they were sent; only then are the group's waiters released. So durability costs one fsync
per batch of concurrent requests, not one per request, the writer starts its next commit as
soon as one ends (not after a round trip to a busy loop), and a 200 is never sent for an event
not on disk. A request holding a clientToken that is with the writer in an earlier group (a
retry sent before the first try was answered) waits for that group's answer: a repeat if it
was stored, new if it was not.

Why a process: the insert, the fsync and the counters cost the event loop as much CPU as all
the rest of a request (measured: with the insert done on the loop, skipping it alone gave 1.44x,
skipping the counters 1.14x), and a writer *thread* must win the GIL back from the busy loop
after every SQLite call. The writer process has its own interpreter and core; the loop only
pickles the group's rows (a few microseconds each) and reads a short answer.

If the writer process dies, another is started; of the groups that were with it, those whose
rows are visible in the database are stored (a commit becomes visible only after its fsync, and
groups are committed in the order sent, so the stored ones are the first ones), the others are
not, and each is answered accordingly. A lock file (``landing.db.lock``) held by the log and
shared with its writer process keeps one writer per log: a service restarted after being killed
waits until the old writer, which finishes the group it holds, has exited. Readers that must see
every acknowledged row of a day (the daily run) wait on :meth:`LandingLog.barrier`.

Exactly once: a repeated clientToken of the same user within the dedupe window
(``dedupe_days``) is recognised by the
in-memory :class:`~.dedupe.DedupeIndex` (kept off disk so that writes stay sequential) and not
stored again; events without a clientToken are each stored.

The receipt time of an event is the clock when its group is prepared, so a day closes cleanly:
once the clock has passed midnight no event can get a receipt time in the day before.

A bulk request's events are kept as **one row** (:class:`BatchRecord`): ``n`` events under the
seqs ``seq - n + 1 .. seq``, their lines as received joined by newlines and compressed (zstd),
and an index of them (member, clientToken, dedupe key, optOutPreference, client timestamp,
ideCategory; msgpack, compressed) in ``idx``. A single event is a row with ``n = 1`` and no
``idx``. Readers go through :func:`scan`, which hands every event out one by one whichever way
it is kept, or add ``n`` where they count.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import pickle
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import breakdown, counters, store
from .breakdown import Dim
from .counters import BatchCounts, GroupCounts
from .dedupe import DAY_US, DedupeIndex, dedupe_key, dedupe_keys
from .errors import StoreUnavailableError
from .logrows import COLUMNS, decode_index, dedupe_rows, encode_index, pack, scan

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
    body         BLOB NOT NULL,
    n            INTEGER NOT NULL DEFAULT 1,
    idx          BLOB
);
CREATE INDEX IF NOT EXISTS events_by_time ON events(received_us);
"""
#: the columns added since the first schema, as (name, declaration), for older databases
ADDED = (("n", "INTEGER NOT NULL DEFAULT 1"), ("idx", "BLOB"))
INSERT = (
    "INSERT INTO events (received_us, account_id, user_id, member, client_token, dedupe_key,"
    " opt_out, client_ts, ide_category, protocol, body) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)
INSERT_SEQ = (
    "INSERT INTO events (seq, received_us, account_id, user_id, member, client_token,"
    " dedupe_key, opt_out, client_ts, ide_category, protocol, body, n, idx) VALUES"
    " (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
@dataclass(slots=True)  # not frozen: a frozen dataclass costs 1.2 us more to build, per event
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
    #: the (IDE, language) the dashboard's breakdown counts it under (see breakdown.dim_of)
    dim: Dim = breakdown.UNRECORDED


@dataclass(slots=True)
class BatchRecord:
    """The accepted lines of one bulk request (one token, so one user), stored as one row;
    per event, in the lines' order, the fields a :class:`LandingRecord` has."""

    account_id: str
    user_id: str
    protocol: str
    lines: list[bytes]
    members: list[str]
    client_tokens: list[str | None]
    opt_outs: list[str | None]
    client_ts: list[float | None]
    ides: list[str | None]
    #: what its lines add to the counters, worked out where they were checked (None: by the
    #: writer, from the lines)
    counts: BatchCounts | None = None

    def __len__(self) -> int:
        return len(self.lines)

    def append(self, record: LandingRecord) -> None:
        """Add one event of the batch's user, as a single event's record holds it (its
        amounts are worked out by the writer: ``counts`` is left as it is)."""
        self.lines.append(record.body)
        self.members.append(record.member)
        self.client_tokens.append(record.client_token)
        self.opt_outs.append(record.opt_out)
        self.client_ts.append(record.client_ts)
        self.ides.append(record.ide_category)


Record = LandingRecord | BatchRecord


def _events(records: Sequence[Record]) -> int:
    return sum(len(r) if type(r) is BatchRecord else 1 for r in records)


def events_of_rows(rows: Sequence[tuple[object, ...]]) -> int:
    """How many events prepared rows hold (a batch row its ``n``)."""
    return sum(row[11] if len(row) == _BATCH_ROW else 1 for row in rows)  # type: ignore[misc]


#: per row, what it adds to its user-day's counters: (amounts, interaction), or None when they
#: are to be worked out from the stored body
Extra = tuple[tuple[tuple[int, int], ...], tuple[str | None, ...] | None, Dim] | BatchCounts | None


@dataclass(slots=True)
class _Prepared:
    """A group ready for the writer: rows to insert and what each waiter gets back."""

    rows: list[tuple[object, ...]]
    extra: list[Extra]
    counts: list[int]
    keys: set[int]
    day: int
    #: the requests left out: they hold a key of a group that is with the writer
    deferred: list[int]


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the landing database (WAL, every commit fsync'd); the schema is created on first
    open."""
    store.private_dir(path.parent)
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        if not readonly:
            conn.execute("PRAGMA cache_size=-131072")
            conn.executescript(SCHEMA + counters.SCHEMA)
            counters.migrate(conn)
        _migrate(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        if isinstance(exc, sqlite3.OperationalError):  # locked, I/O, full disk: not damage
            raise
        raise store.damaged(path, exc) from None
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    """Add the columns a landing log of an earlier version lacks (a batch row's ``n`` and
    ``idx``; its rows are all single events, as the defaults say)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    for name, declaration in ADDED:
        if have and name not in have:
            conn.execute(f"ALTER TABLE events ADD COLUMN {name} {declaration}")


def counts_of(rows: Sequence[tuple[object, ...]], extra: Sequence[Extra]) -> GroupCounts:
    """What a group's rows add to the per-user-day counters (a batch row's as its checker
    summed it, or from its lines when that was not done)."""
    totals = GroupCounts()
    for row, more in zip(rows, extra, strict=True):
        received_us, account_id, user_id, member = row[0], row[1], row[2], row[3]
        if len(row) == _BATCH_ROW:  # as the log prepared it: lines joined, index not packed
            batch = more
            if batch is None:  # not worked out by the checker (some lines were repeats)
                members, _, _, _, _, ides = decode_index(row[12])  # type: ignore[arg-type]
                batch = counters.lines_counts(members, ides, row[10].split(b"\n"))  # type: ignore[attr-defined]
            totals.add_batch((str(account_id), int(received_us) // DAY_US,  # type: ignore[call-overload]
                              str(user_id)), batch)  # type: ignore[arg-type]
            continue
        if more is None:
            amounts, interaction, dim = counters.amounts_of(
                str(member), row[10], row[8])  # type: ignore[arg-type]
        else:
            amounts, interaction, dim = more  # type: ignore[misc]
        totals.add((str(account_id), int(received_us) // DAY_US,  # type: ignore[call-overload]
                    str(user_id)), amounts, interaction, dim)
    return totals


#: frames between the log and its writer process: a 4-byte little-endian length, then a pickle
_LEN = struct.Struct("<I")


def frame(obj: object) -> bytes:
    """One frame holding ``obj``."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(payload)) + payload


def frame_parts(obj: object) -> tuple[memoryview, memoryview]:
    """:func:`frame` in two parts, its length and its pickle (a batch's megabytes not copied
    once more to put four bytes in front)."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return memoryview(_LEN.pack(len(payload))), memoryview(payload)


def take_frames(buffer: bytearray) -> list[Any]:
    """The objects of the complete frames at the start of ``buffer``, which keeps the rest."""
    out = []
    start = 0
    with memoryview(buffer) as view:  # each pickle read in place, not copied out first
        while len(buffer) - start >= _LEN.size:
            (size,) = _LEN.unpack_from(buffer, start)
            if len(buffer) - start - _LEN.size < size:
                break
            out.append(pickle.loads(view[start + _LEN.size:start + _LEN.size + size]))
            start += _LEN.size + size
    del buffer[:start]
    return out


LOCK_WAIT = 60.0  # seconds to wait for a previous writer of the same log to finish


def _lock_exclusively(path: Path) -> int:
    """Hold the landing log's lock file (flock), shared with this log's writer process, so that
    one service at a time writes the log: a restart waits until the writer process of the
    previous one (which may outlive a killed parent by its last group) has exited."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise RuntimeError(
                    f"another process is writing the landing log {path.with_suffix('')} (its lock "
                    f"{path} is held); stop it first") from None
            time.sleep(0.05)


class _WriterLink:
    """The writer process and its end of the socket pair, watched by the event loop."""

    def __init__(self, db: Path, lock_fd: int, loop: asyncio.AbstractEventLoop,
                 on_answer: Callable[[int, int, str | None], None],
                 on_lost: Callable[[], None]) -> None:
        self.loop, self.on_answer, self.on_lost = loop, on_answer, on_lost
        self.sock, theirs = socket.socketpair()
        try:  # its own session: a Ctrl-C at the terminal is the parent's to handle
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kiro_activity.writer", str(db), str(theirs.fileno())],
                pass_fds=(theirs.fileno(), lock_fd), start_new_session=True)
        except BaseException:
            self.sock.close()
            raise
        finally:
            theirs.close()
        self._buffer = bytearray()
        self._out: deque[memoryview] = deque()  # what the socket has not taken yet
        self._writing = False
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._read)

    def send(self, group: object) -> None:
        """Send one group; what the socket does not take at once is sent as it drains (the
        event loop may have made the socket non-blocking: libuv does)."""
        was_idle = not self._out
        self._out.extend(frame_parts(group))
        if was_idle:
            self._write()

    def _write(self) -> None:
        out = self._out
        try:
            while out:  # a view's tail, not a copy, when the socket takes part of it
                sent = self.sock.send(out[0])
                if sent < len(out[0]):
                    out[0] = out[0][sent:]
                else:
                    out.popleft()
        except (BlockingIOError, InterruptedError):
            if not self._writing:
                self._writing = True
                self.loop.add_writer(self.sock.fileno(), self._write)
            return
        except OSError:  # the writer is gone: _read sees it and deals with the group
            self._out.clear()
        if self._writing:
            self._writing = False
            self.loop.remove_writer(self.sock.fileno())

    def _read(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            self.on_lost()
            return
        self._buffer += data
        for ticket, last_seq, error in take_frames(self._buffer):
            self.on_answer(ticket, last_seq, error)

    def close(self, wait: float = 0.0) -> int | None:
        """Stop watching, close our end (the writer then writes its counters and exits), and
        wait up to ``wait`` seconds for it; returns its exit code if it ended."""
        with contextlib.suppress(RuntimeError, ValueError):  # the loop may be closed already
            self.loop.remove_reader(self.sock.fileno())
            if self._writing:
                self.loop.remove_writer(self.sock.fileno())
        self.sock.close()
        try:
            return self.proc.wait(wait) if wait else self.proc.poll()
        except subprocess.TimeoutExpired:
            return None



#: what is called with a request's future as soon as the log resolves it (see submit)
Then = Callable[["asyncio.Future[int]"], None]
#: a request waiting for its records to be durable: them, its future, and its Then, if any
Waiter = tuple[Sequence[Record], "asyncio.Future[int]", Then | None]


def _settle_waiter(fut: asyncio.Future[int], then: Then | None, count: int,
                   error: BaseException | None) -> None:
    """Resolve a request's future (``count`` new events, or ``error``) and call its Then."""
    if fut.done():  # the client went away; the event is stored anyway
        return
    if error is None:
        fut.set_result(count)
    else:
        fut.set_exception(error)
    if then is not None:
        try:
            then(fut)
        except Exception:
            log.exception("a landing log request's callback failed")


@dataclass(slots=True)
class _Group:
    """A group sent to the writer, waiting for its answer."""

    waiters: list[Waiter]
    prepared: _Prepared
    done: asyncio.Future[None]
    ticket: int = 0
    events: int = 0  # how many events its rows hold


class LandingLog:
    """The durable, deduplicating event log with group commit in a writer process."""

    def __init__(
        self, path: Path, *, clock: Callable[[], float] = time.time, max_group: int = 4096,
        dedupe_days: int = 30,
    ) -> None:
        self.path = path
        self.clock = clock
        self.max_group = max_group
        self._lock_fd = _lock_exclusively(Path(f"{path}.lock"))
        self._conn = connect(path)  # reads, and the writes of append_sync
        self.seen = DedupeIndex(dedupe_days)
        now_us = int(clock() * 1_000_000)
        self.seen.load(dedupe_rows(self._conn, self.seen.oldest_kept_us(now_us)))
        recovered = counters.recover(self._conn)
        if recovered:
            log.info("counters brought up to date with %d events past their watermark", recovered)
        self.counters = counters.Counters()  # of append_sync; the writer process keeps its own
        self._lock = threading.Lock()  # one user of self._conn at a time
        self._inflight: set[int] = set()  # the dedupe keys of the groups with the writer
        self._pending: deque[Waiter] = deque()
        self._groups: deque[_Group] = deque()  # with the writer, answered in this order
        self._in_flight_events = 0
        #: requests holding a key that is in flight, each with the ticket to wait for
        self._deferred: list[tuple[int, Waiter]] = []
        self._scheduled = False  # a flush is due on the next turn of the loop
        self._writer: _WriterLink | None = None
        self._tickets = 0
        self._last_seq = self._max_seq()  # the highest seq known committed
        self.commits = 0
        self.healthy = True

    def close(self) -> None:
        """Stop the writer process (it writes its counters first) and close the database."""
        if self._writer is not None:
            self._stop_writer(self._writer)
            self._writer = None
        with self._lock:
            self._flush_counters_now()
            self._conn.close()
        os.close(self._lock_fd)

    async def append(self, records: Sequence[Record]) -> int:
        """Store records durably; returns how many were new (the rest were repeats)."""
        return await self.submit(records, asyncio.get_running_loop())

    def submit(self, records: Sequence[Record], loop: asyncio.AbstractEventLoop,
               then: Then | None = None) -> asyncio.Future[int]:
        """Queue records for the next group commit (on the loop's thread); the future gets how
        many were new once they are durable, or the error that kept them from the disk.

        ``then``, if given, is called with the future as soon as it is resolved, from within
        the log's handling of the writer's answer: a callback added to the future would run
        only after the event loop has handled all else that is ready (the requests that arrived
        meanwhile), which measured ~110 us of waiting per request (fast path, bench/RESULTS.md).
        What it raises is logged, and does not keep the others of its group from their
        answers."""
        fut: asyncio.Future[int] = loop.create_future()
        self._pending.append((records, fut, then))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush, loop)
        return fut

    @property
    def _group(self) -> _Group | None:
        """The group sent last, while it is with the writer."""
        return self._groups[-1] if self._groups else None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the writer process now rather than at the first group (the server's startup)."""
        if self._writer is None or self._writer.loop is not loop:
            if self._writer is not None:
                self._stop_writer(self._writer)
            self._start_writer(loop)

    async def barrier(self) -> None:
        """Wait until the groups in flight, if any, are committed (on the loop's thread): every
        event with a receipt time before now is then on disk; later ones get later times."""
        group = self._group
        if group is not None:
            await asyncio.shield(group.done)

    def append_sync(self, records: Sequence[Record]) -> int:
        """Blocking form of :meth:`append`, committed on this process's own connection, for
        callers without a running event loop (tools, tests); not while the writer process runs
        (its answers are matched to the rows it commits)."""
        if self._writer is not None:
            raise RuntimeError("append_sync cannot be used while the writer process runs")
        prepared = self._prepare([records])
        try:
            with self._lock:
                last_seq = insert_rows(self._conn, prepared.rows)
        except Exception as exc:
            raise self._failed(prepared, exc) from exc
        self._settle(prepared, last_seq)
        self._last_seq = max(self._last_seq, last_seq)
        with self._lock:
            self.counters.add(counts_of(prepared.rows, prepared.extra), last_seq)
            self._flush_counters_now()
        return prepared.counts[0]

    def run_in_writer(self, fn: Callable[[sqlite3.Connection], object]) -> object:
        """Run ``fn(conn)`` on this process's connection (maintenance, tests)."""
        with self._lock:
            return fn(self._conn)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send the pending requests to the writer as one group, at once even while other
        groups are with it (it commits what has arrived in one transaction), up to
        ``max_group`` events with the writer at a time."""
        self._scheduled = False
        while self._pending:
            waiters: list[Waiter] = []
            size = self._in_flight_events
            while self._pending and ((not waiters and not self._groups)
                                     or size + _events(self._pending[0][0]) <= self.max_group):
                item = self._pending.popleft()
                waiters.append(item)
                size += _events(item[0])
            if not waiters:
                return  # the writer holds enough: the next answer sends the rest
            self._send(loop, waiters)

    def _send(self, loop: asyncio.AbstractEventLoop, waiters: list[Waiter]) -> None:
        try:
            prepared, waiters = self._prepare_waiters(waiters)
        except Exception as exc:  # a bug, not the disk: answer 500 and go on
            log.exception("could not prepare a group")
            for _, fut, then in waiters:
                _settle_waiter(fut, then, 0, exc)
            return
        group = _Group(waiters, prepared, loop.create_future())
        if not prepared.rows:  # nothing new (repeats of stored events): nothing to write
            self._settle(prepared, self._last_seq)
            self._answer(group, None)
            return
        self._tickets += 1
        group.ticket = self._tickets
        group.events = events_of_rows(prepared.rows)
        self._groups.append(group)
        self._in_flight_events += group.events
        try:
            self.start(loop)
            assert self._writer is not None
            self._writer.send((group.ticket, prepared.rows, prepared.extra))
        except Exception as exc:  # no writer could be started (no processes or fds left ...)
            if self._writer is not None and self._writer.proc.poll() is None:
                self._writer_lost(loop)  # it may have the groups: decide from the database
            else:
                self._fail_all(loop, exc)

    def _prepare_waiters(self, waiters: list[Waiter]) -> tuple[_Prepared, list[Waiter]]:
        """:meth:`_prepare` the waiters' records; a request holding a key that is with the
        writer in an earlier group waits for that group's answer (a repeat of it if it was
        stored, new if not) and is left out."""
        prepared = self._prepare([waiter[0] for waiter in waiters])
        if prepared.deferred:
            wait_for = self._tickets
            self._deferred += [(wait_for, waiters[i]) for i in prepared.deferred]
            left = set(prepared.deferred)
            waiters = [w for i, w in enumerate(waiters) if i not in left]
        return prepared, waiters

    @staticmethod
    def _stop_writer(writer: _WriterLink, wait: float = 30.0) -> int | None:
        """Close the link and wait for the writer to exit; kill it if it does not."""
        code = writer.close(wait=wait)
        if code is None:
            log.error("the landing writer did not stop; killing it")
            writer.proc.kill()
            code = writer.proc.wait()
        return code

    def _start_writer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._writer = None  # stays None if the process cannot be started
        self._writer = _WriterLink(
            self.path, self._lock_fd, loop, lambda ticket, last_seq, error: self._answered(
                loop, ticket, last_seq, error), lambda: self._writer_lost(loop))

    def _answered(self, loop: asyncio.AbstractEventLoop, ticket: int, last_seq: int,
                  error: str | None) -> None:
        if not self._groups or ticket != self._groups[0].ticket:
            log.error("an answer from the landing writer for no group sent (%s)", ticket)
            return
        group = self._groups.popleft()
        self._in_flight_events -= group.events
        if error is not None:
            self._resolved(loop, group, self._failed(group.prepared, error))
            return
        self._last_seq = last_seq
        self._settle(group.prepared, last_seq)
        self._resolved(loop, group, None)

    def _writer_lost(self, loop: asyncio.AbstractEventLoop) -> None:
        """The writer process died. Of the groups it had, those whose rows are visible are
        stored (a commit is visible only once fsync'd; groups commit in order), the others
        failed; a new writer takes over."""
        assert self._writer is not None
        code = self._stop_writer(self._writer, wait=5)  # it cannot commit anything after this
        log.error("the landing writer process exited (code %s); starting another", code)
        self._writer = None
        if not self._groups:
            return
        newest = None
        for attempt in range(20):
            try:
                with self._lock:
                    newest = self._max_seq()
                break
            except sqlite3.Error as exc:
                log.warning("cannot read the landing log yet (%s); retrying", exc)
                time.sleep(0.05 * (attempt + 1))
        stored = -1 if newest is None else newest - self._last_seq
        # taken off first: what is sent meanwhile (the requests these answers let go) goes to
        # the next writer and is answered by it, not judged here
        lost, self._groups, self._in_flight_events = self._groups, deque(), 0
        for group in lost:
            if 0 <= group.events <= stored:
                stored -= group.events
                self._last_seq += group.events
                self._settle(group.prepared, self._last_seq)
                self._resolved(loop, group, None)
            else:
                stored = -1  # a later group cannot have been committed before this one
                self._resolved(loop, group, self._failed(group.prepared,
                                                          "the writer process died"))

    def _fail_all(self, loop: asyncio.AbstractEventLoop, exc: BaseException) -> None:
        """No writer: every group sent (none of them can be stored) fails with ``exc``."""
        lost, self._groups, self._in_flight_events = self._groups, deque(), 0
        for group in lost:
            self._resolved(loop, group, self._failed(group.prepared, exc))

    def _max_seq(self) -> int:
        return int(self._conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])

    def _resolved(self, loop: asyncio.AbstractEventLoop, group: _Group,
                  error: Exception | None) -> None:
        """A group is answered: the requests that waited for it go back in line, what the
        writer may now take goes to it (before this group's answers are written to their
        sockets, so that it commits meanwhile), and the group's waiters get their answers."""
        group.done.set_result(None)
        if self._deferred:
            back = [w for ticket, w in self._deferred if ticket <= group.ticket]
            if back:
                self._deferred = [(t, w) for t, w in self._deferred if t > group.ticket]
                self._pending.extendleft(reversed(back))
        if self._pending and not self._scheduled:
            if error is None:
                self._flush(loop)
            else:  # on the next turn: a writer that cannot start is not retried in a loop
                self._scheduled = True
                loop.call_soon(self._flush, loop)
        self._answer(group, error)

    @staticmethod
    def _answer(group: _Group, error: Exception | None) -> None:
        for (_, fut, then), count in zip(group.waiters, group.prepared.counts, strict=True):
            _settle_waiter(fut, then, count, error)

    def _flush_counters_now(self) -> None:
        try:
            self.counters.flush(self._conn)
        except Exception as exc:  # the watermark did not move: nothing is lost
            log.warning("counters not written yet (%s); will retry", exc)

    def _prepare(self, group: list[Sequence[Record]]) -> _Prepared:
        """Receipt time and dedupe for a group; its new keys are held as in flight."""
        received_us = int(self.clock() * 1_000_000)
        rows: list[tuple[object, ...]] = []
        extra: list[Extra] = []
        counts: list[int] = []
        keys: set[int] = set()
        deferred: list[int] = []
        self.seen.expire(received_us)
        inflight = self._inflight
        for i, records in enumerate(group):
            new = 0
            marks = len(rows), len(extra), set(keys) if len(records) > 1 else None
            for r in records:
                if type(r) is BatchRecord:
                    got = self._prepare_batch(r, received_us, rows, extra, keys)
                    if got < 0:
                        break
                    new += got
                    continue
                assert isinstance(r, LandingRecord)
                key = None
                if r.client_token is not None:
                    key = dedupe_key(r.account_id, r.user_id, r.client_token)
                    if key in inflight:
                        break  # an earlier group's, not known stored yet: wait for it
                    if key in keys or key in self.seen:
                        continue  # a repeat: answered as stored, not stored again
                    keys.add(key)
                rows.append((received_us, r.account_id, r.user_id, r.member,
                             r.client_token, key, r.opt_out, r.client_ts, r.ide_category,
                             r.protocol, r.body))
                extra.append(None if r.amounts is None else (r.amounts, r.interaction, r.dim))
                new += 1
            else:
                counts.append(new)
                continue
            deferred.append(i)  # undo what the request had added
            del rows[marks[0]:], extra[marks[1]:]
            if marks[2] is not None:  # (a request of one record added no key before this)
                keys.intersection_update(marks[2])
        self._inflight |= keys
        return _Prepared(rows, extra, counts, keys, received_us // DAY_US, deferred)

    def _prepare_batch(self, b: BatchRecord, received_us: int, rows: list[tuple[object, ...]],
                       extra: list[Extra], keys: set[int]) -> int:
        """One batch's new events as one row (one event: a plain row); how many are new, or
        -1 if some of its keys are with the writer in an earlier group (it then waits)."""
        key_of = dedupe_keys(b.account_id, b.user_id)
        every = [None if token is None else key_of(token) for token in b.client_tokens]
        fresh = {key for key in every if key is not None}
        if not fresh.isdisjoint(self._inflight):
            return -1
        held = [keys, *self.seen.sets()]
        if len(fresh) == len(every) - every.count(None) and all(map(fresh.isdisjoint, held)):
            keys |= fresh  # no repeat at all (the usual case): set operations, in C
            kept: Sequence[int] = range(len(every))
            dkeys = every
        else:
            chosen: list[int] = []
            dkeys = []
            for i, key in enumerate(every):
                if key is not None:
                    if any(key in s for s in held):
                        continue  # a repeat: answered as stored, not stored again
                    keys.add(key)
                chosen.append(i)
                dkeys.append(key)
            kept = chosen
        if not kept:
            return 0
        every_kept = len(kept) == len(b.lines)
        if every_kept:
            cols: list[list[Any]] = [b.members, b.client_tokens, dkeys, b.opt_outs, b.client_ts,
                                     b.ides]
            lines = b.lines
        else:
            cols = [[c[i] for i in kept] for c in (b.members, b.client_tokens)]
            cols += [dkeys, *([c[i] for i in kept] for c in (b.opt_outs, b.client_ts, b.ides))]
            lines = [b.lines[i] for i in kept]
        if len(kept) == 1:
            rows.append((received_us, b.account_id, b.user_id, cols[0][0], cols[1][0],
                         cols[2][0], cols[3][0], cols[4][0], cols[5][0], b.protocol, lines[0]))
        else:  # the writer packs the lines and the index (zstd) on its own core
            rows.append((received_us, b.account_id, b.user_id, "", None, None, None, None, None,
                         b.protocol, b"\n".join(lines), len(kept), encode_index(cols)))
        extra.append(b.counts if every_kept and len(kept) > 1 else None)
        return len(kept)

    def _settle(self, prepared: _Prepared, last_seq: int) -> None:
        """The group is stored: its keys count as seen from now on."""
        self._inflight -= prepared.keys
        self.seen.add(prepared.day, prepared.keys)
        self.commits += 1
        self.healthy = True

    def _failed(self, prepared: _Prepared, exc: BaseException | str) -> StoreUnavailableError:
        """The group is not stored: forget its keys so that a retry is stored."""
        self._inflight -= prepared.keys
        self.healthy = False
        log.error("landing log commit failed (%s); answering 503 until it works", exc)
        return StoreUnavailableError(
            f"the event could not be stored ({exc}); nothing was stored, retry later"
        )


CHUNK = 256
_BATCH_ROW = 13  # a prepared batch row: the 11 values of INSERT, then n and its index


@functools.cache
def _insert_sql(n: int) -> str:
    return INSERT + ",(?,?,?,?,?,?,?,?,?,?,?)" * (n - 1)


@functools.cache
def _insert_seq_sql(n: int) -> str:
    return INSERT_SEQ + ",(?,?,?,?,?,?,?,?,?,?,?,?,?,?)" * (n - 1)


def _with_seqs(conn: sqlite3.Connection, rows: list[tuple[object, ...]],
               ) -> list[tuple[object, ...]]:
    """The rows as :data:`INSERT_SEQ` takes them: each its seq (a batch row the last of its
    ``n``), its body and index packed."""
    seq = int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
    out: list[tuple[object, ...]] = []
    for row in rows:
        if len(row) == _BATCH_ROW:
            seq += row[11]  # type: ignore[operator]
            out.append((seq, *row[:10], pack(row[10]), row[11],  # type: ignore[arg-type]
                        pack(row[12])))  # type: ignore[arg-type]
        else:
            seq += 1
            out.append((seq, *row, 1, None))
    return out


def insert_rows(conn: sqlite3.Connection, rows: list[tuple[object, ...]]) -> int:
    """Insert rows atomically with as few calls into SQLite as possible (runs on the writer).

    A group of up to CHUNK rows is one multi-row INSERT committed on its own (autocommit: one
    statement, one transaction, one fsync); larger groups are several such statements inside
    BEGIN ... COMMIT. On any error the transaction is rolled back and the error raised. Returns
    the seq of the last event (the events of one group get consecutive seqs). A group with a
    batch row gives every row its seq (one writer: nothing else inserts meanwhile).
    """
    if not rows:
        return 0
    sql, width = _insert_sql, 11
    if any(len(row) == _BATCH_ROW for row in rows):
        rows, sql, width = _with_seqs(conn, rows), _insert_seq_sql, 14
    if len(rows) <= CHUNK:
        cur = conn.execute(sql(len(rows)), [v for row in rows for v in row])
        return _last(rows, width, cur)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start:start + CHUNK]
            cur = conn.execute(sql(len(chunk)), [v for row in chunk for v in row])
        conn.execute("COMMIT")
        return _last(rows, width, cur)
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # the transaction may be gone already
            conn.execute("ROLLBACK")
        raise


def _last(rows: list[tuple[object, ...]], width: int, cur: sqlite3.Cursor) -> int:
    """The seq of the group's last event: given (explicit seqs) or SQLite's."""
    last: Any = rows[-1][0] if width == 14 else cur.lastrowid
    return int(last or 0)


def read_events(path: Path, where: str = "", args: Sequence[object] = ()) -> list[dict[str, Any]]:
    """All stored events (as dicts) of the rows matching an optional SQL condition (as in
    :func:`scan`); for tools and tests."""
    conn = connect(path, readonly=True)
    try:
        return [dict(zip(COLUMNS, event, strict=True))
                for chunk in scan(conn, COLUMNS, where, args) for event in chunk]
    finally:
        conn.close()
