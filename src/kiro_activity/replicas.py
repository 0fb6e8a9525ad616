"""Several replicas of the service sharing one PostgreSQL control database and one archive.

Each replica (``KIRO_ACTIVITY_REPLICA=<name>``, with ``KIRO_ACTIVITY_DATABASE_URL`` and a shared
``KIRO_ACTIVITY_ARCHIVE_FOLDER``) receives telemetry into the landing log of its own data folder
and seals it into the shared archive under its own name (:mod:`.archive`). A report needs every
event of the day, whichever replica received it, and some metrics count distinct values (a
conversation sent to both replicas counts once), so a day is aggregated from the union of the
replicas' raw events, never by adding up per-replica figures:

1. **Registration.** A replica registers when it starts (``replicas.first_seen``) and again at
   every sealing (``seen_at``, shown by ``kiro-activity replicas list``).
2. **Publication.** Once a day is closed on a replica (a minute past its midnight, when the last
   group commit of the day is in and the day's segments are compacted into one per account) and
   its landing log holds no unsealed event of the day, the replica publishes the day in one
   transaction: its final segment of each account (``replica_segments``) and the mark
   ``replica_days``. Those files no longer change; the retention removes them with the day.
3. **Production.** An account's day is produced when every replica registered before the day's
   end and not retired has published it: one DuckDB (or Spark) scan over the union of their
   segments. Until then the schedule tries again every :data:`WAIT_S` seconds.
4. **Claim.** A replica plans and delivers an account's day only while it holds the PostgreSQL
   advisory lock of that (account, day) on its connection, so the other replicas' schedules
   skip it. Were the holder killed, its session ends and the lock with it; the next run of any
   replica finishes the delivery from the ledger (each put is ``If-None-Match: *``, so an object
   that landed already is not written again).

A replica that is gone for good holds back the reports of the days it has not published;
``kiro-activity replicas retire NAME`` tells the others to stop waiting for it (events it had
not sealed are missing from those reports; what it published still counts).
"""

from __future__ import annotations

import logging
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from . import archive, db, logrows, store
from .aggregate import DayAggregate, Once, day_of, day_window, source_day, spark_day
from .config import Config
from .errors import KiroActivityError, UsageError

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")
#: how soon the schedule looks again at a day that some replica has not published yet
WAIT_S = 15.0


class NotSealedYet(KiroActivityError):
    """A day's report waits for replicas that have not published the day."""

    def __init__(self, day: date, waiting: list[str]) -> None:
        super().__init__(f"the report of {day} waits for replica(s) {', '.join(waiting)} to "
                         "seal the day (kiro-activity replicas list; a replica gone for good: "
                         "kiro-activity replicas retire NAME)")
        self.day = day
        self.waiting = waiting


def check(config: Config) -> None:
    """A UsageError unless the replica settings make sense together."""
    if not config.replica:
        return
    if not NAME_RE.fullmatch(config.replica):
        raise UsageError(f"KIRO_ACTIVITY_REPLICA {config.replica!r} is not a replica name: a "
                         "letter, then up to 39 letters, digits, '-' or '_'")
    if not db.is_url(config.database_url):
        raise UsageError("KIRO_ACTIVITY_REPLICA needs KIRO_ACTIVITY_DATABASE_URL: replicas "
                         "share their control state in PostgreSQL")
    if not config.archive_folder:
        raise UsageError("KIRO_ACTIVITY_REPLICA needs KIRO_ACTIVITY_ARCHIVE_FOLDER: the "
                         "archive folder that every replica seals into and reads from")


def register(config: Config, now: float) -> None:
    """Note that this replica is alive (a replica retired by mistake is back with its start)."""
    if not config.replica:
        return
    conn = store.connect(config.control)
    try:
        conn.execute("INSERT INTO replicas (replica_id, first_seen, seen_at) VALUES (?, ?, ?)"
                     " ON CONFLICT (replica_id) DO UPDATE SET seen_at = excluded.seen_at,"
                     " retired_at = NULL", (config.replica, now, now))
    finally:
        conn.close()


def publish(config: Config, now: float) -> list[date]:
    """Publish every closed day of this replica that is final (see the module's docstring):
    the days published now."""
    if not config.replica:
        return []
    settled = day_of(int((now - archive.COMPACT_AFTER_S) * 1_000_000))  # days before it
    control = store.connect(config.control)
    try:
        row = control.execute("SELECT first_seen FROM replicas WHERE replica_id = ?",
                              (config.replica,)).fetchone()
        if row is None:
            return []
        keep_from = datetime.fromtimestamp(now, UTC).date() - timedelta(
            days=config.retention_days)
        with store.transaction(control):  # what left the retention needs no mark any more
            control.execute("DELETE FROM replica_segments WHERE day < ?", (keep_from.isoformat(),))
            control.execute("DELETE FROM replica_days WHERE day < ?", (keep_from.isoformat(),))
        done = {str(d) for (d,) in control.execute(
            "SELECT day FROM replica_days WHERE replica_id = ?", (config.replica,))}
        first = max(day_of(int(float(row[0]) * 1_000_000)), keep_from)
        days = [first + timedelta(days=i) for i in range((settled - first).days)]
        todo = [d for d in days if d.isoformat() not in done]
        if not todo:
            return []
        published = []
        received = config.landing_db.exists()  # else nothing was ever received here
        landing = archive.connect(config.landing_db) if received else None
        try:
            for day in todo:
                final = _final_segments(landing, day) if landing is not None else []
                if final is None:
                    continue
                with store.transaction(control):
                    control.executemany(
                        "INSERT INTO replica_segments (account_id, day, replica_id, name,"
                        " events, size, sha256) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT"
                        " (account_id, day, replica_id, name) DO NOTHING",
                        [(s.account_id, day.isoformat(), config.replica, s.name, s.events,
                          s.size, s.sha256) for s in final])
                    control.execute("INSERT INTO replica_days (replica_id, day, at) VALUES"
                                    " (?, ?, ?) ON CONFLICT (replica_id, day) DO NOTHING",
                                    (config.replica, day.isoformat(), now))
                published.append(day)
        finally:
            if landing is not None:
                landing.close()
        return published
    finally:
        control.close()


def _final_segments(landing: sqlite3.Connection, day: date) -> list[archive.Segment] | None:
    """The day's segments when they are final: every event of the day sealed, one segment per
    account (compacted); else None (not yet)."""
    lo, hi = day_window(day)
    unsealed = logrows.count(landing, "WHERE received_us >= ? AND received_us < ? AND seq > ?",
                             (lo, hi, archive.sealed_seq(landing)))
    if unsealed:
        return None
    segs = archive.segments(landing, day=day)
    accounts = [s.account_id for s in segs]
    if len(set(accounts)) != len(accounts):
        return None  # not compacted yet
    return segs


def day_files(config: Config, account_id: str, day: date) -> list[Path]:
    """Every replica's segment files of the account's day, once every replica that must has
    published it; else :class:`NotSealedYet`."""
    end = (day_window(day)[1]) / 1_000_000
    conn = store.connect(config.control)
    try:
        expected = {str(r) for (r,) in conn.execute(
            "SELECT replica_id FROM replicas WHERE retired_at IS NULL AND first_seen < ?",
            (end,))}
        done = {str(r) for (r,) in conn.execute(
            "SELECT replica_id FROM replica_days WHERE day = ?", (day.isoformat(),))}
        if expected - done:
            raise NotSealedYet(day, sorted(expected - done))
        names = conn.execute("SELECT name FROM replica_segments WHERE account_id = ? AND"
                             " day = ? ORDER BY replica_id, name",
                             (account_id, day.isoformat())).fetchall()
    finally:
        conn.close()
    return [config.archive_dir / account_id / day.isoformat() / str(n) for (n,) in names]


def aggregate(config: Config, account_id: str, day: date, layout: str | None) -> DayAggregate:
    """The account's closed day over every replica's segments (DuckDB, or Spark)."""
    paths = day_files(config, account_id, day)
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise UsageError(f"the shared archive folder {config.archive_dir} lacks {missing[0]} "
                         "(is KIRO_ACTIVITY_ARCHIVE_FOLDER the same folder on every replica?)")
    if not paths:
        return DayAggregate(account_id, day, day_window(day), [], 0, [] if layout else None,
                            layout)
    if config.engine == "spark":
        return spark_day(account_id, day, paths, layout, once=True)
    return source_day(account_id, day, Once(paths), layout)  # a retry to another replica: once


@dataclass(frozen=True)
class Replica:
    name: str
    first_seen: float
    seen_at: float
    retired_at: float | None
    last_published: date | None


def listing(conn: store.Connection) -> list[Replica]:
    rows = conn.execute(
        "SELECT r.replica_id, r.first_seen, r.seen_at, r.retired_at, max(d.day) FROM replicas r"
        " LEFT JOIN replica_days d ON d.replica_id = r.replica_id GROUP BY r.replica_id,"
        " r.first_seen, r.seen_at, r.retired_at ORDER BY r.replica_id").fetchall()
    return [Replica(str(n), float(f), float(s), None if r is None else float(r),
                    date.fromisoformat(str(d)) if d else None) for n, f, s, r, d in rows]


def retire(conn: store.Connection, name: str, now: float) -> None:
    """Stop waiting for ``name`` (it comes back when it starts again)."""
    with store.transaction(conn):
        found = conn.execute("UPDATE replicas SET retired_at = ? WHERE replica_id = ?",
                             (now, name)).rowcount
    if not found:
        raise UsageError(f"no replica {name!r} is registered (kiro-activity replicas list)")
    log.warning("replica %s retired: the reports no longer wait for it", name)

