"""Retention: what the data folder keeps, so that it stops growing under steady traffic.

Two windows, both counted in whole UTC days back from today:

* ``dedupe_days`` (default 30): how long a ``clientToken`` is recognised, and so how long raw
  events stay in the landing log. An older day's events leave it only once the archive holds
  them: just before the delete, the archive's ledger (:mod:`.archive`) must cover every event
  of that account and day, and each of its segment files be there with the size and row count
  the ledger recorded (a damaged one is first written again from the landing log). A day that
  cannot be sealed or checked stays in the landing log and is tried again at the next run.
* ``retention_days`` (default 90): how long the archive, the per-user-day counters (which the
  reports and the dashboard read), the dashboard's snapshots and the delivery ledger's frozen
  report files keep a day; older days are deleted, and a report of such a day is refused.

Deletes from the landing log run in batches of :data:`BATCH` rows, each its own short
transaction, so that the writer process (which commits the incoming telemetry) never waits
long for the lock. SQLite reuses the freed pages, so under steady traffic the files stop
growing once the windows are full (``tests/test_retention.py`` shows it flat).

:func:`purge` runs after each daily run of the schedule and from ``kiro-activity purge``.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from dataclasses import dataclass, field
from datetime import date, timedelta

from . import archive, landing, store
from .aggregate import day_of, day_window
from .config import Config
from .dedupe import DAY_US

log = logging.getLogger(__name__)

#: rows deleted from the landing log per transaction
BATCH = 5_000
#: the counters' tables, all keyed by (account_id, day number)
COUNTER_TABLES = ("user_day", "dim_day", "dim_users", "interactions")


@dataclass
class Purged:
    """What one :func:`purge` did."""

    sealed: int = 0  # account-days sealed now
    events_deleted: int = 0  # raw events removed from the landing log
    archive_days_deleted: int = 0
    counter_days_deleted: int = 0
    drops_deleted: int = 0
    snapshot_days_deleted: int = 0
    #: account-days past the dedupe window kept in the landing log, and why
    kept: list[tuple[str, date, str]] = field(default_factory=list)

    def summary(self) -> str:
        kept = f", kept {len(self.kept)} unsealed account-day(s)" if self.kept else ""
        return (f"sealed {self.sealed} account-day(s), deleted {self.events_deleted} raw "
                f"event(s) from the landing log, {self.archive_days_deleted} archived, "
                f"{self.counter_days_deleted} counted, {self.snapshot_days_deleted} dashboard "
                f"and {self.drops_deleted} delivered day(s) past the retention{kept}")


def oldest_kept(config: Config, today: date) -> date:
    """The first day the retention keeps (a report of an earlier day is refused)."""
    return today - timedelta(days=config.retention_days)


def purge(config: Config, now: float) -> Purged:
    """Apply both windows as of ``now`` (epoch seconds); see the module docstring."""
    today = day_of(int(now * 1_000_000))
    out = Purged()
    keep_from = oldest_kept(config, today)
    _landing(config, today - timedelta(days=config.dedupe_days), now, out)
    _archive(config, keep_from, out)
    _counters(config, keep_from, out)
    _snapshots(config, keep_from, out)
    _drops(config, keep_from, out)
    return out


def _landing(config: Config, cut: date, now: float, out: Purged) -> None:
    """Seal, check and delete the raw events of every account-day before ``cut``."""
    if not config.landing_db.exists():
        return
    try:
        out.sealed = archive.seal(config.landing_db, config.archive_dir, now=now,
                                  replica=config.replica).segments
    except Exception:  # what is sealed already may still go; the rest stays (covered says so)
        log.exception("could not seal the archive; unsealed events stay in the landing log")
    conn = archive.connect(config.landing_db)
    try:
        first = conn.execute("SELECT min(received_us) FROM events").fetchone()[0]
        if first is None:
            return
        day = day_of(int(first))
        while day < cut:
            lo, hi = day_window(day)
            accounts = [a for (a,) in conn.execute(
                "SELECT DISTINCT account_id FROM events WHERE received_us >= ?"
                " AND received_us < ?", (lo, hi))]
            for account_id in accounts:
                why = archive.covered(conn, config.archive_dir, account_id, day)
                if why is not None and "damaged" in why and archive.repair(
                        config.landing_db, config.archive_dir, account_id, day,
                        config.replica):
                    why = archive.covered(conn, config.archive_dir, account_id, day)
                if why is None:
                    out.events_deleted += _delete_day(conn, account_id, day)
                else:
                    log.error("%s of %s stays in the landing log: %s", day, account_id, why)
                    out.kept.append((account_id, day, why))
            day += timedelta(days=1)
    finally:
        conn.close()


def _delete_day(conn: sqlite3.Connection, account_id: str, day: date) -> int:
    """Delete the account-day's raw events in batches, except the newest row of the log:
    ``seq`` is SQLite's rowid, which continues from the highest one left, so were every row
    deleted (no traffic for the whole dedupe window) new events would get numbers the counters'
    watermark has already passed, and a writer killed before writing their counters would
    leave them uncounted. That one row goes at a later run, once newer ones exist."""
    lo, hi = day_window(day)
    deleted = 0
    while True:
        rows = ("SELECT seq, n FROM events WHERE received_us >= ? AND received_us < ? AND"
                " account_id = ? AND seq < (SELECT max(seq) FROM events) ORDER BY seq LIMIT ?")
        with store.transaction(conn):  # never the newest row (see the docstring)
            events, gone = conn.execute(f"SELECT coalesce(sum(n), 0), count(*) FROM ({rows})",
                                        (lo, hi, account_id, BATCH)).fetchone()
            conn.execute(f"DELETE FROM events WHERE seq IN (SELECT seq FROM ({rows}))",
                         (lo, hi, account_id, BATCH))
        deleted += int(events)  # a batch row holds n events
        if gone < BATCH:
            return deleted


def _archive(config: Config, keep_from: date, out: Purged) -> None:
    if config.landing_db.exists():
        conn = archive.connect(config.landing_db)
        try:
            out.archive_days_deleted += archive.drop_days_before(conn, config.archive_dir,
                                                                 keep_from, config.replica)
        finally:
            conn.close()
    if not config.archive_dir.exists():
        return
    # sealed days of before the segments (archive/ACCOUNT/DAY.parquet): no ledger names them
    for account_dir in sorted(p for p in config.archive_dir.iterdir() if p.is_dir()):
        for path in sorted(account_dir.glob("*.parquet")):
            day = _day_of_name(path.name)
            if day is not None and day < keep_from:
                path.unlink()
                out.archive_days_deleted += 1


def _snapshots(config: Config, keep_from: date, out: Purged) -> None:
    root = config.data_dir / "usage"
    if not root.exists():
        return
    for account_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        days: set[date] = set()
        for path in sorted(account_dir.iterdir()):
            day = _day_of_name(path.name)
            if day is not None and day < keep_from:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                days.add(day)
        out.snapshot_days_deleted += len(days)


def _day_of_name(name: str) -> date | None:
    try:
        return date.fromisoformat(name[:10])
    except ValueError:
        return None


def _counters(config: Config, keep_from: date, out: Purged) -> None:
    if not config.landing_db.exists():
        return
    first = day_window(keep_from)[0] // DAY_US
    conn = landing.connect(config.landing_db)
    try:
        old = [d for (d,) in conn.execute(
            "SELECT DISTINCT day FROM user_day WHERE day < ? ORDER BY day", (first,))]
        for number in old:
            with store.transaction(conn):
                for table in COUNTER_TABLES:
                    conn.execute(f"DELETE FROM {table} WHERE day = ?", (number,))
            out.counter_days_deleted += 1
    finally:
        conn.close()


def _drops(config: Config, keep_from: date, out: Purged) -> None:
    """The frozen report files of delivered days past the retention (they are in the bucket;
    a day never delivered is kept, and shown, until an admin sees to it)."""
    if not store.exists(config.control):
        return
    conn = store.connect(config.control)
    try:
        with store.transaction(conn):
            old = conn.execute("SELECT account_id, day FROM drops WHERE day < ? AND"
                               " delivered_at IS NOT NULL", (keep_from.isoformat(),)).fetchall()
            for key in old:
                conn.execute("DELETE FROM drop_objects WHERE account_id = ? AND day = ?", key)
                conn.execute("DELETE FROM drops WHERE account_id = ? AND day = ?", key)
        out.drops_deleted += len(old)
    finally:
        conn.close()
