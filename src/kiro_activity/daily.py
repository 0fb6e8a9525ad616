"""One account's day, produced and delivered exactly as planned: the delivery ledger.

``deliver_day`` plans the drop once (aggregate, render, and freeze keys, bytes and SHA-256 of every
object in the ledger, in one transaction) and then puts the frozen objects in order, the manifest
last, recording each one as it lands. A crash at any point resumes the same plan: the keys and
bytes never change between attempts, a put that already landed answers 412 (already there), and
nothing new is rendered. ``--replace`` plans the day again on purpose and overwrites.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from . import db, replicas, retention
from . import settings as settings_mod
from .aggregate import aggregate_day
from .audit import record
from .config import Config
from .deliver import Backoff, Destination, LocalDestination, S3Destination, put_with_retries
from .errors import DeliveryError, UsageError
from .report import Drop, build_drop
from .s3uri import split_location
from .store import Account, connect, require_account, transaction

DAY_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@dataclass
class Outcome:
    """What happened to one account's day."""

    account_id: str
    day: date
    #: delivered | already_delivered | failed | waiting (for replicas to seal the day) |
    #: claimed (another replica is delivering it)
    state: str
    objects: list[tuple[str, str]] = field(default_factory=list)  # (key, result)
    error: DeliveryError | None = None
    note: str = ""


def destination_for(config: Config, account: Account,
                    s: settings_mod.Settings) -> tuple[Destination, str]:
    """The destination and its description (recorded in the ledger)."""
    if s.s3_uri:
        bucket, prefix = split_location(s.s3_uri)
        dest = S3Destination(bucket, expected_owner=account.account_id, region=account.region,
                             sse=s.sse, kms_key_arn=s.kms_key_arn)
        return dest, f"s3://{bucket}/{prefix}/ ({s.layout}, {s.sse})"
    root = config.data_dir / "reports"
    return LocalDestination(root), f"folder {root.resolve()} ({s.layout})"


def closed(day: date, now: float) -> bool:
    """Day D is closed from 00:00 UTC of D+1."""
    return datetime.fromtimestamp(now, UTC).date() > day


def planned(conn: db.Connection, account_id: str, day: date) -> bool:
    """Whether the day's report was ever planned (and so may be produced again)."""
    return _plan_row(conn, account_id, day) is not None


def _plan_row(conn: db.Connection, account_id: str, day: date) -> tuple[object, ...] | None:
    row: tuple[object, ...] | None = conn.execute(
        "SELECT destination, delivered_at, replacements FROM drops"
        " WHERE account_id = ? AND day = ?", (account_id, day.isoformat())).fetchone()
    return row


def render(config: Config, account: Account, s: settings_mod.Settings, day: date, *,
           now: float, rebuild: bool = False) -> Drop:
    """The day's objects under the account's settings (from the counters, or rebuilt; with
    the spark engine, rebuilt by Spark from the archive, so only for a closed day)."""
    check_retained(config, day, now)
    if config.engine == "spark" and not closed(day, now):
        raise UsageError(f"{day} is not closed yet: the spark engine reads the sealed day, "
                         "written once the day is closed (use the duckdb engine for it so far)")
    prefix = split_location(s.s3_uri)[1] if s.s3_uri else ""
    if config.replica:  # every replica's events: from the shared archive, once all sealed it
        if not closed(day, now):
            raise UsageError(f"{day} is not closed yet: with replicas (KIRO_ACTIVITY_REPLICA) a "
                             "day is reported once every replica has sealed it")
        agg = replicas.aggregate(config, account.account_id, day, s.layout)
    else:
        agg = aggregate_day(config.landing_db, account.account_id, day, layout=s.layout,
                            rebuild=rebuild, archive_dir=config.archive_dir,
                            engine=config.engine)
    return build_drop(agg, region=account.region, prefix=prefix, layout=s.layout,
                      generated_at=datetime.fromtimestamp(now, UTC), partial=not closed(day, now),
                      manifest=s.manifest or not s.s3_uri)


def check_retained(config: Config, day: date, now: float) -> None:
    """A UsageError for a day past the retention: its events are no longer kept, and a report
    of it would be empty rather than right."""
    first = retention.oldest_kept(config, datetime.fromtimestamp(now, UTC).date())
    if day < first:
        raise UsageError(
            f"{day} is past the retention of {config.retention_days} days (the first day kept "
            f"is {first}): its events are no longer kept (KIRO_ACTIVITY_RETENTION_DAYS)")


def plan(conn: db.Connection, config: Config, account: Account, day: date, *,
         s: settings_mod.Settings, description: str, now: float, replace: bool,
         actor: str | None = None) -> None:
    """Aggregate, render and freeze the day's drop in the ledger (one transaction)."""
    drop = render(config, account, s, day, now=now)
    key = (account.account_id, day.isoformat())
    with transaction(conn):
        previous = _plan_row(conn, account.account_id, day)
        replacements = int(str(previous[2])) + 1 if previous and replace else 0
        if replace:
            record(conn, now=now, account_id=account.account_id, actor=actor or "service",
                   action="report.replace", target=f"report {day.isoformat()}",
                   before={"replacements": int(str(previous[2])) if previous else None,
                           "destination": previous[0] if previous else None},
                   after={"replacements": replacements, "destination": description,
                          "users": drop.users, "events": drop.events})
        conn.execute("DELETE FROM drop_objects WHERE account_id = ? AND day = ?", key)
        conn.execute(db.upsert("drops", ["account_id", "day"],
                               ["layout", "destination", "users", "events", "planned_at",
                                "replacements"], also="delivered_at = NULL, attempts = 0"),
                     (*key, s.layout, description, drop.users, drop.events, now, replacements))
        conn.executemany(
            "INSERT INTO drop_objects (account_id, day, seq, key, content_type, sha256, size,"
            " data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(*key, seq, o.key, o.content_type, o.sha256, len(o.data), o.data)
             for seq, o in enumerate(drop.objects)])


#: fault injection for the crash tests: ``KIRO_ACTIVITY_TEST_KILL_AT=<phase>`` makes this process
#: SIGKILL itself at that phase of a delivery (``planned``, ``put-N`` after the N-th object
#: (from 0) landed, ``recorded-N`` after the ledger noted it, ``before-done``), so that the tests
#: kill a real process at an exact point instead of raising an exception in-process
_KILL_AT = os.environ.get("KIRO_ACTIVITY_TEST_KILL_AT")


def kill_point(phase: str) -> None:
    if phase == _KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


def deliver_day(config: Config, account_id: str, day: date, *, now: Callable[[], float],
                replace: bool = False, attempts: int = 1, backoff: Backoff | None = None,
                sleep: Callable[[float], None] = time.sleep,
                destination: Destination | None = None, actor: str | None = None) -> Outcome:
    """Plan the day if needed, then put every object not yet delivered, in order.

    One (account, day) is delivered by one thread of this process at a time: the schedule and
    an admin's "report again" wait for each other instead of interleaving plans and puts.
    """
    with _lock_of(account_id, day):
        return _deliver_day(config, account_id, day, now=now, replace=replace,
                            attempts=attempts, backoff=backoff, sleep=sleep,
                            destination=destination, actor=actor)


_locks: dict[tuple[str, date], threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_of(account_id: str, day: date) -> threading.Lock:
    with _locks_guard:
        if len(_locks) > 10_000:  # forget idle ones; a held lock stays held by its holder
            for key in [k for k, lock in _locks.items() if not lock.locked()]:
                del _locks[key]
        return _locks.setdefault((account_id, day), threading.Lock())


def _deliver_day(config: Config, account_id: str, day: date, *, now: Callable[[], float],
                 replace: bool, attempts: int, backoff: Backoff | None,
                 sleep: Callable[[float], None], destination: Destination | None,
                 actor: str | None) -> Outcome:
    conn = connect(config.control)
    try:
        if isinstance(conn, db.PgConnection) and not conn.try_lock(
                f"kiro-activity delivery {account_id} {day.isoformat()}"):
            return Outcome(account_id, day, "claimed", note="another replica is delivering it")
        account = require_account(conn, account_id)
        s = settings_mod.get(conn, account_id)
        dest, description = destination_for(config, account, s)
        dest = destination or dest
        row = _plan_row(conn, account_id, day)
        if row and row[1] is not None and not replace:
            return Outcome(account_id, day, "already_delivered")
        delivered_any = row is not None and conn.execute(
            "SELECT 1 FROM drop_objects WHERE account_id = ? AND day = ? AND delivered_at"
            " IS NOT NULL", (account_id, day.isoformat())).fetchone() is not None
        if row is None or replace or (row[0] != description and not delivered_any):
            try:
                plan(conn, config, account, day, s=s, description=description, now=now(),
                     replace=replace, actor=actor)
            except replicas.NotSealedYet as exc:
                return Outcome(account_id, day, "waiting", note=str(exc))
            kill_point("planned")
        return _send(conn, dest, account_id, day, now=now, attempts=attempts,
                     backoff=backoff or Backoff(), sleep=sleep)
    finally:
        conn.close()


def _send(conn: db.Connection, dest: Destination, account_id: str, day: date, *,
          now: Callable[[], float], attempts: int, backoff: Backoff,
          sleep: Callable[[float], None]) -> Outcome:
    key = (account_id, day.isoformat())
    replacing = int(conn.execute("SELECT replacements FROM drops WHERE account_id = ? AND day = ?",
                                 key).fetchone()[0]) > 0
    todo = conn.execute(
        "SELECT seq, key, content_type, data FROM drop_objects WHERE account_id = ? AND day = ?"
        " AND delivered_at IS NULL ORDER BY seq", key).fetchall()
    outcome = Outcome(account_id, day, "delivered")
    conn.execute("UPDATE drops SET attempts = attempts + 1 WHERE account_id = ? AND day = ?", key)
    for seq, obj_key, content_type, data in todo:
        try:
            result = put_with_retries(
                dest, obj_key, data, replace=replacing, content_type=content_type,
                attempts=attempts, backoff=backoff, sleep=sleep, rng=random.Random(),
                on_error=lambda err: record_error(conn, account_id, day, err, now()))
        except DeliveryError as err:
            outcome.state, outcome.error = "failed", err
            return outcome
        kill_point(f"put-{seq}")  # it landed; the ledger has not heard of it
        conn.execute("UPDATE drop_objects SET delivered_at = ?, result = ? WHERE account_id = ?"
                     " AND day = ? AND seq = ?", (now(), result.value, *key, seq))
        kill_point(f"recorded-{seq}")
        outcome.objects.append((obj_key, result.value))
    kill_point("before-done")
    with transaction(conn):
        conn.execute("UPDATE drops SET delivered_at = ? WHERE account_id = ? AND day = ?",
                     (now(), *key))
        conn.execute("DELETE FROM delivery_errors WHERE account_id = ?", (account_id,))
    return outcome


def record_error(conn: db.Connection, account_id: str, day: date, err: DeliveryError,
                 at: float) -> None:
    """The account's last delivery error, shown to its admins until a delivery succeeds."""
    conn.execute(db.upsert("delivery_errors", ["account_id"],
                           ["at", "day", "code", "message", "configuration"]),
                 (account_id, at, day.isoformat(), err.code, err.message, int(not err.transient)))


def due_days(conn: db.Connection, account_id: str, *, now: float,
             retention_days: int) -> list[date]:
    """Closed days since reports were enabled (within the retention) not yet delivered."""
    s = settings_mod.get(conn, account_id)
    if not s.enabled or s.enabled_since is None:
        return []
    today = datetime.fromtimestamp(now, UTC).date()
    first = max(s.enabled_since, today - timedelta(days=retention_days))
    delivered = {r[0] for r in conn.execute(
        "SELECT day FROM drops WHERE account_id = ? AND delivered_at IS NOT NULL", (account_id,))}
    days = [first + timedelta(days=i) for i in range((today - first).days)]
    return [d for d in days if d.isoformat() not in delivered]


def status(conn: db.Connection, account_id: str) -> dict[str, object]:
    """Each planned day's delivery state, the last delivery error, and the last failure to
    put the telemetry archive in the account's bucket (until a put succeeds)."""
    require_account(conn, account_id)
    days = [
        {"day": day, "layout": layout, "destination": dest, "users": users, "events": events,
         "planned_at": planned, "delivered_at": delivered, "replacements": repl,
         "attempts": attempts, "objects": n, "objects_delivered": done,
         "state": "delivered" if delivered else "pending"}
        for day, layout, dest, users, events, planned, delivered, repl, attempts, n, done
        in conn.execute(
            "SELECT d.day, d.layout, d.destination, d.users, d.events, d.planned_at,"
            " d.delivered_at, d.replacements, d.attempts, count(o.seq),"
            " count(o.delivered_at) FROM drops d JOIN drop_objects o USING (account_id, day)"
            " WHERE d.account_id = ? GROUP BY d.account_id, d.day ORDER BY d.day", (account_id,))
    ]
    err = conn.execute("SELECT at, day, code, message, configuration FROM delivery_errors"
                       " WHERE account_id = ?", (account_id,)).fetchone()
    last_error = None if err is None else {
        "at": err[0], "day": err[1], "code": err[2], "message": err[3],
        "kind": "configuration" if err[4] else "transient"}
    archived = conn.execute("SELECT at, message FROM archive_errors WHERE account_id = ?",
                            (account_id,)).fetchone()
    archive_error = None if archived is None else {"at": archived[0], "message": archived[1]}
    return {"account_id": account_id, "days": days, "last_error": last_error,
            "archive_error": archive_error}


def check_day(day_text: str) -> date:
    """A UTC day written YYYY-MM-DD (nothing else that Python would also read as a date)."""
    if not DAY_RE.fullmatch(day_text):
        raise UsageError(f"date {day_text!r} is not YYYY-MM-DD")
    try:
        day = date.fromisoformat(day_text)
    except ValueError:
        raise UsageError(f"date {day_text!r} is not a day of the calendar (YYYY-MM-DD)"
                         ) from None
    if day.year < 2000:
        raise UsageError(f"date {day_text!r} is before 2000: no report can exist for it")
    return day

