"""Per-user-day counters, kept up to date as events are committed: the fast path of the report.

For each (account, UTC receipt day, user) the table ``user_day`` holds the 43 counted/summed
metrics and the number of events; ``interactions`` holds the distinct (conversationId, messageId)
pairs behind ``Chat_MessagesInteracted``. The landing writer adds each committed group's amounts
to :class:`Counters` and writes them out once a second in one transaction that
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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from . import breakdown
from .breakdown import Dim
from .logrows import scan
from .metrics import AMOUNT_MAX, DISTINCT, EXTRA, METRICS, SUM_MAX, deltas

N = len(METRICS) + 1  # the metrics, then the number of events
EVENTS = N - 1
COLS = [f"c{i}" for i in range(N)]  # what the report reads
#: every cell a counter keeps: the report's, then the dashboard's EXTRA figures
NX = N + len(EXTRA)
ALL = [f"c{i}" for i in range(NX)]
DCOLS = [f"d{i}" for i in range(NX)]  # the same cells in the breakdown table
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS user_day (
    account_id TEXT NOT NULL,
    day        INTEGER NOT NULL,
    user_id    TEXT NOT NULL,
    {", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in ALL)},
    PRIMARY KEY (account_id, day, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dim_day (
    account_id TEXT NOT NULL,
    day        INTEGER NOT NULL,
    ide        TEXT NOT NULL,
    language   TEXT NOT NULL,
    {", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in DCOLS)},
    PRIMARY KEY (account_id, day, ide, language)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dim_users (
    account_id TEXT NOT NULL,
    day        INTEGER NOT NULL,
    ide        TEXT NOT NULL,
    language   TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    PRIMARY KEY (account_id, day, ide, language, user_id)
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


def _upsert(table: str, key: list[str], cols: list[str]) -> str:
    """Add a row's cells to the table's row of the same key (saturating at SUM_MAX)."""
    return (f"INSERT INTO {table} ({', '.join(key + cols)}) VALUES "
            f"({', '.join('?' * (len(key) + len(cols)))}) ON CONFLICT ({', '.join(key)})"
            " DO UPDATE SET " + ", ".join(f"{c} = CASE WHEN {c} > {SUM_MAX} - excluded.{c} THEN"
                                          f" {SUM_MAX} ELSE {c} + excluded.{c} END" for c in cols))


UPSERT = _upsert("user_day", ["account_id", "day", "user_id"], ALL)
#: the breakdown: per account, day, IDE and language (not per user: a few rows per group, so
#: it costs the writer little), and which users were active in each
UPSERT_DIM = _upsert("dim_day", ["account_id", "day", "ide", "language"], DCOLS)
PRESENT = "INSERT OR IGNORE INTO dim_users VALUES (?, ?, ?, ?, ?)"
INTERACT = ("INSERT OR IGNORE INTO interactions (account_id, day, user_id, conversation_id,"
            " message_id, ide, language) VALUES (?, ?, ?, ?, ?, ?, ?)")
Key = tuple[str, int, str]  # account, day, user
DimKey = tuple[str, int, str, str]  # account, day, ide, language
Presence = tuple[str, int, str, str, str]  # account, day, ide, language, user
Interaction = tuple[str, int, str, str | None, str | None]
K = TypeVar("K")


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a landing database of an earlier version up to this schema (idempotent)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(interactions)")}
    for column in ("ide", "language"):
        if column not in have:
            conn.execute(f"ALTER TABLE interactions ADD COLUMN {column} TEXT")
    have = {row[1] for row in conn.execute("PRAGMA table_info(user_day)")}
    for column in ALL:
        if column not in have:
            conn.execute(f"ALTER TABLE user_day ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")


@dataclass
class GroupCounts:
    """What one committed group adds: per (account, day, user) amounts, the same per (IDE,
    language) too, which users were active in each, and the interactions (each with the
    dimensions of its first event)."""

    cells: dict[Key, list[int]] = field(default_factory=dict)
    dims: dict[DimKey, list[int]] = field(default_factory=dict)
    present: set[Presence] = field(default_factory=set)
    interactions: dict[Interaction, Dim] = field(default_factory=dict)

    def add(self, key: Key, amounts: Iterable[tuple[int, int]],
            interaction: tuple[str | None, ...] | None,
            dim: Dim = breakdown.UNRECORDED) -> None:
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = [0] * NX
        dkey = (key[0], key[1], *dim)
        dcell = self.dims.get(dkey)
        if dcell is None:
            dcell = self.dims[dkey] = [0] * NX
        for index, amount in amounts:
            cell[index] += amount
            dcell[index] += amount
        cell[EVENTS] += 1
        dcell[EVENTS] += 1
        self.present.add((*dkey, key[2]))
        if interaction is not None:
            self.interactions.setdefault((*key, interaction[0], interaction[1]), dim)

    def add_batch(self, key: Key, counts: BatchCounts) -> None:
        """Add the events of one batch row (one user-day), as :class:`BatchCounter` sums them:
        the same amounts as :meth:`add` of each event."""
        per_dim, interactions = counts
        for conversation, message, dim in interactions:
            self.interactions.setdefault((*key, conversation, message), dim)
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = [0] * NX
        for dim, dcell in per_dim.items():
            dkey = (key[0], key[1], *dim)
            have = self.dims.get(dkey)
            if have is None:
                self.dims[dkey] = list(dcell)
            else:
                have[:] = map(operator.add, have, dcell)
            cell[:] = map(operator.add, cell, dcell)
            self.present.add((*dkey, key[2]))

    def merge(self, other: GroupCounts) -> None:
        """Add ``other`` in; ``other`` must not be used afterwards (its lists are taken over)."""
        merge_cells(self.cells, other.cells)
        merge_cells(self.dims, other.dims)
        self.present |= other.present
        for pair, dim in other.interactions.items():
            self.interactions.setdefault(pair, dim)


def merge_cells(mine: dict[K, list[int]], theirs: dict[K, list[int]]) -> None:
    """Add ``theirs`` cells into ``mine``, key by key (``theirs`` lists are taken over)."""
    for key, cell in theirs.items():
        have = mine.get(key)
        if have is None:
            mine[key] = cell
        else:
            have[:] = map(operator.add, have, cell)


def event_of(member: str, body: bytes) -> dict[str, Any] | None:
    """The member object of a stored event's raw body (None: cannot happen for a stored
    event; it is then counted as active, with no amounts)."""
    try:
        event: Any = orjson.loads(body)["telemetryEvent"][member]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return event if isinstance(event, dict) else None


def amounts_of(member: str, body: bytes, ide_category: str | None,
               ) -> tuple[tuple[tuple[int, int], ...], tuple[str | None, ...] | None, Dim]:
    """The amounts of a stored event, from its raw body (recovery and readers), and the
    dimensions it is counted under. Not validated again: an event stored under older limits
    counts as the rebuild counts it (clamped)."""
    return event_amounts(member, event_of(member, body), ide_category)


def event_amounts(member: str, event: Mapping[str, Any] | None, ide_category: str | None,
                  ) -> tuple[tuple[tuple[int, int], ...], tuple[str | None, ...] | None, Dim]:
    """:func:`amounts_of` of an event already parsed (its member object, or None)."""
    if event is None:
        return (), None, (breakdown.ide_of(ide_category), breakdown.NONE)
    return (*deltas(member, event, ide_category), breakdown.dim_of(event, ide_category))


#: what a batch of one user's events adds, before its day is known: per (IDE, language) the
#: amounts (the cells of :class:`GroupCounts`, events included), and its interactions in order
BatchCounts = tuple[dict[Dim, list[int]], list[tuple[str | None, str | None, Dim]]]


class BatchCounter:
    """Sums :data:`BatchCounts` event by event (as each is parsed: nothing is kept of the
    events themselves, so a batch of any size holds no more than its few cells)."""

    def __init__(self) -> None:
        self.per_dim: dict[Dim, list[int]] = {}
        self.interactions: list[tuple[str | None, str | None, Dim]] = []

    def add(self, member: str, event: Mapping[str, Any] | None, ide: str | None) -> None:
        amounts, interaction, dim = event_amounts(member, event, ide)
        dcell = self.per_dim.get(dim)
        if dcell is None:
            dcell = self.per_dim[dim] = [0] * NX
        for index, amount in amounts:
            dcell[index] += amount
        dcell[EVENTS] += 1
        if interaction is not None:
            self.interactions.append((interaction[0], interaction[1], dim))

    def counts(self) -> BatchCounts:
        return self.per_dim, self.interactions


def lines_counts(members: Sequence[str], ides: Sequence[str | None],
                 lines: Sequence[bytes]) -> BatchCounts:
    """The :data:`BatchCounts` of a batch's stored lines."""
    counter = BatchCounter()
    for member, ide, line in zip(members, ides, lines, strict=True):
        counter.add(member, event_of(member, line), ide)
    return counter.counts()


def saturated(cell: list[int]) -> list[int]:
    """``cell`` with every value at most :data:`~.metrics.SUM_MAX` (a SQLite INTEGER)."""
    return [v if v <= SUM_MAX else SUM_MAX for v in cell]


class Counters:
    """The amounts committed but not yet written out; used under the landing writer's lock."""

    #: most (account, day, IDE, language, user) keys remembered as already in ``dim_users``
    KNOWN_MAX = 1_000_000

    def __init__(self) -> None:
        self.pending = GroupCounts()
        self.seq = 0  # the highest committed seq whose amounts are in ``pending`` or written
        #: presence keys this writer has committed: a user's next events in the same IDE and
        #: language need no INSERT OR IGNORE (the breakdown's cost to the writer, halved)
        self.known: set[Presence] = set()

    def add(self, group: GroupCounts, last_seq: int) -> None:
        self.pending.merge(group)
        self.seq = max(self.seq, last_seq)

    def flush(self, conn: sqlite3.Connection) -> None:
        """Write the pending amounts and the watermark in one transaction (kept on failure)."""
        if not self.pending.cells and not self.pending.interactions:  # dims go with cells
            return
        self.pending.present -= self.known
        conn.execute("BEGIN IMMEDIATE")
        try:
            write(conn, self.pending, self.seq)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._remember(self.pending.present)
        self.pending = GroupCounts()

    def _remember(self, present: set[Presence]) -> None:
        self.known |= present
        if len(self.known) > self.KNOWN_MAX:  # keep the last two days' keys, or none
            newest = max(key[1] for key in self.known)
            self.known = {key for key in self.known if key[1] >= newest - 1}
            if len(self.known) > self.KNOWN_MAX:
                self.known = set()


def write(conn: sqlite3.Connection, counts: GroupCounts, watermark: int) -> None:
    conn.executemany(UPSERT, [(*key, *saturated(cell)) for key, cell in counts.cells.items()])
    conn.executemany(UPSERT_DIM, [(*key, *saturated(cell))
                                  for key, cell in counts.dims.items()])
    conn.executemany(PRESENT, list(counts.present))
    conn.executemany(INTERACT, [(*pair, *dim) for pair, dim in counts.interactions.items()])
    conn.execute("UPDATE counters_meta SET watermark = max(watermark, ?) WHERE id = 1",
                 (watermark,))


def _tail(conn: sqlite3.Connection, where: str = "", args: tuple[object, ...] = (),
          ) -> tuple[GroupCounts, int]:
    """The amounts of the events past the watermark (optionally only some of them)."""
    watermark = int(conn.execute("SELECT watermark FROM counters_meta").fetchone()[0])
    counts, last = GroupCounts(), watermark
    for chunk in scan(conn, ("seq", "account_id", "user_id", "received_us", "member",
                             "ide_category", "body"), f"WHERE seq > ? {where}",
                      (watermark, *args)):
        for seq, account, user, received_us, member, ide, body in chunk:
            amounts, interaction, dim = amounts_of(member, body, ide)
            counts.add((account, received_us // 86_400_000_000, user), amounts, interaction,
                       dim)
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
        conn.execute("DELETE FROM user_day WHERE account_id = ? AND day = ? AND user_id = ?",
                     (account, day, user))
        counts = GroupCounts()
        for chunk in scan(conn, ("member", "ide_category", "body"),
                          "WHERE seq <= ? AND account_id = ? AND user_id = ? AND received_us >= ?"
                          " AND received_us < ?", (watermark, account, user, day * 86_400_000_000,
                                                   (day + 1) * 86_400_000_000)):
            for member, ide, body in chunk:
                amounts, _ = amounts_of(member, body, ide)[:2]
                counts.add((account, day, user), amounts, None)
        counts.dims.clear()  # events of before the breakdown: shown there as not recorded
        counts.present.clear()
        write(conn, counts, watermark)
    conn.execute("INSERT INTO counters_bounded VALUES (1)")


def recover(conn: sqlite3.Connection) -> int:
    """Bring the counters up to the last committed event (after a crash); returns how many.
    The tail is read and written in one write transaction, so nothing counts it twice."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        _recount_unbounded(conn)
        counts, last = _tail(conn)
        n = sum(cell[EVENTS] for cell in counts.cells.values())
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
        for i, v in enumerate(cell[:N]):
            mine[i] += v
    seen |= {(u, c, m) for _, _, u, c, m in tail.interactions}
    distinct: dict[str, int] = {}
    for user, _, _ in seen:
        distinct[user] = distinct.get(user, 0) + 1
    rows = []
    for user in sorted(cells):
        values = [int(v) for v in saturated(cells[user][:EVENTS])]
        for index in DISTINCT:
            values[index] = distinct.get(user, 0)
        rows.append((user, values))
    return rows, sum(cell[EVENTS] for cell in cells.values())


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
