"""Per-user-day counters, kept up to date as events are committed: the fast path of the report.

For each (account, UTC receipt day, user) the table ``user_day`` holds the 43 counted/summed
metrics and the number of events; ``interactions`` holds the distinct (conversationId, messageId)
pairs behind ``Chat_MessagesInteracted``. The landing writer adds each committed group's amounts
to :class:`Counters` and writes them out every few tens of milliseconds in one transaction that
also advances a **watermark**: the highest event ``seq`` whose amounts are in the tables. So the
ack path stays one statement, and a crash loses nothing: whatever lies past the watermark is
recomputed from the raw events, on open (:func:`recover`) and by readers (:func:`read_day`).

Every cell saturates at :data:`~.metrics.SUM_MAX` instead of overflowing SQLite's INTEGER (an
overflowed sum would turn REAL, or fail every later write of the counters): the validator bounds
each amount (:data:`~.metrics.AMOUNT_MAX`), and cells written before that bound are recounted
once from the raw events, clamped like the DuckDB rebuild clamps them (:func:`recover`).
"""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from . import breakdown
from .breakdown import Dim
from .metrics import AMOUNT_MAX, DISTINCT, EXTRA, METRICS, SUM_MAX, deltas

N = len(METRICS) + 1  # the metrics, then the number of events
COLS = [f"c{i}" for i in range(N)]
#: the breakdown table's cells: the same, then the dashboard's EXTRA figures
NX = N + len(EXTRA)
DCOLS = [f"d{i}" for i in range(NX)]
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS user_day (
    account_id TEXT NOT NULL,
    day        INTEGER NOT NULL,
    user_id    TEXT NOT NULL,
    {", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in COLS)},
    PRIMARY KEY (account_id, day, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS user_day_dim (
    account_id TEXT NOT NULL,
    day        INTEGER NOT NULL,
    user_id    TEXT NOT NULL,
    ide        TEXT NOT NULL,
    language   TEXT NOT NULL,
    {", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in DCOLS)},
    PRIMARY KEY (account_id, day, user_id, ide, language)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS interactions (
    account_id      TEXT NOT NULL,
    day             INTEGER NOT NULL,
    user_id         TEXT NOT NULL,
    conversation_id TEXT,
    message_id      TEXT,
    ide             TEXT,  -- the (ide, language) of the first event with this pair
    language        TEXT,
    UNIQUE (account_id, day, user_id, conversation_id, message_id)
);
CREATE TABLE IF NOT EXISTS counters_meta (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    watermark INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters_meta VALUES (1, 0);
CREATE TABLE IF NOT EXISTS counters_bounded (id INTEGER PRIMARY KEY CHECK (id = 1));
"""
UPSERT = (f"INSERT INTO user_day (account_id, day, user_id, {', '.join(COLS)}) VALUES "
          f"({', '.join('?' * (N + 3))}) ON CONFLICT (account_id, day, user_id) DO UPDATE SET "
          + ", ".join(f"{c} = CASE WHEN {c} > {SUM_MAX} - excluded.{c} THEN {SUM_MAX}"
                      f" ELSE {c} + excluded.{c} END" for c in COLS))
UPSERT_DIM = (f"INSERT INTO user_day_dim (account_id, day, user_id, ide, language, "
              f"{', '.join(DCOLS)}) VALUES ({', '.join('?' * (NX + 5))}) ON CONFLICT "
              "(account_id, day, user_id, ide, language) DO UPDATE SET "
              + ", ".join(f"{c} = CASE WHEN {c} > {SUM_MAX} - excluded.{c} THEN {SUM_MAX}"
                          f" ELSE {c} + excluded.{c} END" for c in DCOLS))
INTERACT = ("INSERT OR IGNORE INTO interactions (account_id, day, user_id, conversation_id,"
            " message_id, ide, language) VALUES (?, ?, ?, ?, ?, ?, ?)")
Key = tuple[str, int, str]  # account, day, user
DimKey = tuple[str, int, str, str, str]  # account, day, user, ide, language
Interaction = tuple[str, int, str, str | None, str | None]
K = TypeVar("K")


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a landing database of an earlier version up to this schema (idempotent)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(interactions)")}
    for column in ("ide", "language"):
        if column not in have:
            conn.execute(f"ALTER TABLE interactions ADD COLUMN {column} TEXT")


@dataclass
class GroupCounts:
    """What one committed group adds: per (account, day, user) amounts, the same per (IDE,
    language) too, and the interactions (each with the dimensions of its first event)."""

    cells: dict[Key, list[int]] = field(default_factory=dict)
    dims: dict[DimKey, list[int]] = field(default_factory=dict)
    interactions: dict[Interaction, Dim] = field(default_factory=dict)

    def add(self, key: Key, amounts: Iterable[tuple[int, int]],
            interaction: tuple[str | None, ...] | None,
            dim: Dim = breakdown.UNRECORDED) -> None:
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = [0] * N
        dkey = (*key, *dim)
        dcell = self.dims.get(dkey)
        if dcell is None:
            dcell = self.dims[dkey] = [0] * NX
        for index, amount in amounts:
            if index < N:  # the EXTRA figures are kept in the breakdown only
                cell[index] += amount
            dcell[index] += amount
        cell[-1] += 1
        dcell[N - 1] += 1
        if interaction is not None:
            self.interactions.setdefault((*key, interaction[0], interaction[1]), dim)

    def merge(self, other: GroupCounts) -> None:
        """Add ``other`` in; ``other`` must not be used afterwards (its lists are taken over)."""
        _merge(self.cells, other.cells)
        _merge(self.dims, other.dims)
        for pair, dim in other.interactions.items():
            self.interactions.setdefault(pair, dim)


def _merge(mine: dict[K, list[int]], theirs: dict[K, list[int]]) -> None:
    for key, cell in theirs.items():
        have = mine.get(key)
        if have is None:
            mine[key] = cell
        else:
            have[:] = map(operator.add, have, cell)


def amounts_of(member: str, body: bytes, ide_category: str | None,
               ) -> tuple[tuple[tuple[int, int], ...], tuple[str | None, ...] | None, Dim]:
    """The amounts of a stored event, from its raw body (recovery and readers), and the
    dimensions it is counted under. Not validated again: an event stored under older limits
    counts as the rebuild counts it (clamped)."""
    try:
        event: Any = orjson.loads(body)["telemetryEvent"][member]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        event = None
    if not isinstance(event, dict):  # cannot happen for a stored event; count it as active
        return (), None, (breakdown.ide_of(ide_category), breakdown.NONE)
    return (*deltas(member, event, ide_category), breakdown.dim_of(event, ide_category))


def saturated(cell: list[int]) -> list[int]:
    """``cell`` with every value at most :data:`~.metrics.SUM_MAX` (a SQLite INTEGER)."""
    return [v if v <= SUM_MAX else SUM_MAX for v in cell]


class Counters:
    """The amounts committed but not yet written out; used under the landing writer's lock."""

    def __init__(self) -> None:
        self.pending = GroupCounts()
        self.seq = 0  # the highest committed seq whose amounts are in ``pending`` or written

    def add(self, group: GroupCounts, last_seq: int) -> None:
        self.pending.merge(group)
        self.seq = max(self.seq, last_seq)

    def flush(self, conn: sqlite3.Connection) -> None:
        """Write the pending amounts and the watermark in one transaction (kept on failure)."""
        if not self.pending.cells and not self.pending.interactions:  # dims go with cells
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            write(conn, self.pending, self.seq)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.pending = GroupCounts()


def write(conn: sqlite3.Connection, counts: GroupCounts, watermark: int) -> None:
    conn.executemany(UPSERT, [(*key, *saturated(cell)) for key, cell in counts.cells.items()])
    conn.executemany(UPSERT_DIM, [(*key, *saturated(cell))
                                  for key, cell in counts.dims.items()])
    conn.executemany(INTERACT, [(*pair, *dim) for pair, dim in counts.interactions.items()])
    conn.execute("UPDATE counters_meta SET watermark = max(watermark, ?) WHERE id = 1",
                 (watermark,))


def _tail(conn: sqlite3.Connection, where: str = "", args: tuple[object, ...] = (),
          ) -> tuple[GroupCounts, int]:
    """The amounts of the events past the watermark (optionally only some of them)."""
    watermark = int(conn.execute("SELECT watermark FROM counters_meta").fetchone()[0])
    counts, last = GroupCounts(), watermark
    for seq, account, user, received_us, member, ide, body in conn.execute(
            "SELECT seq, account_id, user_id, received_us, member, ide_category, body"
            f" FROM events WHERE seq > ? {where} ORDER BY seq", (watermark, *args)):
        amounts, interaction, dim = amounts_of(member, body, ide)
        counts.add((account, received_us // 86_400_000_000, user), amounts, interaction, dim)
        last = seq
    return counts, last


def _recount_unbounded(conn: sqlite3.Connection) -> None:
    """Once per database: recount from the raw events (amounts clamped) the cells that hold more
    than an event may add, written before amounts were bounded: a sum that overflowed to REAL,
    or one the rebuild, which clamps each amount, would not give."""
    if conn.execute("SELECT 1 FROM counters_bounded").fetchone():
        return
    big = " OR ".join(f"{c} > {AMOUNT_MAX}" for c in COLS[:-1])
    keys = conn.execute(f"SELECT account_id, day, user_id FROM user_day WHERE {big}").fetchall()
    watermark = int(conn.execute("SELECT watermark FROM counters_meta").fetchone()[0])
    for account, day, user in keys:
        for table in ("user_day", "user_day_dim"):
            conn.execute(f"DELETE FROM {table} WHERE account_id = ? AND day = ? AND user_id = ?",
                         (account, day, user))
        counts = GroupCounts()
        for member, ide, body in conn.execute(
                "SELECT member, ide_category, body FROM events WHERE seq <= ? AND account_id = ?"
                " AND user_id = ? AND received_us >= ? AND received_us < ?",
                (watermark, account, user, day * 86_400_000_000, (day + 1) * 86_400_000_000)):
            amounts, _, dim = amounts_of(member, body, ide)
            counts.add((account, day, user), amounts, None, dim)
        write(conn, counts, watermark)
    conn.execute("INSERT INTO counters_bounded VALUES (1)")


def recover(conn: sqlite3.Connection) -> int:
    """Bring the counters up to the last committed event (after a crash); returns how many.
    The tail is read and written in one write transaction, so nothing counts it twice."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        _recount_unbounded(conn)
        counts, last = _tail(conn)
        n = sum(cell[-1] for cell in counts.cells.values())
        if n:
            write(conn, counts, last)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return n


def read_day(conn: sqlite3.Connection, account_id: str, day: int,
             ) -> tuple[list[tuple[str, list[int]]], int]:
    """Every user's metrics (METRICS order) for the day, and its number of events."""
    conn.execute("BEGIN")  # one snapshot for the tables and the tail
    try:
        cells = {row[0]: list(row[1:]) for row in conn.execute(
            f"SELECT user_id, {', '.join(COLS)} FROM user_day WHERE account_id = ? AND day = ?",
            (account_id, day))}
        seen = {(u, c, m) for u, c, m in conn.execute(
            "SELECT user_id, conversation_id, message_id FROM interactions"
            " WHERE account_id = ? AND day = ?", (account_id, day))}
        start = day * 86_400_000_000
        tail, _ = _tail(conn, "AND account_id = ? AND +received_us >= ? AND +received_us < ?",
                        (account_id, start, start + 86_400_000_000))
    finally:
        conn.execute("COMMIT")
    for (_, _, user), cell in tail.cells.items():
        mine = cells.setdefault(user, [0] * N)
        for i, v in enumerate(cell):
            mine[i] += v
    seen |= {(u, c, m) for _, _, u, c, m in tail.interactions}
    distinct: dict[str, int] = {}
    for user, _, _ in seen:
        distinct[user] = distinct.get(user, 0) + 1
    rows = []
    for user in sorted(cells):
        values = [int(v) for v in saturated(cells[user][:-1])]
        for index in DISTINCT:
            values[index] = distinct.get(user, 0)
        rows.append((user, values))
    return rows, sum(cell[-1] for cell in cells.values())


def read_day_cells(conn: sqlite3.Connection, account_id: str, day: int, order: list[int],
                   ) -> tuple[list[tuple[str, str]], int] | None:
    """The fast path of :func:`read_day`: per user (code-point order) the metric cells already
    joined by commas in ``order`` by SQLite, and the number of events; None when some of the
    day's events lie past the watermark (then :func:`read_day` counts them)."""
    start = day * 86_400_000_000
    cells = "printf('{}', {})".format(  # one call per row: far cheaper than 43 times ||
        ",".join(["%d"] * len(order)),
        ", ".join("coalesce(i.n, 0)" if index in DISTINCT else f"u.c{index}" for index in order))
    conn.execute("BEGIN")
    try:
        watermark = conn.execute("SELECT watermark FROM counters_meta").fetchone()[0]
        if conn.execute(
                "SELECT 1 FROM events WHERE seq > ? AND account_id = ? AND +received_us >= ?"
                " AND +received_us < ? LIMIT 1",  # + : walk seq past the watermark, not the day
                (watermark, account_id, start, start + 86_400_000_000)).fetchone():
            return None
        rows = conn.execute(
            f"SELECT u.user_id, {cells}, u.c{N - 1} FROM user_day u LEFT JOIN ("
            "  SELECT user_id, count(*) AS n FROM interactions"
            "  WHERE account_id = ? AND day = ? GROUP BY user_id) i ON i.user_id = u.user_id"
            " WHERE u.account_id = ? AND u.day = ? ORDER BY u.user_id",
            (account_id, day, account_id, day)).fetchall()
    finally:
        conn.execute("COMMIT")
    return [(user, text) for user, text, _ in rows], sum(n for _, _, n in rows)
