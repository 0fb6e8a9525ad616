"""The landing log's writer process: inserts each group, commits it durably, keeps the counters.

Started by :class:`~.landing.LandingLog` as ``python -m kiro_activity.writer DB FD``. It reads
groups from the socket ``FD``: a 4-byte length, then a pickle of ``(ticket, rows, extra)`` with
the rows ready for :func:`~.landing.insert_rows` (a batch row's lines and index are compressed
there, on this process's core) and, per row, what it adds to the counters. The groups that have
arrived while it committed the last ones are one SQLite transaction, committed with
``synchronous=FULL`` (the WAL is fsync'd before the commit becomes visible); only then is each
answered ``(ticket, last_seq, None)``, in the order received, with the seq of its own last
event. Groups that could not be committed (disk full, I/O error) are each answered ``(ticket, 0,
message)`` and nothing of them is stored. Once a second the counters of the committed groups are
written out with their watermark (:mod:`.counters`); on start, whatever lies past the watermark
is recounted from the raw events, so a writer that died loses nothing.

The writer has its own interpreter, so the insert, the fsync and the counters take no time from
the HTTP event loop; the loop only pickles the rows and reads the answer. Pickle is safe here:
the socket pair is made by the parent and only it holds the other end. When the parent closes
its end (or dies), the writer writes the counters and exits.
"""

from __future__ import annotations

import logging
import signal
import socket
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from . import counters, landing

log = logging.getLogger("kiro_activity.writer")
COUNTERS_EVERY = 1.0  # seconds between writes of the counters


#: what each read of the socket goes into: one buffer, not a fresh megabyte per read (which the
#: allocator maps, faults in and unmaps each time)
_SCRATCH = memoryview(bytearray(1 << 20))


def frames(sock: socket.socket, buffer: bytearray) -> list[Any] | None:
    """The complete frames received so far (waiting up to the counters' interval for data);
    None when the other end has closed."""
    try:
        got = sock.recv_into(_SCRATCH)
    except TimeoutError:
        return []
    if not got:
        return None
    buffer += _SCRATCH[:got]
    return landing.take_frames(buffer)


def serve(db: Path, sock: socket.socket) -> None:
    conn = landing.connect(db)
    recovered = counters.recover(conn)
    if recovered:
        log.info("counters brought up to date with %d events past their watermark", recovered)
    pending = counters.Counters()
    sock.settimeout(COUNTERS_EVERY)
    buffer = bytearray()
    written = time.monotonic()
    try:
        while (got := frames(sock, buffer)) is not None:
            if got:
                commit(conn, sock, got, pending)
            if pending.pending.cells and time.monotonic() - written >= COUNTERS_EVERY:
                written = time.monotonic()
                _write_counters(conn, pending)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent is gone; what was committed stays
    finally:
        _write_counters(conn, pending)
        conn.close()


def commit(conn: sqlite3.Connection, sock: socket.socket, groups: list[Any],
           pending: counters.Counters) -> None:
    """Commit the groups that have arrived in one transaction, then answer each."""
    rows = [row for _, group_rows, _ in groups for row in group_rows]
    try:
        last_seq = landing.insert_rows(conn, rows)  # durable once it returns
    except Exception as exc:  # nothing of the groups is stored: say why
        error = f"{type(exc).__name__}: {exc}"
        sock.sendall(b"".join(landing.frame((ticket, 0, error)) for ticket, _, _ in groups))
        return
    answers = []
    seq = last_seq
    for ticket, group_rows, _ in reversed(groups):  # each group's own last seq
        answers.append(landing.frame((ticket, seq, None)))
        seq -= landing.events_of_rows(group_rows)
    sock.sendall(b"".join(reversed(answers)))
    # after the answers: the loop waits for nothing else
    extra = [e for _, _, group_extra in groups for e in group_extra]
    pending.add(landing.counts_of(rows, extra), last_seq)


def _write_counters(conn: sqlite3.Connection, pending: counters.Counters) -> None:
    try:
        pending.flush(conn)
    except Exception as exc:  # the watermark did not move: recounted later, nothing is lost
        log.warning("counters not written yet (%s); will retry", exc)


def main() -> None:
    # Ctrl-C reaches the whole process group: the parent stops this process by closing the
    # socket, after its last group, so the interrupt is the parent's to handle
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="kiro-activity writer: %(message)s")
    db, fd = Path(sys.argv[1]), int(sys.argv[2])
    serve(db, socket.socket(fileno=fd))


if __name__ == "__main__":
    main()
