"""The usage dashboard's figures for one account and a range of UTC days.

Everything comes from :mod:`.usage` (the counters the report is made from, at the grain of the
IDE/language breakdown), summed by DuckDB: per day (with the active users), per user over the
range, and per IDE and per language. The admin API's ``usage`` and ``usage.csv`` endpoints and
the dashboard pages are drawn from these functions, so every figure on screen is the one the
API gives and, for delivered days, the one the report's CSV holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa

from . import daily, db, usage
from .breakdown import NOT_RECORDED
from .config import Config
from .errors import UsageError
from .metrics import AI_LINES, EXTRA, METRICS, RATES, Rate, column_metric, metric_columns
from .report import _quoted, neutralise

MAX_DAYS = 366
PAGE_SIZE = 50
METRIC_NAMES = [m.name for m in METRICS]
#: the figures summed per day, user or dimension value: the 44, the events, the EXTRA ones
SUMMED = usage.FIGURES
SORTS = ("user_id", "active_days", *SUMMED, *(r.name for r in RATES))


@dataclass(frozen=True)
class Range:
    """A range of UTC days, both ends included; ``today`` is the day of the query's clock."""

    first: date
    last: date
    today: date

    @property
    def days(self) -> list[date]:
        return [self.first + timedelta(days=i) for i in range((self.last - self.first).days + 1)]


def parse_range(first: str | None, last: str | None, now: float, *, default_days: int = 30,
                ) -> Range:
    """The range of ``from``/``to`` (``YYYY-MM-DD``); by default the ``default_days`` closed
    days up to yesterday. Today is allowed (not final yet); the future is not."""
    today = datetime.fromtimestamp(now, UTC).date()
    if last:
        end = daily.check_day(last)
    elif first:  # from a day on: up to yesterday, or that day when it is today
        end = max(daily.check_day(first), today - timedelta(days=1))
    else:
        end = today - timedelta(days=1)
    start = daily.check_day(first) if first else end - timedelta(days=default_days - 1)
    if start > end:
        raise UsageError(f"from {start} is after to {end}")
    if end > today:
        raise UsageError(f"to {end} is in the future (today is {today} UTC)")
    if (end - start).days + 1 > MAX_DAYS:
        raise UsageError(f"from {start} to {end} is {(end - start).days + 1} days; at most "
                         f"{MAX_DAYS} at a time")
    return Range(start, end, today)


def _lit(text: str) -> str:
    """A SQL string literal (user ids hold no control characters; quotes are doubled)."""
    return "'" + text.replace("'", "''") + "'"


@contextmanager
def _duck(config: Config, account_id: str, r: Range, now: float, user: str | None = None,
          *, cached: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection over the range's usage (of one user when ``user`` is given):
    ``pu`` one row per user and day (a view of the snapshot files and live rows); from the
    cache of the snapshots' columns, ``s`` the sums per day, IDE and language, ``a`` who was
    active when, ``w`` who was active in which IDE and language."""
    found = usage.sources(config, account_id, r.days, now)
    con = duckdb.connect(config={"threads": 2})
    try:
        live = found.live["users"]
        con.register("live_users", pa.concat_tables(live) if live else
                     usage.empty()["users"])
        parts = ["SELECT * FROM live_users"]
        if found.files["users"]:
            listed = ", ".join(_lit(str(f)) for f in found.files["users"])
            parts.append(f"SELECT * FROM read_parquet([{listed}])")
        one = f" WHERE user_id = {_lit(user)}" if user is not None else ""
        con.execute(f"CREATE VIEW pu AS SELECT * FROM ({' UNION ALL '.join(parts)}){one}")
        if not cached:  # the per-user tables only
            yield con
            return
        _cached(con, found, "w0", "dimusers", ("ide", "language", "user_id"))
        con.execute(f"CREATE VIEW w AS SELECT * FROM w0{one}")
        if user is None:
            _cached(con, found, "s", "dimsums", None)
            _cached(con, found, "a", "users", ("day", "user_id"))
        else:  # one user: the sums are the user's rows (the breakdown has no figures per user)
            con.execute("CREATE VIEW s AS SELECT * FROM pu")
            con.execute("CREATE VIEW a AS SELECT day, user_id FROM pu")
        yield con
    finally:
        con.close()


def _cached(con: duckdb.DuckDBPyConnection, found: usage.Sources, name: str, kind: str,
            columns: tuple[str, ...] | None) -> None:
    """Table ``name``: the columns of the ``kind`` snapshots (from the cache) and live rows,
    scanned in place by DuckDB."""
    parts = [t.select(list(columns)) if columns else t for t in found.live[kind]]
    cached = usage.CACHE.concat(found.files[kind], columns)
    if cached is not None:
        parts.append(cached)
    empty = usage.empty()[kind]
    con.register(name, pa.concat_tables(parts, promote_options="default") if parts else
                 (empty.select(list(columns)) if columns else empty))


def _sums() -> str:
    return ", ".join(f'sum("{f}")::BIGINT AS "{f}"' for f in SUMMED)


def _named(values: tuple[Any, ...] | list[Any]) -> dict[str, int]:
    return {f: int(v or 0) for f, v in zip(SUMMED, values, strict=True)}


def _rates(values: dict[str, int]) -> dict[str, float | None]:
    return {r.name: r.of(values) for r in RATES}


def overview(config: Config, account_id: str, r: Range, now: float,
             user: str | None = None, *, with_users: bool = False) -> dict[str, Any]:
    """Per day, totals and the breakdowns of the range (for one user when ``user`` is given:
    then the breakdowns say which IDEs and languages, without figures)."""
    with _duck(config, account_id, r, now, user) as con:
        sums = {row[0]: row[1:] for row in con.execute(
            f"SELECT day, {_sums()} FROM s GROUP BY day").fetchall()}
        users_of = dict(con.execute("SELECT day, count(*) FROM a GROUP BY day").fetchall())
        total = con.execute(f"SELECT {_sums()} FROM s").fetchone()
        active = [row[0] for row in con.execute(
            "SELECT DISTINCT user_id FROM a ORDER BY user_id").fetchall()]
        dims = {dim: _breakdown(con, dim, figures=user is None) for dim in ("ide", "language")}
        per_user = _user_totals(con) if with_users else None  # from the same read
    assert total is not None
    days = []
    for day in r.days:
        values = _named(sums.get(day, [0] * len(SUMMED)))
        days.append({"day": day.isoformat(), "active_users": int(users_of.get(day, 0)),
                     **values, "rates": _rates(values)})
    totals = _named(total)
    return {"days": days, "active_users": len(active),
            "active_days": sum(1 for d in days if d["active_users"]),
            "totals": totals, "rates": _rates(totals), "ai_lines": _ai_lines(totals),
            "by_ide": dims["ide"], "by_language": dims["language"], "active": active,
            "partial_line_rate": any(b["value"] == NOT_RECORDED for b in dims["ide"]),
            **({"per_user": per_user} if per_user is not None else {})}


def _breakdown(con: duckdb.DuckDBPyConnection, dim: str, *, figures: bool,
               ) -> list[dict[str, Any]]:
    users_of = con.execute(f"SELECT {dim}, count(DISTINCT user_id) FROM w GROUP BY {dim}"
                           f" ORDER BY 2 DESC, {dim}").fetchall()
    if not figures:
        return [{"value": value, "active_users": int(n)} for value, n in users_of]
    counts = dict(users_of)
    rows = con.execute(f"SELECT {dim}, {_sums()} FROM s GROUP BY {dim}"
                       f" ORDER BY sum(events) DESC, {dim}").fetchall()
    out = []
    for row in rows:
        values = _named(row[1:])
        out.append({"value": row[0], "active_users": int(counts.get(row[0], 0)), **values,
                    "rates": _rates(values)})
    return out


def _ai_lines(values: dict[str, int]) -> list[dict[str, Any]]:
    return [{"feature": label, "lines": sum(values[n] for n in names), "metrics": list(names)}
            for label, names in AI_LINES]


def _rate_sql(rate: Rate) -> str:
    num = " + ".join(f'"{n}"' for n in rate.numerator)
    den = " + ".join(f'"{n}"' for n in rate.denominator)
    return f"CASE WHEN ({den}) = 0 THEN NULL ELSE ({num}) / ({den}) END"


def users(config: Config, account_id: str, r: Range, now: float, *, search: str = "",
          sort: str = "events", descending: bool = True, page: int = 1,
          size: int = PAGE_SIZE) -> dict[str, Any]:
    """One page of the users active in the range, with their totals and rates."""
    if sort not in SORTS:
        raise UsageError(f"sort {sort!r} is not one of: {', '.join(SORTS)}")
    if page < 1 or not 1 <= size <= 1000:
        raise UsageError("page must be >= 1 and size from 1 to 1000")
    order = "DESC" if descending else "ASC"
    where, args = ("WHERE contains(lower(user_id), lower(?))", [search]) if search else ("", [])
    per_user = (f"SELECT user_id, count(*) AS active_days, {_sums()} FROM pu {where}"
                " GROUP BY user_id")
    rates = ", ".join(f'{_rate_sql(rt)} AS "{rt.name}"' for rt in RATES)
    with _duck(config, account_id, r, now, cached=False) as con:
        con.execute(f"CREATE TEMP TABLE t AS SELECT *, {rates} FROM ({per_user})", args)
        count = con.execute("SELECT count(*) FROM t").fetchone()
        assert count is not None
        pages = max(1, -(-int(count[0]) // size))
        page = min(page, pages)  # past the last page (the table shrank, or a hand-made link)
        rows = con.execute(
            f"SELECT * FROM t ORDER BY \"{sort}\" {order} NULLS LAST, user_id LIMIT ? OFFSET ?",
            [size, (page - 1) * size]).fetchall()
    out = []
    for row in rows:
        values = _named(row[2:2 + len(SUMMED)])
        out.append({"user_id": row[0], "active_days": int(row[1]), **values,
                    "rates": _rates(values)})
    return {"users": out, "total": int(count[0]), "page": page, "size": size,
            "pages": pages, "sort": sort,
            "descending": descending, "search": search}


def user_totals(config: Config, account_id: str, r: Range, now: float,
                ) -> list[tuple[str, dict[str, int]]]:
    """Every user active in the range (code-point order) with the 44 metrics summed."""
    with _duck(config, account_id, r, now, cached=False) as con:
        return _user_totals(con)


def _user_totals(con: duckdb.DuckDBPyConnection) -> list[tuple[str, dict[str, int]]]:
    sums = ", ".join(f'sum("{f}")::BIGINT' for f in METRIC_NAMES)
    rows = con.execute(f"SELECT user_id, {sums} FROM pu GROUP BY user_id"
                       " ORDER BY user_id").fetchall()
    return [(row[0], dict(zip(METRIC_NAMES, map(int, row[1:]), strict=True))) for row in rows]


def export_csv(rows: list[tuple[str, dict[str, int]]], layout: str) -> bytes:
    """The users table as the report writes it: ``UserId`` (quoted, neutralised) then the 44
    metric columns of the layout, in its order."""
    names = column_metric(layout)
    lines = [",".join(["UserId", *metric_columns(layout)])]
    for user, values in rows:
        lines.append(",".join([_quoted(neutralise(user)[0]), *(str(values[n]) for n in names)]))
    return ("\n".join(lines) + "\n").encode()


def idle_seats(conn: db.Connection, account_id: str, active: list[str],
               now: float) -> list[str]:
    """Users who hold a live telemetry token of the account but were not active."""
    holders = {row[0] for row in conn.execute(
        "SELECT DISTINCT principal FROM tokens WHERE account_id = ? AND kind = 'user'"
        " AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)",
        (account_id, now))}
    return sorted(holders - set(active))


def freshness(conn: db.Connection, account_id: str, r: Range, now: float,
              ) -> dict[str, Any]:
    """Up to when data is included, and each day's delivery state."""
    delivered = {d["day"]: d for d in daily.status(conn, account_id)["days"]}  # type: ignore[attr-defined]
    states = []
    for day in r.days:
        text = day.isoformat()
        if day >= r.today:
            state = "open"  # not closed yet: the figures still grow
        else:
            state = delivered[text]["state"] if text in delivered else "not delivered"
        states.append({"day": text, "state": state, "final": day < r.today})
    as_of = datetime.fromtimestamp(int(now), UTC)
    return {"as_of": as_of.isoformat().replace("+00:00", "Z"),
            "includes_today": r.last >= r.today, "days": states}


def definitions() -> dict[str, Any]:
    """What every figure means: from the metric table, the EXTRA figures and the rates."""
    figures = {m.name: {"description": m.description, "rule": m.rule.text()}
               for m in (*METRICS, *EXTRA)}
    figures["events"] = {"description": "Telemetry events received (every member counts)",
                         "rule": "count of accepted events"}
    figures["active_users"] = {"description": "Users who sent at least one accepted event",
                               "rule": "number of distinct users with an event"}
    rates = {r.name: {"label": r.label, "formula": r.formula()} for r in RATES}
    return {"figures": figures, "rates": rates}


def csv_names(layout: str) -> dict[str, str]:
    """Each metric's name in the layout's CSV header."""
    return dict(zip(column_metric(layout), metric_columns(layout), strict=True))


def renamed(values: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """The figures with the metric names of a CSV header (see :func:`csv_names`)."""
    return {names.get(k, k): v for k, v in values.items()}


def page_data(config: Config, conn: db.Connection, account_id: str, r: Range, now: float,
              user: str | None = None, *, with_users: bool = False) -> dict[str, Any]:
    """What the overview (or one user's page) shows: :func:`overview`, the idle seats (on the
    account's overview) and the freshness of the range."""
    data = overview(config, account_id, r, now, user, with_users=with_users)
    active = data.pop("active")
    idle = idle_seats(conn, account_id, active, now) if user is None else []
    return {**data, "idle_seats": {"count": len(idle), "users": idle},
            "freshness": freshness(conn, account_id, r, now)}


def document(config: Config, conn: db.Connection, account_id: str, layout: str,
             r: Range, now: float) -> dict[str, Any]:
    """The admin API's ``usage`` answer: per day and per user, by the layout's CSV names,
    with the totals, rates, breakdowns, idle seats and freshness of the range."""
    data = page_data(config, conn, account_id, r, now, with_users=True)
    per_user = data.pop("per_user")
    names = csv_names(layout)
    return {
        "account_id": account_id, "from": r.first.isoformat(), "to": r.last.isoformat(),
        "layout": layout,
        "days": [renamed(d, names) for d in data.pop("days")],
        "users": [{"user_id": u, **renamed(v, names)} for u, v in per_user],
        "totals": renamed(data.pop("totals"), names),
        **data,
    }


PRESETS = {"7": 7, "30": 30, "90": 90}


def preset_range(preset: str, now: float) -> tuple[str, str]:
    """The ``from``/``to`` of a preset: the last 7, 30 or 90 closed days, or today so far."""
    today = datetime.fromtimestamp(now, UTC).date()
    if preset == "today":
        return today.isoformat(), today.isoformat()
    if preset not in PRESETS:
        raise UsageError(f"preset {preset!r} is not one of 7, 30, 90, today")
    last = today - timedelta(days=1)
    return (last - timedelta(days=PRESETS[preset] - 1)).isoformat(), last.isoformat()
