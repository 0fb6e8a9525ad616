"""How the landing log keeps events in rows, and the one way to read them back.

A single event is one row of ``events`` (``n = 1``, no ``idx``). A bulk request's accepted
events are one **batch row**: ``n`` events under the seqs ``seq - n + 1 .. seq``, their lines as
received joined by newlines in ``body``, and in ``idx`` their index: one list per
:data:`INDEXED` column (member, clientToken, dedupe key, optOutPreference, client timestamp,
ideCategory), msgpack; both zstd-compressed. The columns of :data:`SHARED` are the row's.

Readers get events through :func:`scan` (each event a tuple, a batch row's one by one) and
counts through :func:`count` (the sum of ``n``); they never need to know how an event is kept.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from typing import Any

import msgspec
import zstandard

COLUMNS = (
    "seq", "received_us", "account_id", "user_id", "member", "client_token", "dedupe_key",
    "opt_out", "client_ts", "ide_category", "protocol", "body",
)
#: the columns of an event a batch row keeps per event, in its index, in this order
INDEXED = ("member", "client_token", "dedupe_key", "opt_out", "client_ts", "ide_category")
#: the columns a batch row's events share
SHARED = ("received_us", "account_id", "user_id", "protocol")
#: zstd level 1: ~1 us per 660-byte event, 6.4x smaller; level -1 takes half the time for 3.8x
#: (bench/RESULTS.md)
_ZSTD_LEVEL = 1

encode_index = msgspec.msgpack.Encoder().encode
decode_index = msgspec.msgpack.Decoder(list[list[Any]]).decode


def pack(data: bytes) -> bytes:
    """A batch row's body or index as stored (one zstd frame)."""
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(data)


def unpack(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(data)


def batch_index(idx: bytes) -> list[list[Any]]:
    """A stored batch row's index: one list per :data:`INDEXED` column."""
    return decode_index(unpack(idx))


def batch_lines(body: bytes) -> list[bytes]:
    """A stored batch row's events, each its line as received."""
    return unpack(body).split(b"\n")


SCAN_ROWS = 1_000  # rows fetched at a time (a batch row may hold up to max_batch_lines events)
SCAN_EVENTS = 50_000  # events handed out at a time


def scan(conn: sqlite3.Connection, columns: Sequence[str], where: str = "",
         args: Sequence[object] = (), *, text: bool = False) -> Iterator[list[tuple[Any, ...]]]:
    """The events of the rows matching ``where``, in seq order, in lists of up to about
    :data:`SCAN_EVENTS`: each event a tuple of ``columns`` (of :data:`COLUMNS`; ``body`` as
    text when ``text``), a batch row's events one by one, as if each were its own row.

    ``where`` may test only what a batch row's events share: ``seq`` (a batch row's is its last
    event's; every mark kept elsewhere, watermark, sealed seq, segment bounds, is some row's
    seq, so a range of rows is a range of events), ``received_us``, ``account_id``, ``user_id``
    and ``protocol``.
    """
    wanted = [c for c in columns if c not in COLUMNS]
    if wanted:
        raise ValueError(f"not a column of the landing log: {wanted}")
    body = "CAST(body AS TEXT)" if text else "body"
    select = [f"CASE WHEN idx IS NULL THEN {body} END" if c == "body" else c for c in columns]
    k = len(select)
    select += ["n", "idx" if any(c in INDEXED for c in columns) else "NULL",
               "CASE WHEN idx IS NOT NULL THEN body END" if "body" in columns else "NULL"]
    cur = conn.execute(f"SELECT {', '.join(select)} FROM events {where} ORDER BY seq", args)
    out: list[tuple[Any, ...]] = []
    while rows := cur.fetchmany(SCAN_ROWS):
        for row in rows:
            if row[k] == 1:
                out.append(row[:k])
            else:
                out.extend(_expand(columns, row, k, text))
        if len(out) >= SCAN_EVENTS:
            yield out
            out = []
    if out:
        yield out


def _expand(columns: Sequence[str], row: tuple[Any, ...], k: int, text: bool,
            ) -> Iterator[tuple[Any, ...]]:
    """The events of one batch row, as :func:`scan` selected it."""
    n, idx, body = row[k], row[k + 1], row[k + 2]
    index = batch_index(idx) if idx is not None else None
    lines: list[Any] | None = None
    if body is not None:
        lines = batch_lines(body)
        if text:
            lines = [line.decode() for line in lines]
    parts: list[Iterable[Any]] = []
    for i, c in enumerate(columns):
        if c == "seq":
            parts.append(range(row[i] - n + 1, row[i] + 1))
        elif c == "body":
            assert lines is not None and len(lines) == n
            parts.append(lines)
        elif c in INDEXED:
            assert index is not None
            parts.append(index[INDEXED.index(c)])
        else:
            assert c in SHARED
            parts.append(repeat(row[i], n))
    return zip(*parts, strict=True)


def count(conn: sqlite3.Connection, where: str = "", args: Sequence[object] = ()) -> int:
    """How many events the rows matching ``where`` hold (the same rules as :func:`scan`)."""
    return int(conn.execute(f"SELECT coalesce(sum(n), 0) FROM events {where}",
                            args).fetchone()[0])


def dedupe_rows(conn: sqlite3.Connection, since_us: int) -> Iterator[tuple[int, int]]:
    """(received_us, dedupe key) of every event received since ``since_us`` that has one."""
    yield from conn.execute("SELECT received_us, dedupe_key FROM events WHERE idx IS NULL AND"
                            " dedupe_key IS NOT NULL AND received_us >= ?", (since_us,))
    for received_us, idx in conn.execute("SELECT received_us, idx FROM events WHERE idx IS"
                                         " NOT NULL AND received_us >= ?", (since_us,)):
        for key in batch_index(idx)[INDEXED.index("dedupe_key")]:
            if key is not None:
                yield received_us, key


