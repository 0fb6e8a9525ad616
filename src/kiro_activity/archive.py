"""The telemetry archive: every acknowledged event, sealed into immutable typed Parquet segments.

Sealing runs continuously (every ``seal_interval`` seconds, 300 by default, from the running
service's schedule; and from ``kiro-activity report seal``), so the archive lags the landing log
by minutes. One run takes the highest committed ``seq`` of the landing log, ``W``, and writes
every event past the last sealed one, ``S``, as one segment per (account, UTC receipt day)::

    DATA_DIR/archive/ACCOUNT/YYYY-MM-DD/seg-<first seq>-<last seq>.v1.parquet
    ARCHIVE/ACCOUNT/YYYY-MM-DD/seg-<replica>-<first seq>-<last seq>.v1.parquet   (replicas)

With replicas (``KIRO_ACTIVITY_REPLICA``, :mod:`.replicas`) every replica seals its own landing
log into one shared archive folder: its segments carry its name, and a replica removes, compacts
and purges only files of its own name (another replica's are named by that one's ledger).

Each segment holds the events' ``seq``, ``received_us``, the raw body and the fields the metric
rules read, typed (the columns of :func:`.aggregate.fields_sql`), zstd-compressed. Segments are
immutable and exactly once, by construction:

* a segment is written to a temporary name, fsync'd and renamed, and becomes part of the archive
  only when the **ledger** (the ``archive_segments`` table of ``landing.db``) names it, in the
  same transaction that moves the sealed mark ``S`` to ``W`` (a compare-and-set: a run that
  finds ``S`` moved since it started commits nothing). A run killed before that commit leaves
  files that no ledger row names; the next run deletes them and seals the same events again.
  So no event is ever in two committed segments (their ``seq`` ranges are disjoint) and none is
  skipped (``S`` moves only with the segments that cover up to it);
* readers (:func:`day_files`, the rebuild, the retention) go by the ledger, never by listing the
  folder, so a half-written or orphaned file is never seen;
* one sealer at a time: runs hold ``archive/.seal.lock`` (``.seal-<replica>.lock``).

When a day has closed (and a minute has passed for the last group commit of the day), its
segments are **compacted** into one, the same way: the new file is written and fsync'd, then one
transaction swaps the ledger rows, then the old files are deleted.

The rebuild of any day reads the day's segments plus the **unsealed tail** (the landing log's
events of the day past ``S``): one DuckDB scan of the Parquet, as fast as DuckDB's own pivot
over the same files (``make bench-report``). The retention (:mod:`.retention`) deletes a day's
raw events from the landing log only when the ledger covers them and each segment's file is
there with the size and row count the ledger recorded.

Every committed segment is also put in the account's bucket when it has an S3 location
(:func:`upload`), under a key layout that no report reader lists.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import signal
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from . import db, landing, logrows, store
from .aggregate import DAY_US, day_of, day_window, fields_sql, parquet_list, read_day
from .config import Config
from .deliver import Destination, PutResult
from .errors import DeliveryError

log = logging.getLogger(__name__)

#: the segments' schema version: in their names and in the ledger
VERSION = 1
#: a closed day is compacted once this long after its midnight (the last group commit is in)
COMPACT_AFTER_S = 60

SCHEMA = """
CREATE TABLE IF NOT EXISTS archive_segments (
    account_id TEXT NOT NULL,
    day        TEXT NOT NULL,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    events     INTEGER NOT NULL,
    name       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    version    INTEGER NOT NULL,
    sealed_at  REAL NOT NULL,
    PRIMARY KEY (account_id, day, first_seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS archive_meta (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    sealed_seq INTEGER NOT NULL,
    sealed_at  REAL NOT NULL
);
INSERT OR IGNORE INTO archive_meta VALUES (1, 0, 0);
"""

_COLUMNS = ("account_id, day, first_seq, last_seq, events, name, size, sha256, version,"
            " sealed_at")
_RAW = pa.schema([("seq", pa.int64()), ("received_us", pa.int64()), ("user_id", pa.string()),
                  ("member", pa.string()), ("ide_category", pa.string()), ("body", pa.string())])

_KILL_AT, _, _KILL_NTH = os.environ.get("KIRO_ACTIVITY_TEST_KILL_AT", "").partition("#")
_passed: dict[str, int] = {}


def kill_point(phase: str) -> None:
    """Fault injection for the crash tests (as :func:`.daily.kill_point`): the process
    SIGKILLs itself at ``seal-written`` (segments written, not committed), ``seal-committed``,
    ``compact-written`` or ``compact-committed``; ``phase#n``: the n-th time it gets there."""
    if phase == _KILL_AT:
        _passed[phase] = _passed.get(phase, 0) + 1
        if _passed[phase] >= int(_KILL_NTH or 1):
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Segment:
    """One committed segment, as the ledger names it."""

    account_id: str
    day: date
    first_seq: int
    last_seq: int
    events: int
    name: str
    size: int
    sha256: str
    #: where the account's bucket holds it: None (not yet), "-" (nothing to put: its events
    #: are there already, in the segments it was compacted from), else the s3:// URI
    remote: str | None = None

    def path(self, archive_dir: Path) -> Path:
        return archive_dir / self.account_id / self.day.isoformat() / self.name


@dataclass
class Sealed:
    """What one :func:`seal` did."""

    segments: int = 0
    events: int = 0
    compacted: int = 0  # account-days whose segments became one
    orphans_removed: int = 0
    sealed_seq: int = 0
    written: list[Path] = field(default_factory=list)


def connect(landing_db: Path) -> sqlite3.Connection:
    conn = landing.connect(landing_db)
    conn.executescript(SCHEMA)
    have = {r[1] for r in conn.execute("PRAGMA table_info(archive_segments)")}
    if "remote" not in have:  # the copy in the account's bucket (see upload)
        conn.execute("ALTER TABLE archive_segments ADD COLUMN remote TEXT")
    return conn


def sealed_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT sealed_seq FROM archive_meta").fetchone()[0])


def segments(conn: sqlite3.Connection, account_id: str | None = None,
             day: date | None = None) -> list[Segment]:
    """The committed segments (of an account, of a day), in ``seq`` order."""
    where, args = [], []
    if account_id is not None:
        where.append("account_id = ?")
        args.append(account_id)
    if day is not None:
        where.append("day = ?")
        args.append(day.isoformat())
    sql = ("SELECT account_id, day, first_seq, last_seq, events, name, size, sha256, remote"
           " FROM archive_segments" + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY account_id, day, first_seq")
    return [Segment(a, date.fromisoformat(d), f, la, n, name, size, sha, r)
            for a, d, f, la, n, name, size, sha, r in conn.execute(sql, args)]


def day_files(landing_db: Path, archive_dir: Path, account_id: str, day: date) -> list[Path]:
    """The committed segment files of an account's day (none when nothing is sealed)."""
    if not landing_db.exists():
        return []
    conn = connect(landing_db)
    try:
        return [s.path(archive_dir) for s in segments(conn, account_id, day)]
    finally:
        conn.close()


def tail(landing_db: Path, account_id: str, day: date) -> pa.RecordBatchReader:
    """The day's events not sealed yet (past the sealed mark), as the rebuild reads raw events:
    user_id, member, ide_category, body."""
    conn = connect(landing_db)
    try:
        mark = sealed_seq(conn)
    finally:
        conn.close()
    return read_day(landing_db, account_id, day, after_seq=mark)


#: how long a sealing run waits for another one to finish before it gives up (and is retried)
LOCK_WAIT_S = 120.0


@contextlib.contextmanager
def _sealer(archive_dir: Path, replica: str = "") -> Iterator[None]:
    """Hold ``archive/.seal.lock`` (a replica's own): one sealer (seal, compaction, repair) of
    a landing log at a time."""
    archive_dir.mkdir(parents=True, exist_ok=True)
    lock = f".seal-{replica}.lock" if replica else ".seal.lock"
    fd = os.open(archive_dir / lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another sealing of {archive_dir} has held "
                                       f".seal.lock for {LOCK_WAIT_S:g} s") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _write(source: pa.RecordBatchReader | str, final: Path) -> tuple[int, int, str]:
    """Write ``source`` (raw rows, or a DuckDB relation over Parquet) as a typed segment at
    ``final``, durably: (events, size, sha256)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    con = duckdb.connect()
    try:
        if isinstance(source, str):
            select = f"SELECT * FROM read_parquet({source}) ORDER BY seq"
        else:
            con.register("raw", source)
            select = fields_sql("raw", keep_raw=True, keys=("seq", "received_us"))
        path = str(tmp).replace("'", "''")
        con.execute(f"COPY ({select}) TO '{path}' (FORMAT parquet, COMPRESSION zstd)")
    finally:
        con.close()
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    rows = int(pq.read_metadata(tmp).num_rows)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return rows, final.stat().st_size, _sha256(final)


def seal(landing_db: Path, archive_dir: Path, *, now: float, replica: str = "") -> Sealed:
    """Seal every committed event past the sealed mark, then compact the closed days
    (``replica``: the name this landing log's segments carry, see :mod:`.replicas`)."""
    out = Sealed()
    if not landing_db.exists():
        return out
    with _sealer(archive_dir, replica):
        conn = connect(landing_db)
        try:
            out.orphans_removed = _remove_orphans(conn, archive_dir, replica)
            _seal_new(conn, archive_dir, now, out, replica)
            _compact_closed(conn, archive_dir, now, out, replica)
            out.sealed_seq = sealed_seq(conn)
        finally:
            conn.close()
    return out


def _seal_new(conn: sqlite3.Connection, archive_dir: Path, now: float, out: Sealed,
              replica: str) -> None:
    start = sealed_seq(conn)
    top = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
    if top is None or top <= start:
        return  # nothing new (and nothing to write: no lock taken from the writer)
    groups = conn.execute(
        "SELECT account_id, received_us / ? AS d, min(seq - n + 1), max(seq), sum(n) FROM events"
        " WHERE seq > ? AND seq <= ? GROUP BY 1, 2 ORDER BY 1, 2",
        (DAY_US, start, top)).fetchall()
    made: list[tuple[str, date, int, int, int, str, int, str]] = []
    try:
        for account_id, number, first, last, n in groups:
            day = date(1970, 1, 1) + timedelta(days=int(number))
            name = _segment_name(first, last, replica)
            final = archive_dir / account_id / day.isoformat() / name
            rows = _rows(conn, account_id, day, start, top)
            events, size, sha = _write(rows, final)
            if events != n:
                raise RuntimeError(f"segment {final} holds {events} events, not {n}")
            out.written.append(final)
            made.append((account_id, day, first, last, events, name, size, sha))
        kill_point("seal-written")
        with store.transaction(conn):
            if sealed_seq(conn) != start:  # another sealer got there first: ours are orphans
                raise RuntimeError("the archive was sealed meanwhile")
            conn.executemany(
                f"INSERT INTO archive_segments ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " ?)",
                [(a, d.isoformat(), f, la, n, name, size, sha, VERSION, now)
                 for a, d, f, la, n, name, size, sha in made])
            conn.execute("UPDATE archive_meta SET sealed_seq = ?, sealed_at = ?", (top, now))
    except BaseException:
        for path in out.written:
            path.unlink(missing_ok=True)
        out.written.clear()
        raise
    kill_point("seal-committed")
    out.segments += len(made)
    out.events += sum(m[4] for m in made)


def _segment_name(first: int, last: int, replica: str = "") -> str:
    source = f"{replica}-" if replica else ""
    return f"seg-{source}{first:012d}-{last:012d}.v{VERSION}.parquet"


def _own(replica: str) -> re.Pattern[str]:
    """The file names (segments and their temporary files) a landing log's sealer writes."""
    source = f"{re.escape(replica)}-" if replica else ""
    return re.compile(rf"^\.?seg-{source}\d{{12}}-\d{{12}}\.")


def _rows(conn: sqlite3.Connection, account_id: str, day: date, after: int,
          upto: int) -> pa.RecordBatchReader:
    lo, hi = day_window(day)
    chunks = logrows.scan(
        conn, ("seq", "received_us", "user_id", "member", "ide_category", "body"),
        "WHERE received_us >= ? AND received_us < ? AND account_id = ? AND seq > ? AND seq <= ?",
        (lo, hi, account_id, after, upto), text=True)

    def batches() -> Iterator[pa.RecordBatch]:
        for rows in chunks:
            cols = list(zip(*rows, strict=True))
            yield pa.RecordBatch.from_arrays(
                [pa.array(c, t.type) for c, t in zip(cols, _RAW, strict=True)], schema=_RAW)

    return pa.RecordBatchReader.from_batches(_RAW, batches())


def _compact_closed(conn: sqlite3.Connection, archive_dir: Path, now: float,
                    out: Sealed, replica: str) -> None:
    settled = day_of(int((now - COMPACT_AFTER_S) * 1_000_000))  # days before it are closed
    many = conn.execute("SELECT account_id, day FROM archive_segments WHERE day < ?"
                        " GROUP BY 1, 2 HAVING count(*) > 1", (settled.isoformat(),)).fetchall()
    for account_id, day_text in many:
        day = date.fromisoformat(day_text)
        old = segments(conn, account_id, day)
        uploaded = {s.remote is not None for s in old}
        if len(uploaded) > 1:
            continue  # some pieces are in the bucket, some not yet: after the upload
        remote = "-" if uploaded == {True} else None  # the pieces are its copy in the bucket
        first, last = old[0].first_seq, max(s.last_seq for s in old)
        name = _segment_name(first, last, replica)
        final = archive_dir / account_id / day_text / name
        events, size, sha = _write(parquet_list([s.path(archive_dir) for s in old]), final)
        if events != sum(s.events for s in old):
            final.unlink()
            raise RuntimeError(f"compaction of {account_id} {day} lost events")
        kill_point("compact-written")
        with store.transaction(conn):
            conn.execute("DELETE FROM archive_segments WHERE account_id = ? AND day = ?",
                         (account_id, day_text))
            conn.execute(f"INSERT INTO archive_segments ({_COLUMNS}, remote) VALUES (?, ?, ?,"
                         " ?, ?, ?, ?, ?, ?, ?, ?)", (account_id, day_text, first, last, events,
                                                     name, size, sha, VERSION, now, remote))
        kill_point("compact-committed")
        for s in old:
            if s.name != name:
                s.path(archive_dir).unlink(missing_ok=True)
        out.compacted += 1


def _remove_orphans(conn: sqlite3.Connection, archive_dir: Path, replica: str = "") -> int:
    """Delete segment files (and temporary files) of this sealer's name that no ledger row
    names: left by a run killed before its commit, or by a compaction killed after it."""
    named = {(s.account_id, s.day.isoformat(), s.name) for s in segments(conn)}
    own = _own(replica)
    removed = 0
    for account_dir in (p for p in archive_dir.iterdir() if p.is_dir()):
        for day_dir in (p for p in account_dir.iterdir() if p.is_dir()):
            for path in day_dir.iterdir():
                is_ours = own.match(path.name) is not None
                if is_ours and (account_dir.name, day_dir.name, path.name) not in named:
                    path.unlink()
                    removed += 1
            with contextlib.suppress(OSError):
                day_dir.rmdir()  # empty
    return removed


def covered(conn: sqlite3.Connection, archive_dir: Path, account_id: str,
            day: date) -> str | None:
    """None when the archive holds every event of the account's day in the landing log (all
    before the sealed mark, each segment file there with its recorded size and row count);
    else why not."""
    lo, hi = day_window(day)
    past = logrows.count(conn, "WHERE received_us >= ? AND received_us < ? AND account_id = ?"
                         " AND seq > ?", (lo, hi, account_id, sealed_seq(conn)))
    if past:
        return f"{past} events not sealed yet"
    for s in segments(conn, account_id, day):
        if not _intact(s.path(archive_dir), s):
            return f"segment {s.name} is missing or damaged"
    return None


def repair(landing_db: Path, archive_dir: Path, account_id: str, day: date,
           replica: str = "") -> int:
    """Rewrite the account-day's missing or damaged segments from the landing log, when it
    still holds every event of them (the same seq range, the same count): how many."""
    fixed = 0
    with _sealer(archive_dir, replica):
        conn = connect(landing_db)
        try:
            lo, hi = day_window(day)
            for s in segments(conn, account_id, day):
                path = s.path(archive_dir)
                if _intact(path, s):
                    continue
                n = logrows.count(conn, "WHERE received_us >= ? AND received_us < ? AND"
                                  " account_id = ? AND seq >= ? AND seq <= ?",
                                  (lo, hi, account_id, s.first_seq, s.last_seq))
                if n != s.events:
                    log.error("segment %s is damaged and the landing log no longer holds its "
                              "events (%d of %d)", path, n, s.events)
                    continue
                events, size, sha = _write(_rows(conn, account_id, day, s.first_seq - 1,
                                                 s.last_seq), path)
                with store.transaction(conn):
                    conn.execute("UPDATE archive_segments SET size = ?, sha256 = ? WHERE"
                                 " account_id = ? AND day = ? AND first_seq = ?",
                                 (size, sha, account_id, day.isoformat(), s.first_seq))
                log.warning("segment %s was missing or damaged: written again from the "
                            "landing log (%d events)", path, events)
                fixed += 1
        finally:
            conn.close()
    return fixed


def _intact(path: Path, s: Segment) -> bool:
    try:
        return path.stat().st_size == s.size and pq.read_metadata(path).num_rows == s.events
    except (OSError, ValueError):
        return False


def drop_days_before(conn: sqlite3.Connection, archive_dir: Path, keep_from: date,
                     replica: str = "") -> int:
    """Delete the archive's days before ``keep_from`` (the ledger first, then the files of
    this landing log's own name): how many account-days went."""
    old = conn.execute("SELECT DISTINCT account_id, day FROM archive_segments WHERE day < ?",
                       (keep_from.isoformat(),)).fetchall()
    with store.transaction(conn):
        conn.execute("DELETE FROM archive_segments WHERE day < ?", (keep_from.isoformat(),))
    for account_id, day_text in old:
        folder = archive_dir / account_id / day_text
        if folder.exists():
            own = _own(replica)
            for path in folder.iterdir():
                if own.match(path.name):
                    path.unlink()
            with contextlib.suppress(OSError):
                folder.rmdir()  # empty: another replica's segments of the day are not ours
    return len(old)


# --- the copy in the account's bucket -----------------------------------------------------------


def remote_key(prefix: str, account_id: str, region: str, s: Segment) -> str:
    """Where a segment goes in the account's bucket: beside ``by_user_analytic/``, which the
    report readers list, under ``telemetry_archive/v1/``, which they do not."""
    head = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    return (f"{head}AWSLogs/{account_id}/KiroLogs/telemetry_archive/v{VERSION}/{region}/"
            f"{s.day:%Y/%m/%d}/{s.name}")


@dataclass
class Uploaded:
    """What one :func:`upload` did."""

    put: int = 0
    already_there: int = 0
    #: per account, the error that stopped its uploads this time (tried again next run)
    errors: dict[str, str] = field(default_factory=dict)


def upload(config: Config, *, destinations: dict[str, Destination] | None = None) -> Uploaded:
    """Put every committed segment not yet in its account's bucket there, oldest first, with
    the report's put rules (``If-None-Match: *``, ``ExpectedBucketOwner``, the account's
    server-side encryption). Accounts with reports on and an S3 location only; a put that finds
    the object there already (a run killed after the put, before the ledger heard of it) counts
    as done. ``destinations`` (tests) replace the S3 client of an account."""
    from . import settings as settings_mod  # settings -> location -> ...: not at import time
    from .deliver import S3Destination
    from .s3uri import split_location

    out = Uploaded()
    if not config.landing_db.exists() or not store.exists(config.control):
        return out
    control = store.connect(config.control)
    try:
        targets = []
        for account_id in settings_mod.enabled_accounts(control):
            s = settings_mod.get(control, account_id)
            if s.s3_uri:
                targets.append((store.require_account(control, account_id), s))
    finally:
        control.close()
    conn = connect(config.landing_db)
    try:
        for account, s in targets:
            failed = False
            bucket, prefix = split_location(s.s3_uri or "")
            dest = (destinations or {}).get(account.account_id) or S3Destination(
                bucket, expected_owner=account.account_id, region=account.region, sse=s.sse,
                kms_key_arn=s.kms_key_arn)
            pending = [seg for seg in segments(conn, account.account_id) if seg.remote is None]
            for seg in pending:
                key = remote_key(prefix, account.account_id, account.region, seg)
                try:
                    result = dest.put(key, seg.path(config.archive_dir).read_bytes(),
                                      content_type="application/vnd.apache.parquet")
                except (DeliveryError, OSError) as exc:
                    out.errors[account.account_id] = str(exc)
                    log.warning("the archive of %s is not in its bucket yet: %s",
                                account.account_id, exc)
                    _note_error(config, account.account_id, str(exc))
                    failed = True
                    break
                with store.transaction(conn):
                    conn.execute("UPDATE archive_segments SET remote = ? WHERE account_id = ?"
                                 " AND day = ? AND first_seq = ?",
                                 (f"s3://{bucket}/{key}", account.account_id,
                                  seg.day.isoformat(), seg.first_seq))
                if result is PutResult.ALREADY_THERE:
                    out.already_there += 1
                else:
                    out.put += 1
            if not failed:
                _note_error(config, account.account_id, None)
    finally:
        conn.close()
    return out


def _note_error(config: Config, account_id: str, message: str | None) -> None:
    """Keep (or, with None, clear) the account's last archive upload error for its admins."""
    control = store.connect(config.control)
    try:
        with store.transaction(control):
            if message is None:
                control.execute("DELETE FROM archive_errors WHERE account_id = ?",
                                (account_id,))
            else:
                control.execute(db.upsert("archive_errors", ["account_id"], ["at", "message"]),
                                (account_id, time.time(), message))
    finally:
        control.close()
