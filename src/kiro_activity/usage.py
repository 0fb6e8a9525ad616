"""Per-user-day usage at the grain of the dashboard's breakdown, live or as a day's snapshot.

The dashboard reads the same counters the report is made from (:mod:`.counters`): the
breakdown table ``user_day_dim`` (per account, day, user, IDE and language), the interactions
behind the one distinct-count metric, and whatever lies past the counters' watermark. Its rows
sum, per user, to the report's row: counters kept before the breakdown existed show up as the
dimension value ``not recorded`` (the difference from ``user_day``), so nothing is lost or
counted twice.

A closed day no longer changes, so once it has settled (closed for :data:`GRACE_SECONDS`, and
every event of it counted) its rows are written once to a Parquet snapshot,
``DATA_DIR/usage/<account>/<day>.<kind>.v2.parquet`` (the rows, one per user, and the sums per
IDE and language), that DuckDB then reads at columnar speed. A
snapshot is a cache of the counters: deleting the folder only costs the time to write it again.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from . import breakdown, counters, landing
from .aggregate import DAY_US, day_window
from .config import Config
from .metrics import DISTINCT, EXTRA, METRICS

VERSION = 2
GRACE_SECONDS = 300.0
#: the figures of a row, in the order of the breakdown table's cells
FIGURES = [m.name for m in METRICS] + ["events"] + [m.name for m in EXTRA]
SCHEMA = pa.schema([("day", pa.date32()), ("user_id", pa.string()), ("ide", pa.string()),
                    ("language", pa.string()), *[(f, pa.int64()) for f in FIGURES]])
_NR = breakdown.NOT_RECORDED
_EVENTS = counters.N - 1
_UNCOUNTED = [i for i in range(counters.N) if i not in DISTINCT]  # the cells user_day has
Row = tuple[str, str, str]  # user, ide, language


def snapshot_paths(config: Config, account_id: str, day: date) -> dict[str, Path]:
    folder = config.data_dir / "usage" / account_id
    return {kind: folder / f"{day.isoformat()}.{kind}.v{VERSION}.parquet" for kind in KINDS}


def _day_number(day: date) -> int:
    return day_window(day)[0] // DAY_US


def day_cells(conn: sqlite3.Connection, account_id: str, day: date) -> dict[Row, list[int]]:
    """Every (user, IDE, language) of the account's day with its figures (FIGURES order), read
    in one snapshot of the landing database; per user they sum to the report's row."""
    number = _day_number(day)
    args = (account_id, number)
    conn.execute("BEGIN")
    try:
        rows: dict[Row, list[int]] = {
            (r[0], r[1], r[2]): list(r[3:]) for r in conn.execute(
                f"SELECT user_id, ide, language, {', '.join(counters.DCOLS)} FROM user_day_dim"
                " WHERE account_id = ? AND day = ?", args)}
        for user, ide, language, n in conn.execute(
                "SELECT user_id, coalesce(ide, ?), coalesce(language, ?), count(*)"
                " FROM interactions WHERE account_id = ? AND day = ? GROUP BY 1, 2, 3",
                (_NR, _NR, *args)):
            _cell(rows, (user, ide, language))[DISTINCT[0]] += n
        for user, *rest in conn.execute(_remainder_sql(), (*args, *args)):
            cell = _cell(rows, (user, _NR, _NR))
            for index, amount in zip(_UNCOUNTED, rest, strict=True):
                cell[index] += amount
        _add_tail(conn, rows, account_id, day)
    finally:
        conn.execute("COMMIT")
    return rows


def _cell(rows: dict[Row, list[int]], key: Row) -> list[int]:
    cell = rows.get(key)
    if cell is None:
        cell = rows[key] = [0] * counters.NX
    return cell


def _remainder_sql() -> str:
    """Per user, what ``user_day`` holds beyond the breakdown's sums (counters kept before the
    breakdown existed); only users with a difference."""
    sums = ", ".join(f"sum(d{i}) AS s{i}" for i in _UNCOUNTED)
    diff = ", ".join(f"u.c{i} - coalesce(d.s{i}, 0)" for i in _UNCOUNTED)
    differs = " OR ".join(f"u.c{i} <> coalesce(d.s{i}, 0)" for i in _UNCOUNTED)
    return (f"SELECT u.user_id, {diff} FROM user_day u LEFT JOIN (SELECT user_id, {sums}"
            " FROM user_day_dim WHERE account_id = ? AND day = ? GROUP BY user_id) d"
            " ON d.user_id = u.user_id WHERE u.account_id = ? AND u.day = ?"
            f" AND ({differs})")


def _add_tail(conn: sqlite3.Connection, rows: dict[Row, list[int]], account_id: str,
              day: date) -> None:
    """Add the day's events past the counters' watermark (committed, not yet counted)."""
    start, end = day_window(day)
    tail, _ = counters._tail(conn, "AND account_id = ? AND +received_us >= ?"
                                   " AND +received_us < ?", (account_id, start, end))
    for (_, _, user, ide, language), cell in tail.dims.items():
        mine = _cell(rows, (user, ide, language))
        mine[:] = [a + b for a, b in zip(mine, cell, strict=True)]
    for (_, number, user, conversation, message), (ide, language) in tail.interactions.items():
        known = conn.execute(
            "SELECT 1 FROM interactions WHERE account_id = ? AND day = ? AND user_id = ?"
            " AND conversation_id IS ? AND message_id IS ?",
            (account_id, number, user, conversation, message)).fetchone()
        if known is None:
            _cell(rows, (user, ide, language))[DISTINCT[0]] += 1


def to_table(day: date, rows: dict[Row, list[int]]) -> pa.Table:
    """Rows of one day as Arrow data of :data:`SCHEMA` (users in code-point order)."""
    if not rows:
        return SCHEMA.empty_table()
    keys = sorted(rows)
    columns: list[pa.Array] = [pa.array([day] * len(keys), pa.date32())]
    columns += [pa.array(c, pa.string()) for c in zip(*keys, strict=True)]
    columns += [pa.array(c, pa.int64()) for c in zip(*(rows[k] for k in keys), strict=True)]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def _sums() -> str:
    return ", ".join(f'sum("{f}")::BIGINT AS "{f}"' for f in FIGURES)


#: the three tables of a day, derived from its rows at the breakdown's grain ("dims"): one row
#: per user ("users": active users are its rows), and the sums per IDE and language
#: ("dimsums"); the overview reads the small ones, a user's page the rows of that user
DERIVED = {
    "users": f"SELECT day, user_id, {_sums()} FROM dims GROUP BY day, user_id ORDER BY user_id",
    "dimsums": f"SELECT day, ide, language, {_sums()} FROM dims GROUP BY day, ide, language"
               " ORDER BY ide, language",
}
KINDS = ("dims", "dimsums", "users")  # the order they are written in: users last


def tables_of(dims: pa.Table) -> dict[str, pa.Table]:
    """The day's three tables from its rows at the breakdown's grain."""
    con = duckdb.connect(config={"threads": 1})
    try:
        con.register("dims", dims)
        out = {"dims": dims}
        for kind, sql in DERIVED.items():
            out[kind] = con.sql(sql).to_arrow_table()
        return out
    finally:
        con.close()


@functools.cache
def empty() -> dict[str, pa.Table]:
    """The three tables of a day without activity (their schemas)."""
    return tables_of(SCHEMA.empty_table())


def settled(conn: sqlite3.Connection, account_id: str, day: date, now: float) -> bool:
    """Whether the day can no longer change: closed for a while, every event of it counted."""
    start, end = day_window(day)
    if now * 1_000_000 < end + GRACE_SECONDS * 1_000_000:
        return False
    watermark = conn.execute("SELECT watermark FROM counters_meta").fetchone()[0]
    return conn.execute(
        "SELECT 1 FROM events WHERE seq > ? AND account_id = ? AND +received_us >= ?"
        " AND +received_us < ? LIMIT 1", (watermark, account_id, start, end)).fetchone() is None


_write_lock = threading.Lock()


def write_snapshot(paths: dict[str, Path], tables: dict[str, pa.Table]) -> None:
    """Write a day's tables, each atomically and the per-user one last: a day whose ``users``
    file exists is complete."""
    for kind in KINDS:
        path = paths[kind]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        # small row groups: a user's page reads only the groups that can hold that user
        pq.write_table(tables[kind], tmp, compression="zstd", row_group_size=4096)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)


def _snapshot(config: Config, conn: sqlite3.Connection, account_id: str, day: date,
              now: float) -> tuple[dict[str, Path] | None, dict[str, pa.Table] | None]:
    """The day's snapshot files (written now if the day has settled), or its live tables
    (None for a day without activity)."""
    paths = snapshot_paths(config, account_id, day)
    if paths["users"].exists():
        return paths, None
    dims = to_table(day, day_cells(conn, account_id, day))
    if not dims.num_rows:
        return None, None  # an empty day costs nothing to read again: no file for it
    tables = tables_of(dims)
    if not settled(conn, account_id, day, now):
        return None, tables
    with _write_lock:
        if not paths["users"].exists():
            write_snapshot(paths, tables)
    return paths, None


def warm(config: Config, account_id: str, days: list[date], now: float) -> int:
    """Write the snapshots of the settled ``days`` that have none yet; returns how many
    (the schedule does this after each day closes, so that a dashboard never waits for it)."""
    if not config.landing_db.exists():
        return 0
    conn = landing.connect(config.landing_db, readonly=True)
    written = 0
    try:
        for day in days:
            if snapshot_paths(config, account_id, day)["users"].exists() or not settled(
                    conn, account_id, day, now):
                continue
            paths, _ = _snapshot(config, conn, account_id, day, now)
            written += paths is not None
    finally:
        conn.close()
    return written


@dataclass
class Sources:
    """A range's usage: per kind, the snapshot files and the live tables."""

    files: dict[str, list[Path]] = field(default_factory=lambda: {k: [] for k in KINDS})
    live: dict[str, list[pa.Table]] = field(default_factory=lambda: {k: [] for k in KINDS})


def sources(config: Config, account_id: str, days: list[date], now: float) -> Sources:
    """The days' usage: snapshot files for settled days (written now when missing), and live
    tables for the others."""
    found = Sources()
    if not config.landing_db.exists():
        return found
    conn = landing.connect(config.landing_db, readonly=True)
    try:
        for day in days:
            paths, tables = _snapshot(config, conn, account_id, day, now)
            for kind in KINDS:
                if paths is not None:
                    found.files[kind].append(paths[kind])
                elif tables is not None:
                    found.live[kind].append(tables[kind])
    finally:
        conn.close()
    return found


class ColumnCache:
    """Columns of snapshot files kept in memory, least recently used out first, within a byte
    budget: a snapshot never changes once written, and opening ninety files for every view of
    a page costs more than reading their few columns."""

    def __init__(self, budget: int = 256 << 20) -> None:
        self.budget = budget
        self._tables: OrderedDict[tuple[Path, int, int, tuple[str, ...]], pa.Table] = (
            OrderedDict())
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, path: Path, columns: tuple[str, ...] | None = None) -> pa.Table:
        stat = path.stat()  # a file written again (the folder deleted) is another entry
        key = (path, stat.st_mtime_ns, stat.st_size, columns or ())
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
                return table
        table = pq.read_table(path, columns=list(columns) if columns else None)
        with self._lock:
            if key not in self._tables and table.nbytes <= self.budget:
                self._tables[key] = table
                self._bytes += table.nbytes
                while self._bytes > self.budget:
                    _, dropped = self._tables.popitem(last=False)
                    self._bytes -= dropped.nbytes
        return table

    def concat(self, paths: list[Path], columns: tuple[str, ...] | None = None,
               ) -> pa.Table | None:
        tables = [self.get(p, columns) for p in paths]
        return pa.concat_tables(tables, promote_options="default") if tables else None


CACHE = ColumnCache()
