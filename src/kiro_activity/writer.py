"""The landing log's writer process: inserts each group, commits it durably, keeps the counters.

Started by :class:`~.landing.LandingLog` as ``python -m kiro_activity.writer DB FD``. It reads
groups from the socket ``FD``: a 4-byte length, then a pickle of ``(ticket, rows, extra)`` with
the rows ready for :func:`~.landing.insert_rows` (a batch row's lines and index are compressed
there, on this process's core) and, per row, what it adds to the counters. Each
group is one SQLite transaction committed with ``synchronous=FULL`` (the WAL is fsync'd before
the commit becomes visible), and only then answered ``(ticket, last_seq, None)``; a group that
could not be committed (disk full, I/O error) is answered ``(ticket, 0, message)`` and nothing of
it is stored. Once a second the counters of the committed groups are written out with their
watermark (:mod:`.counters`); on start, whatever lies past the watermark is recounted from the
raw events, so a writer that died loses nothing.

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


def frames(sock: socket.socket, buffer: bytearray) -> list[Any] | None:
    """The complete frames received so far (waiting up to the counters' interval for data);
    None when the other end has closed."""
    try:
        data = sock.recv(1 << 20)
    except TimeoutError:
        return []
    if not data:
        return None
    buffer += data
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
            for ticket, rows, extra in got:
                answer: tuple[int, int, str | None]
                try:
                    last_seq = landing.insert_rows(conn, rows)  # durable once it returns
                    answer = (ticket, last_seq, None)
                except Exception as exc:  # nothing of the group is stored: say why
                    answer = (ticket, 0, f"{type(exc).__name__}: {exc}")
                sock.sendall(landing.frame(answer))
                if answer[2] is None:  # after the answer: the loop waits for nothing else
                    pending.add(landing.counts_of(rows, extra), last_seq)
            if pending.pending.cells and time.monotonic() - written >= COUNTERS_EVERY:
                written = time.monotonic()
                _write_counters(conn, pending)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent is gone; what was committed stays
    finally:
        _write_counters(conn, pending)
        conn.close()


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
