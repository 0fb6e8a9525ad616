"""The 44 metrics per (account, user, UTC receipt day), computed by DuckDB from the raw events.

The SQL is generated from the rule table of :mod:`.metrics`, so a rule exists once; the tests hold
the result to :func:`.metrics.evaluate`, the same rules applied in plain Python. Events are read
from the landing log for the day's receipt-time window and handed to DuckDB as Arrow data (DuckDB
cannot load its SQLite extension offline); each member object is parsed once by DuckDB's JSON
reader, and only the fields the rules use are extracted.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeAlias

import duckdb
import pyarrow as pa

from . import counters, events, landing, logrows
from .config import ENGINES
from .errors import UsageError
from .metrics import AMOUNT_MAX, METRICS, SUM_MAX, Rule, column_order, numeric_fields, text_fields

DAY_US = 86_400_000_000
NUMBER_TYPES = "('UBIGINT', 'BIGINT', 'DOUBLE')"


@dataclass(frozen=True)
class DayAggregate:
    """One account's day: per user (in code-point order) the 44 metrics in METRICS order."""

    account_id: str
    day: date
    window: tuple[int, int]  # receipt time, epoch microseconds, [start, end)
    rows: list[tuple[str, list[int]]]
    events: int
    #: the fast path's form of ``rows``: per user the metric cells, comma-joined in the order of
    #: the layout named by ``cells_layout`` (then ``rows`` is empty)
    cells: list[tuple[str, str]] | None = None
    cells_layout: str | None = None

    @property
    def users(self) -> int:
        return len(self.cells) if self.cells is not None else len(self.rows)


def day_window(day: date) -> tuple[int, int]:
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1_000_000
    return start, start + DAY_US


def day_of(epoch_us: int) -> date:
    return date(1970, 1, 1) + timedelta(days=epoch_us // DAY_US)


SCHEMA = pa.schema([(name, pa.string()) for name in
                    ("user_id", "member", "ide_category", "body")])
BATCH = 50_000


def read_day(landing_db: Path, account_id: str, day: date,
             after_seq: int = 0) -> pa.RecordBatchReader:
    """The account's events received in ``day`` (user_id, member, ide_category, body), those
    past ``after_seq`` only (the archive's unsealed tail), streamed in batches so that a day of
    any size is aggregated in bounded memory."""
    start, end = day_window(day)

    def batches() -> Iterator[pa.RecordBatch]:
        conn = landing.connect(landing_db, readonly=True)
        try:
            for rows in logrows.scan(
                    conn, ("user_id", "member", "ide_category", "body"),
                    "WHERE received_us >= ? AND received_us < ? AND account_id = ? AND seq > ?",
                    (start, end, account_id, after_seq), text=True):
                columns = list(zip(*rows, strict=True))
                yield pa.RecordBatch.from_arrays(
                    [pa.array(c, pa.string()) for c in columns], schema=SCHEMA)
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
        finally:
            conn.close()

    return pa.RecordBatchReader.from_batches(SCHEMA, batches())


def _quote(values: object) -> str:
    return ", ".join("'" + str(v).replace("'", "''") + "'" for v in sorted(values))  # type: ignore[call-overload]


MEMBER_IDS = {name: i for i, name in enumerate(sorted(events.MEMBERS))}


def _condition(rule: Rule) -> str:
    # members compared as small integers: 44 filters over every event, cheaper than strings
    parts = [f"member_id IN ({', '.join(str(MEMBER_IDS[m]) for m in sorted(rule.members))})"]
    if rule.not_cli:
        parts.append("ide_category IS DISTINCT FROM 'CLI'")
    parts += [f"s_{f} IN ({_quote(values)})" for f, values in rule.where]
    return " AND ".join(parts)


def _expression(rule: Rule) -> str:
    cond = _condition(rule)
    if rule.agg == "count":
        return f"count(*) FILTER (WHERE {cond})"
    if rule.agg == "sum":  # clamped like the counters (a sealed day may hold unclamped amounts)
        n = f"n_{rule.field}"  # (DuckDB's least() would turn a NULL into the bound)
        return (f"least(coalesce(sum(CASE WHEN {n} > {AMOUNT_MAX} THEN {AMOUNT_MAX} ELSE {n} END)"
                f" FILTER (WHERE {cond}), 0), {SUM_MAX})")
    key = ", ".join(f"'{f}': s_{f}" for f in rule.distinct_on)
    return f"count(DISTINCT {{{key}}}) FILTER (WHERE {cond})"


def fields_sql(source: str, *, keep_raw: bool = False, keys: tuple[str, ...] = ()) -> str:
    """Each event of ``source`` (user_id, member, ide_category, body) with the fields the rules
    read, typed: ``n_<field>`` numbers (only JSON numbers count, each at most ``AMOUNT_MAX``,
    as :func:`.metrics.deltas` clamps them) and ``s_<field>`` strings; the ``keys`` columns of
    ``source`` first, passed through."""
    project = [f"CASE WHEN json_type(ev, '$.\"{f}\"') NOT IN {NUMBER_TYPES} THEN NULL"
               f" WHEN TRY_CAST(json_extract_string(ev, '$.\"{f}\"') AS DOUBLE) > {AMOUNT_MAX}"
               f" THEN {AMOUNT_MAX} ELSE TRY_CAST(json_extract_string(ev, '$.\"{f}\"') AS BIGINT)"
               f" END AS n_{f}" for f in numeric_fields()]
    project += [f"CASE WHEN json_type(ev, '$.\"{f}\"') = 'VARCHAR' THEN "
                f"json_extract_string(ev, '$.\"{f}\"') END AS s_{f}" for f in text_fields()]
    raw = "body, " if keep_raw else ""
    lead = "".join(f"{k}, " for k in keys)
    member_id = "CASE member " + " ".join(
        f"WHEN '{name}' THEN {i}" for name, i in MEMBER_IDS.items()) + " END::UTINYINT"
    return (
        f"SELECT {lead}user_id, member, {member_id} AS member_id, ide_category, {raw}"
        f"{', '.join(project)} FROM (\n"
        f"  SELECT {lead}user_id, member, ide_category, body,"
        f" json_extract(body, '$.telemetryEvent.\"' || member || '\"') AS ev FROM {source})"
    )


def pivot_sql(source: str) -> str:
    """The 44 metrics per user over typed events (the output of :func:`fields_sql`)."""
    aggregates = ",\n  ".join(_expression(m.rule) for m in METRICS)
    return f"SELECT user_id, count(*) AS events,\n  {aggregates}\nFROM {source} GROUP BY user_id"


def query() -> str:
    """The whole aggregation as one DuckDB query over a relation ``raw``."""
    return f"WITH fields AS (\n{fields_sql('raw')}\n)\n{pivot_sql('fields')}"


@dataclass(frozen=True)
class Once:
    """Segments of one day written by several replicas (:mod:`.replicas`): each landing log
    dropped the retries it received itself, but a client's retry may have reached another
    replica, so an event counts once per (user, ``clientToken``), the first received, as the
    landing log's own dedupe does."""

    paths: list[Path]


def once_sql(paths: list[Path]) -> str:
    """The typed events of ``paths``, each (user, clientToken) once (see :class:`Once`)."""
    token = "json_extract_string(body, '$.clientToken')"
    return (f"(SELECT * EXCLUDE (seq, received_us, body) FROM read_parquet({parquet_list(paths)})"
            f" QUALIFY {token} IS NULL OR row_number() OVER (PARTITION BY user_id, {token}"
            " ORDER BY received_us, seq) = 1)")


#: what the pivot reads: raw events (Arrow), a sealed day (Parquet of typed events), a day's
#: archive segments and its unsealed tail (raw events), or several replicas' segments of a day
Source: TypeAlias = (pa.Table | pa.RecordBatchReader | Path
                     | tuple[list[Path], pa.RecordBatchReader] | Once)


def parquet_list(paths: list[Path]) -> str:
    """``paths`` as a DuckDB list literal, for ``read_parquet``."""
    return "[" + ", ".join(f"'{_sql_text(str(p))}'" for p in paths) + "]"


def _run(raw: Source, wrap: str = "{}") -> list[tuple[Any, ...]]:
    """The pivot over ``raw`` (see :data:`Source`)."""
    con = duckdb.connect()
    try:
        if isinstance(raw, Path):
            sql = pivot_sql(f"read_parquet('{_sql_text(str(raw))}')")
        elif isinstance(raw, Once):
            sql = pivot_sql(once_sql(raw.paths))
        elif isinstance(raw, tuple):
            files, rest = raw
            con.register("raw", rest)
            sql = pivot_sql(
                "(SELECT * EXCLUDE (seq, received_us, body) FROM"
                f" read_parquet({parquet_list(files)})"
                f" UNION ALL BY NAME SELECT * FROM ({fields_sql('raw')}))")
        else:
            con.register("raw", raw)
            sql = query()
        return con.execute(wrap.format(sql)).fetchall()
    finally:
        con.close()


def aggregate_table(raw: Source) -> tuple[list[tuple[str, list[int]]], int]:
    """Per user (code-point order) the metrics in METRICS order, and the number of events."""
    result = _run(raw)
    rows = sorted(((r[0], [int(v) for v in r[2:]]) for r in result), key=lambda r: r[0])
    return rows, sum(int(r[1]) for r in result)


def aggregate_cells(raw: Source, layout: str) -> tuple[list[tuple[str, str]], int]:
    """Like :func:`aggregate_table`, with each user's cells joined by DuckDB in the layout's
    column order (code-point order of users: DuckDB sorts strings by their bytes)."""
    names = [f"m{i}" for i in range(len(METRICS))]
    cells = ", ".join(f"CAST({names[i]} AS VARCHAR)" for i in column_order(layout))
    wrap = (f"SELECT user_id, events, concat_ws(',', {cells}) FROM ("
            "SELECT * FROM ({}) AS p(user_id, events, " + ", ".join(names) + ")) ORDER BY user_id")
    result = _run(raw, wrap)
    return [(r[0], r[2]) for r in result], sum(int(r[1]) for r in result)


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


def day_source(landing_db: Path, account_id: str, day: date,
               archive_dir: Path | None = None) -> Source:
    """Every raw event of the day: the archive's segments and the unsealed tail when the day
    has segments (:mod:`.archive`), else the landing log."""
    from . import archive  # archive builds on this module

    files = archive.day_files(landing_db, archive_dir, account_id, day) if archive_dir else []
    if files:
        return files, archive.tail(landing_db, account_id, day)
    return read_day(landing_db, account_id, day)


def rebuild_day(landing_db: Path, account_id: str, day: date,
                archive_dir: Path | None = None, layout: str | None = None,
                engine: str = "duckdb", replica: str = "") -> DayAggregate:
    """The full rebuild over every raw event of the day: from the archive and its unsealed
    tail when the day is archived, else from the landing log (with a ``layout``: cells ready
    for its CSV). ``engine`` "spark": Spark over the archive's segments of the day, sealing
    the archive first so that they hold every event of the (closed) day."""
    if engine not in ENGINES:
        raise UsageError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    if engine == "spark":
        if archive_dir is None:
            raise UsageError("the spark engine reads the archive: no archive folder given")
        from . import archive
        archive.seal(landing_db, archive_dir, now=time.time(), replica=replica)
        paths = archive.day_files(landing_db, archive_dir, account_id, day)
        if archive.tail(landing_db, account_id, day).read_all().num_rows:
            raise UsageError(f"{day} has events not sealed yet: the spark engine reads "
                             "closed, sealed days (try again in a moment)")
        return spark_day(account_id, day, paths, layout)
    return source_day(account_id, day, day_source(landing_db, account_id, day, archive_dir),
                      layout)


def source_day(account_id: str, day: date, source: Source, layout: str | None) -> DayAggregate:
    """DuckDB's pivot of ``source`` as the account's day (with a ``layout``: its cells)."""
    if layout is not None:
        cells, events = aggregate_cells(source, layout)
        return DayAggregate(account_id, day, day_window(day), [], events, cells, layout)
    rows, events = aggregate_table(source)
    return DayAggregate(account_id, day, day_window(day), rows, events)


def spark_day(account_id: str, day: date, paths: list[Path], layout: str | None,
              once: bool = False) -> DayAggregate:
    """Spark's pivot of the segments ``paths`` as the account's day (see :func:`source_day`;
    ``once``: as :class:`Once`)."""
    from . import spark

    if layout is not None:
        cells, events = spark.aggregate_cells(paths, layout, once)
        return DayAggregate(account_id, day, day_window(day), [], events, cells, layout)
    rows, events = spark.aggregate_table(paths, once)
    return DayAggregate(account_id, day, day_window(day), rows, events)


def counted_day(landing_db: Path, account_id: str, day: date,
                layout: str | None = None) -> DayAggregate:
    """The fast path: the per-user-day counters (plus any events past their watermark). With a
    ``layout``, the cells come out of SQLite ready for that layout's CSV when they can."""
    conn = landing.connect(landing_db)
    try:
        number = day_window(day)[0] // DAY_US
        if layout is not None:
            fast = counters.read_day_cells(conn, account_id, number, column_order(layout))
            if fast is not None:
                return DayAggregate(account_id, day, day_window(day), [], fast[1], fast[0],
                                    layout)
        rows, events = counters.read_day(conn, account_id, number)
    finally:
        conn.close()
    return DayAggregate(account_id, day, day_window(day), rows, events)


def aggregate_day(landing_db: Path, account_id: str, day: date, *, rebuild: bool = False,
                  layout: str | None = None, archive_dir: Path | None = None,
                  engine: str = "duckdb", replica: str = "") -> DayAggregate:
    """The day's metrics: from the counters, or (``rebuild``, or the spark ``engine``, which
    always rebuilds from the archive) from the raw events."""
    if rebuild or engine != "duckdb":
        return rebuild_day(landing_db, account_id, day, archive_dir, layout, engine, replica)
    return counted_day(landing_db, account_id, day, layout)
