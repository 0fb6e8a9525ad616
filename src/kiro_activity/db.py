"""The control database's two back ends: SQLite in the data folder (the default), or PostgreSQL
selected by a URL (``KIRO_ACTIVITY_DATABASE_URL=postgresql://...``), for replicas that share
their accounts, tokens, settings, delivery ledger, audit log and sessions.

The control modules speak one SQL, written to run on both (``ON CONFLICT ... DO UPDATE``,
``RETURNING``, standard types) through the small part of the DB-API that ``sqlite3`` offers:
``execute``, ``executemany``, ``executescript``, cursors with ``fetchone``/``fetchall``/
``rowcount``. :class:`PgConnection` gives PostgreSQL that surface and changes only what has no
common spelling:

* ``?`` placeholders become ``%s`` (and a literal ``%`` becomes ``%%``);
* ``group_concat(x, ',')`` becomes ``string_agg(x, ',')``;
* ``BEGIN IMMEDIATE`` (SQLite: take the database's write lock now) becomes ``BEGIN`` and a
  transaction-scoped advisory lock that every writer takes: writers are serialized exactly as
  in SQLite, so a read-then-write in a transaction (plan a day unless planned, take a lease
  unless held) means the same on both;
* Python booleans are passed as 0/1, the integers the schema stores.

The schema is SQLite's, with its types spelled for PostgreSQL (:func:`pg_schema`).
"""

from __future__ import annotations

import functools
import re
import sqlite3
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

#: the advisory lock key of "a control writer's transaction" (any constant of the project's own)
WRITE_LOCK = 0x6B69726F  # "kiro"
URL_SCHEMES = ("postgresql://", "postgres://")


def is_url(target: object) -> bool:
    return isinstance(target, str) and target.startswith(URL_SCHEMES)


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - the extra is part of the dev install
        from .errors import UsageError
        raise UsageError("a PostgreSQL control database needs psycopg: "
                         "pip install 'kiro-activity[postgres]'") from None
    return psycopg


def errors() -> tuple[type[BaseException], ...]:
    """The database errors a command reports as a message: SQLite's, and PostgreSQL's once
    psycopg is in use (not imported for it: that costs a SQLite-only command 0.3 s)."""
    psycopg = sys.modules.get("psycopg")
    return (sqlite3.Error,) if psycopg is None else (sqlite3.Error, psycopg.Error)


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """One statement of the common SQL, as PostgreSQL spells it."""
    stripped = sql.strip()
    if stripped.upper() == "BEGIN IMMEDIATE":
        return f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})"
    out = sql.replace("%", "%%").replace("?", "%s")
    return re.sub(r"\bgroup_concat\(", "string_agg(", out)


def _params(params: Sequence[Any] | None) -> tuple[Any, ...] | None:
    if params is None:
        return None
    return tuple(int(p) if isinstance(p, bool) else p for p in params)


class PgConnection:
    """A PostgreSQL connection with the surface of an autocommit ``sqlite3.Connection``."""

    def __init__(self, url: str) -> None:
        psycopg = _psycopg()
        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=10,
                                         application_name="kiro-activity")
        except psycopg.OperationalError as exc:
            raise psycopg.OperationalError(
                f"cannot reach the control database {redact(url)}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc}") from None

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        return self._conn.execute(translate(sql), _params(params), prepare=False)

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Any:
        cur = self._conn.cursor()
        rows = [_params(p) for p in seq]
        if rows:
            cur.executemany(translate(sql), rows)
        return cur

    def executescript(self, script: str) -> None:
        self._conn.execute(script)

    def try_lock(self, name: str) -> bool:
        """Take the advisory lock of ``name`` for this connection's session, unless another
        session holds it: a lease that ends with the holder's connection, even a killed one."""
        row = self._conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                                 (name,)).fetchone()
        return bool(row[0])

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PgConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def upsert(table: str, key: Sequence[str], columns: Sequence[str], also: str = "") -> str:
    """``INSERT`` a row of ``key`` and ``columns`` (in that order), or, when its key is there,
    set its ``columns`` to the new values (and ``also``, more assignments): the spelling both
    back ends share (``INSERT OR REPLACE`` is SQLite's only)."""
    names = [*key, *columns]
    sets = ", ".join([*(f"{c} = excluded.{c}" for c in columns), *([also] if also else [])])
    return (f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
            f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}")


#: a control database connection: SQLite's, or PostgreSQL's behind the same surface
Connection: TypeAlias = "sqlite3.Connection | PgConnection"


_TYPES = [
    (re.compile(r"\bINTEGER PRIMARY KEY\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
]


def pg_schema(sqlite_schema: str) -> str:
    """SQLite's schema with its types spelled for PostgreSQL (and without SQL comments)."""
    out = re.sub(r"--[^\n]*", "", sqlite_schema)
    for pattern, spelled in _TYPES:
        out = pattern.sub(spelled, out)
    return out.replace(" WITHOUT ROWID", "")


def describe(target: Path | str) -> str:
    """How a message names the control database."""
    return redact(target) if isinstance(target, str) else str(target)
