"""A day's usage for the dashboard, read from the counters, live or as the day's snapshot.

The dashboard reads the same counters the report is made from (:mod:`.counters`): per user
``user_day`` (the report's row, and the dashboard's EXTRA figures), the breakdown per IDE and
language (``dim_day``, and ``dim_users``: who was active in each), the interactions behind the
one distinct-count metric, and whatever lies past the counters' watermark. The breakdown sums
to the per-user rows: what the counters hold beyond it (kept before it existed) shows up as the
dimension value ``not recorded``, so nothing is lost or counted twice.

A closed day no longer changes, so once it has settled (closed for :data:`GRACE_SECONDS`, and
every event of it counted) its three tables are written once to Parquet snapshots,
``DATA_DIR/usage/<account>/<day>.<kind>.v3.parquet``, that DuckDB then reads at columnar speed.
A snapshot is a cache of the counters: deleting the folder only costs the time to write it
again.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from . import breakdown, counters, landing
from .aggregate import DAY_US, day_window
from .config import Config
from .metrics import DISTINCT, EXTRA, METRICS

VERSION = 3
GRACE_SECONDS = 300.0
#: the figures of a row, in the order of the counters' cells
FIGURES = [m.name for m in METRICS] + ["events"] + [m.name for m in EXTRA]
_FIGS = [(f, pa.int64()) for f in FIGURES]
_DAY = ("day", pa.date32())
#: a day's three tables: one row per user; the sums per IDE and language; which users were
#: active in each IDE and language
SCHEMAS = {
    "users": pa.schema([_DAY, ("user_id", pa.string()), *_FIGS]),
    "dimsums": pa.schema([_DAY, ("ide", pa.string()), ("language", pa.string()), *_FIGS]),
    "dimusers": pa.schema([_DAY, ("ide", pa.string()), ("language", pa.string()),
                           ("user_id", pa.string())]),
}
KINDS = ("dimsums", "dimusers", "users")  # the order they are written in: users last
_NR = breakdown.NOT_RECORDED
_D = DISTINCT[0]
_UNCOUNTED = [i for i in range(counters.NX) if i != _D]  # the cells the tables hold
Cells = dict[Any, list[int]]


@dataclass
class Day:
    """A day's usage, read from the counters: per user, per (IDE, language), and who."""

    users: Cells = field(default_factory=dict)  # user -> cells
    dims: Cells = field(default_factory=dict)  # (ide, language) -> cells
    present: set[tuple[str, str, str]] = field(default_factory=set)  # (ide, language, user)
    settled: bool = False  # no longer changes (see settled), as of the same read


def snapshot_paths(config: Config, account_id: str, day: date) -> dict[str, Path]:
    folder = config.data_dir / "usage" / account_id
    return {kind: folder / f"{day.isoformat()}.{kind}.v{VERSION}.parquet" for kind in KINDS}


def _cell(cells: Cells, key: Any) -> list[int]:
    cell = cells.get(key)
    if cell is None:
        cell = cells[key] = [0] * counters.NX
    return cell


def _add(cells: Cells, key: Any, values: Any) -> None:
    mine = _cell(cells, key)
    mine[:] = [a + b for a, b in zip(mine, values, strict=True)]


def read_day(conn: sqlite3.Connection, account_id: str, day: date, now: float = 0.0) -> Day:
    """The account's day from the counters, in one snapshot of the landing database: per user
    the report's row (and the EXTRA figures), and the breakdown, which sums to the same: what
    the counters hold beyond the breakdown (kept before it existed) is ``not recorded``."""
    number = day_window(day)[0] // DAY_US
    args = (account_id, number)
    d = Day()
    conn.execute("BEGIN")
    try:
        d.users = {r[0]: list(r[1:]) for r in conn.execute(
            f"SELECT user_id, {', '.join(counters.ALL)} FROM user_day"
            " WHERE account_id = ? AND day = ?", args)}
        d.dims = {(r[0], r[1]): list(r[2:]) for r in conn.execute(
            f"SELECT ide, language, {', '.join(counters.DCOLS)} FROM dim_day"
            " WHERE account_id = ? AND day = ?", args)}
        d.present = {(r[0], r[1], r[2]) for r in conn.execute(
            "SELECT ide, language, user_id FROM dim_users WHERE account_id = ? AND day = ?",
            args)}
        for user, ide, language, n in conn.execute(
                "SELECT user_id, coalesce(ide, ?), coalesce(language, ?), count(*)"
                " FROM interactions WHERE account_id = ? AND day = ? GROUP BY 1, 2, 3",
                (_NR, _NR, *args)):
            _cell(d.users, user)[_D] += n
            _cell(d.dims, (ide, language))[_D] += n
            if ide == _NR:
                d.present.add((ide, language, user))
        _add_tail(conn, d, account_id, day)
        d.settled = settled(conn, account_id, day, now)
    finally:
        conn.execute("COMMIT")
    _not_recorded(d)
    return d


def _add_tail(conn: sqlite3.Connection, d: Day, account_id: str, day: date) -> None:
    """Add the day's events past the counters' watermark (committed, not yet counted)."""
    start, end = day_window(day)
    tail, _ = counters._tail(conn, "AND account_id = ? AND +received_us >= ?"
                                   " AND +received_us < ?", (account_id, start, end))
    for (_, _, user), cell in tail.cells.items():
        _add(d.users, user, cell)
    for (_, _, ide, language), cell in tail.dims.items():
        _add(d.dims, (ide, language), cell)
    d.present |= {(ide, language, user) for _, _, ide, language, user in tail.present}
    for (_, number, user, conversation, message), (ide, language) in tail.interactions.items():
        known = conn.execute(
            "SELECT 1 FROM interactions WHERE account_id = ? AND day = ? AND user_id = ?"
            " AND conversation_id IS ? AND message_id IS ?",
            (account_id, number, user, conversation, message)).fetchone()
        if known is None:
            _cell(d.users, user)[_D] += 1
            _cell(d.dims, (ide, language))[_D] += 1


def _not_recorded(d: Day) -> None:
    """What the per-user counters hold beyond the breakdown's sums, as ``not recorded``, and
    the users active with no breakdown row, as active there."""
    totals = [0] * counters.NX
    for cell in d.users.values():
        totals = [a + b for a, b in zip(totals, cell, strict=True)]
    for cell in d.dims.values():
        totals = [a - b for a, b in zip(totals, cell, strict=True)]
    if any(totals[i] for i in _UNCOUNTED):
        _add(d.dims, (_NR, _NR), [0 if i == _D else v for i, v in enumerate(totals)])
    seen = {user for _, _, user in d.present}
    d.present |= {(_NR, _NR, user) for user in d.users if user not in seen}


def _columns(rows: list[tuple[Any, ...]], cells: list[list[int]], day: date,
             schema: pa.Schema) -> pa.Table:
    if not rows:
        return schema.empty_table()
    columns: list[pa.Array] = [pa.array([day] * len(rows), pa.date32())]
    columns += [pa.array(c, pa.string()) for c in zip(*rows, strict=True)]
    if cells:
        columns += [pa.array(c, pa.int64()) for c in zip(*cells, strict=True)]
    return pa.Table.from_arrays(columns, schema=schema)


def tables_of(day: date, d: Day) -> dict[str, pa.Table]:
    """The day's three tables (users and keys in code-point order)."""
    users = sorted(d.users)
    dims = sorted(d.dims)
    present = sorted(d.present)
    return {
        "users": _columns([(u,) for u in users], [d.users[u] for u in users], day,
                          SCHEMAS["users"]),
        "dimsums": _columns(dims, [d.dims[k] for k in dims], day, SCHEMAS["dimsums"]),
        "dimusers": _columns(present, [], day, SCHEMAS["dimusers"]),
    }


def empty() -> dict[str, pa.Table]:
    """The three tables of a day without activity (their schemas)."""
    return {kind: schema.empty_table() for kind, schema in SCHEMAS.items()}


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
    """Write a day's tables, each atomically (a reader sees a whole file or none); a day with
    a file missing is not :func:`complete` and is written again."""
    for kind in KINDS:
        path = paths[kind]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        # small row groups: a user's page reads only the groups that can hold that user
        pq.write_table(tables[kind], tmp, compression="zstd", row_group_size=4096)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    fd = os.open(paths["users"].parent, os.O_RDONLY)  # the renames survive a power loss
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def complete(paths: dict[str, Path]) -> bool:
    """Whether a day's snapshot is all there (a missing file: it is written again)."""
    return all(p.exists() for p in paths.values())


def _snapshot(config: Config, conn: sqlite3.Connection, account_id: str, day: date,
              now: float) -> tuple[dict[str, Path] | None, dict[str, pa.Table] | None]:
    """The day's snapshot files (written now if the day has settled), or its live tables
    (None for a day without activity)."""
    paths = snapshot_paths(config, account_id, day)
    if complete(paths):
        return paths, None
    d = read_day(conn, account_id, day, now)
    tables = tables_of(day, d)
    if not tables["users"].num_rows:
        return None, None  # an empty day costs nothing to read again: no file for it
    if not d.settled:
        return None, tables
    with _write_lock:
        if not complete(paths):
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
            if complete(snapshot_paths(config, account_id, day)) or not settled(
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
