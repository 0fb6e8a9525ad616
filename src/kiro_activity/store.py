"""Control state of the embedded default: accounts and tokens, in SQLite (WAL) in the data folder.

The schema also holds the settings, the delivery ledger, the audit log (:mod:`.audit`) and the
admins' web sessions (:mod:`.sessions`).

Several processes share it: the running service reads it, CLI commands change it at the same
time. Tokens are stored only as SHA-256 hashes: they are 256-bit random secrets, so a fast hash
is enough (no password stretching is needed), and the plain token is shown once, at issue.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sqlite3
import string
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from . import db
from .audit import iso, record
from .db import PgConnection
from .errors import DamagedDatabaseError, UsageError

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    account_id  TEXT PRIMARY KEY,
    region      TEXT NOT NULL,
    profile_arn TEXT NOT NULL UNIQUE,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id          INTEGER PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    account_id  TEXT NOT NULL REFERENCES accounts(account_id),
    principal   TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('user', 'admin')),
    created_at  REAL NOT NULL,
    expires_at  REAL,
    revoked_at  REAL
);
CREATE INDEX IF NOT EXISTS tokens_by_principal ON tokens(account_id, principal);
-- the accounts an admin token may administer (a user token speaks only for tokens.account_id)
CREATE TABLE IF NOT EXISTS token_scopes (
    token_id    INTEGER NOT NULL REFERENCES tokens(id),
    account_id  TEXT NOT NULL REFERENCES accounts(account_id),
    PRIMARY KEY (token_id, account_id)
);
CREATE INDEX IF NOT EXISTS token_scopes_by_account ON token_scopes(account_id);
-- web sessions of admins: only a hash of the session id is kept
CREATE TABLE IF NOT EXISTS sessions (
    id_hash     TEXT PRIMARY KEY,
    token_id    INTEGER NOT NULL REFERENCES tokens(id),
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL
);
-- every settings change, token issue and revoke, and report replacement: who, when, before, after
CREATE TABLE IF NOT EXISTS audit (
    id          INTEGER PRIMARY KEY,
    at          REAL NOT NULL,
    account_id  TEXT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    before      TEXT,
    after       TEXT
);
CREATE INDEX IF NOT EXISTS audit_by_account ON audit(account_id, id);
CREATE TABLE IF NOT EXISTS settings (
    account_id     TEXT PRIMARY KEY REFERENCES accounts(account_id),
    enabled        INTEGER NOT NULL DEFAULT 0,
    s3_uri         TEXT,
    layout         TEXT NOT NULL DEFAULT 'delivered',
    sse            TEXT NOT NULL DEFAULT 'AES256',
    kms_key_arn    TEXT,
    enabled_since  TEXT,
    updated_at     REAL,
    manifest       INTEGER NOT NULL DEFAULT 1,
    warnings       TEXT
);
-- the delivery ledger: a drop is planned (keys, bytes, digests) before its first put
CREATE TABLE IF NOT EXISTS drops (
    account_id   TEXT NOT NULL,
    day          TEXT NOT NULL,
    layout       TEXT NOT NULL,
    destination  TEXT NOT NULL,
    users        INTEGER NOT NULL,
    events       INTEGER NOT NULL,
    planned_at   REAL NOT NULL,
    delivered_at REAL,
    replacements INTEGER NOT NULL DEFAULT 0,
    attempts     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, day)
);
CREATE TABLE IF NOT EXISTS drop_objects (
    account_id   TEXT NOT NULL,
    day          TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    key          TEXT NOT NULL,
    content_type TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    size         INTEGER NOT NULL,
    data         BLOB NOT NULL,
    delivered_at REAL,
    result       TEXT,
    PRIMARY KEY (account_id, day, seq)
);
CREATE TABLE IF NOT EXISTS delivery_errors (
    account_id    TEXT PRIMARY KEY,
    at            REAL NOT NULL,
    day           TEXT NOT NULL,
    code          TEXT NOT NULL,
    message       TEXT NOT NULL,
    configuration INTEGER NOT NULL
);
-- the last failure to put the telemetry archive in the account's bucket, until a put succeeds
CREATE TABLE IF NOT EXISTS archive_errors (
    account_id TEXT PRIMARY KEY,
    at         REAL NOT NULL,
    message    TEXT NOT NULL
);
-- the replicas sharing this control database (replicas.py): each must have sealed a day before
-- any of them produces the day's report
CREATE TABLE IF NOT EXISTS replicas (
    replica_id TEXT PRIMARY KEY,
    first_seen REAL NOT NULL,
    seen_at    REAL NOT NULL,
    retired_at REAL
);
-- a replica has sealed every event it received on the day: its segments of the day are final
CREATE TABLE IF NOT EXISTS replica_days (
    replica_id TEXT NOT NULL,
    day        TEXT NOT NULL,
    at         REAL NOT NULL,
    PRIMARY KEY (replica_id, day)
);
-- those final segments, per account (files of the shared archive folder)
CREATE TABLE IF NOT EXISTS replica_segments (
    account_id TEXT NOT NULL,
    day        TEXT NOT NULL,
    replica_id TEXT NOT NULL,
    name       TEXT NOT NULL,
    events     INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    PRIMARY KEY (account_id, day, replica_id, name)
);
"""

ACCOUNT_RE = re.compile(r"\d{12}")
REGION_RE = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")
PROFILE_ARN_RE = re.compile(
    r"arn:aws:codewhisperer:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):profile/[A-Za-z0-9]{12}"
)
TOKEN_PREFIX = "kat_"
TOKEN_LENGTH = len(TOKEN_PREFIX) + 43  # 32 random bytes, base64url
#: no C0/C1 controls, no surrogates, no bidirectional controls (with those, one user id can be
#: made to look like another on the dashboard and in a spreadsheet)
USER_RE = re.compile(r"[^\x00-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u202a-\u202e"
                     r"\u2066-\u2069]{1,256}")


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    region: str
    profile_arn: str


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a token speaks for: a user (telemetry, of one account) or an admin (of ``scopes``)."""

    token_id: int
    account_id: str
    principal: str
    kind: str
    expires_at: float | None
    scopes: frozenset[str] = frozenset()

    def may_administer(self, account_id: str) -> bool:
        return self.kind == "admin" and account_id in self.scopes

    @property
    def actor(self) -> str:
        """How the audit log names this principal."""
        return f"{self.kind}:{self.principal} (token {self.token_id})"


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as listed: never the token itself."""

    token_id: int
    account_id: str
    principal: str
    kind: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    scopes: tuple[str, ...]


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def private_dir(path: Path) -> None:
    """Create the data folder ``path`` (and its parents) readable by its owner only: it holds
    token hashes, raw telemetry and reports (0700; files made in it get 0600 from the umask)."""
    os.umask(0o077)
    path.mkdir(parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    for entry in path.iterdir():  # those of an older release
        if entry.is_file() and entry.stat().st_mode & 0o077:
            entry.chmod(0o600)


def damaged(path: Path, exc: sqlite3.DatabaseError) -> DamagedDatabaseError:
    """The error for a database file SQLite cannot use, naming the file."""
    return DamagedDatabaseError(f"{path}: {exc}; the file is damaged or not a SQLite database "
                                "(restore it from a backup, or move it away to start empty)")


def check_database(path: Path) -> None:
    """``PRAGMA quick_check`` of a database file (the service runs it at start)."""
    if not path.exists():
        return
    try:
        conn = sqlite3.connect(path, timeout=30.0)
        try:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise damaged(path, exc) from None
    if problems != ["ok"]:
        found = "; ".join(line for p in problems for line in str(p).splitlines() if line)
        raise DamagedDatabaseError(f"{path}: PRAGMA quick_check found damage: "
                                   f"{found} (restore it from a backup)")  # on one line


#: a counter that every change to what authenticates (accounts, tokens, scopes) moves, so that
#: a cache of token lookups sees another process's change (SQLite has ``PRAGMA data_version``)
PG_VERSION_SCHEMA = """
CREATE TABLE IF NOT EXISTS control_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO control_version VALUES (1, 0) ON CONFLICT DO NOTHING;
CREATE OR REPLACE FUNCTION kiro_control_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE control_version SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END $$;
"""
VERSIONED = ("accounts", "tokens", "token_scopes")

Connection = db.Connection
#: where the control state is: the SQLite file, or a PostgreSQL URL (``Config.control``)
Target: TypeAlias = "Path | str"


def exists(target: Target) -> bool:
    """Whether there is control state to read (a PostgreSQL database is always there)."""
    return db.is_url(target) or Path(target).exists()


def connect(target: Target) -> Connection:
    """Open (and create) the control database for use by one thread: the SQLite file at
    ``target``, or the PostgreSQL database of a ``postgresql://`` URL."""
    if db.is_url(target):
        return _connect_pg(str(target))
    path = Path(target)
    private_dir(path.parent)
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(SCHEMA)
        _migrate(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        if isinstance(exc, sqlite3.OperationalError):  # locked, I/O, full disk: not damage
            raise
        raise damaged(path, exc) from None
    return conn


_pg_ready: set[str] = set()  # URLs whose schema this process has made sure of


def _connect_pg(url: str) -> PgConnection:
    conn = PgConnection(url)
    if url in _pg_ready:
        return conn
    try:
        with transaction(conn):  # one creator at a time (the schema's statements race)
            conn.executescript(db.pg_schema(SCHEMA) + PG_VERSION_SCHEMA)
            for table, column, declaration in MIGRATIONS:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} "
                             f"{db.pg_schema(declaration)}")
            for table in VERSIONED:
                conn.execute(f"CREATE OR REPLACE TRIGGER {table}_changed AFTER INSERT OR UPDATE"
                             f" OR DELETE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION"
                             " kiro_control_changed()")
    except BaseException:
        conn.close()
        raise
    _pg_ready.add(url)
    return conn


def data_version(conn: Connection) -> int:
    """A number that changes when another connection commits a change (SQLite: any change;
    PostgreSQL: one to accounts, tokens or scopes)."""
    if isinstance(conn, PgConnection):
        return int(conn.execute("SELECT version FROM control_version").fetchone()[0])
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


#: columns added after the first release: (table, column, declaration)
MIGRATIONS = [
    ("settings", "manifest", "INTEGER NOT NULL DEFAULT 1"),
    ("settings", "warnings", "TEXT"),
]


def _migrate(conn: sqlite3.Connection) -> None:
    """Add the columns a data folder of an older release lacks."""
    for table, column, declaration in MIGRATIONS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            with transaction(conn):
                have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


@contextmanager
def transaction(conn: Connection) -> Iterator[Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (on PostgreSQL, writers are
    serialized the same way: :func:`.db.translate`)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def check_account_id(account_id: str) -> str:
    if not ACCOUNT_RE.fullmatch(account_id):
        raise UsageError(f"account id {account_id!r} is not a 12-digit AWS account id")
    return account_id


def add_account(
    conn: Connection, account_id: str, region: str, *, now: float,
    profile_arn: str | None = None,
) -> Account:
    """Register an account; the profile ARN is made up when not given."""
    check_account_id(account_id)
    if not REGION_RE.fullmatch(region):
        raise UsageError(f"Region {region!r} is not an AWS Region name such as us-east-1")
    if profile_arn is None:
        alphabet = string.ascii_uppercase + string.digits
        suffix = "".join(secrets.choice(alphabet) for _ in range(12))
        profile_arn = f"arn:aws:codewhisperer:{region}:{account_id}:profile/{suffix}"
    m = PROFILE_ARN_RE.fullmatch(profile_arn)
    if not m:
        raise UsageError(
            f"profile ARN {profile_arn!r} is not of the form "
            "arn:aws:codewhisperer:REGION:ACCOUNT:profile/12-ALPHANUMERICS"
        )
    if m["account"] != account_id or m["region"] != region:
        raise UsageError(
            f"profile ARN {profile_arn!r} names account {m['account']} in {m['region']}, "
            f"not account {account_id} in {region}"
        )
    with transaction(conn):
        if get_account(conn, account_id) is not None:
            raise UsageError(f"account {account_id} already exists")
        conn.execute(
            "INSERT INTO accounts VALUES (?, ?, ?, ?)", (account_id, region, profile_arn, now)
        )
    return Account(account_id, region, profile_arn)


def get_account(conn: Connection, account_id: str) -> Account | None:
    row = conn.execute(
        "SELECT account_id, region, profile_arn FROM accounts WHERE account_id = ?", (account_id,)
    ).fetchone()
    return Account(*row) if row else None


def require_account(conn: Connection, account_id: str) -> Account:
    account = get_account(conn, check_account_id(account_id))
    if account is None:
        raise UsageError(
            f"account {account_id} does not exist; add it with "
            f"'kiro-activity accounts add {account_id} --region REGION'"
        )
    return account


def list_accounts(conn: Connection) -> list[Account]:
    rows = conn.execute("SELECT account_id, region, profile_arn FROM accounts ORDER BY 1")
    return [Account(*row) for row in rows]


def _check_names(names: list[str]) -> None:
    if not names:
        raise UsageError("name at least one user")
    for name in names:
        if not USER_RE.fullmatch(name) or name != name.strip():
            raise UsageError(
                f"user id {name!r} must be 1-256 characters of valid UTF-8, without control "
                "characters (U+0000-U+001F, U+007F-U+009F), bidirectional controls "
                "(U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069) or surrounding spaces"
            )


def issue_tokens(
    conn: Connection, account_id: str, principals: Iterable[str], *, now: float,
    actor: str, kind: str = "user", expires_at: float | None = None,
    scopes: Iterable[str] = (),
) -> list[tuple[str, str]]:
    """Issue one new token per principal, in one transaction; returns (principal, token).

    An admin token administers ``account_id`` and every account of ``scopes``. Each issue is
    written to the audit log of every account it concerns (the token itself never is).
    """
    if kind not in ("user", "admin"):
        raise UsageError(f"token kind {kind!r} must be user or admin")
    accounts = list(dict.fromkeys([account_id, *scopes]))
    if kind == "user" and len(accounts) > 1:
        raise UsageError("a telemetry token belongs to exactly one account: give one --account")
    for account in accounts:
        require_account(conn, account)
    names = list(principals)
    _check_names(names)
    issued = [(name, TOKEN_PREFIX + secrets.token_urlsafe(32)) for name in names]
    with transaction(conn):
        for name, tok in issued:
            token_id = int(conn.execute(
                "INSERT INTO tokens (token_hash, account_id, principal, kind, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (hash_token(tok), account_id, name, kind, now, expires_at)).fetchone()[0])
            after: dict[str, object] = {"token_id": token_id, "kind": kind, "user": name,
                     "expires_at": iso(expires_at)}
            if kind == "admin":  # each account's log names no other account
                conn.executemany("INSERT INTO token_scopes VALUES (?, ?)",
                                 [(token_id, a) for a in accounts])
            for account in accounts:
                record(conn, now=now, account_id=account, actor=actor, action="token.issue",
                       target=f"token {token_id}", after=after)
    return issued


def _in_account(account_id: str) -> tuple[str, list[object]]:
    """SQL for 'the token concerns this account' (its own account, or an admin scope)."""
    return ("(account_id = ? OR id IN (SELECT token_id FROM token_scopes WHERE account_id = ?))",
            [account_id, account_id])


def revoke_tokens(
    conn: Connection, account_id: str, *, now: float, actor: str,
    principal: str | None = None, token: str | None = None, token_id: int | None = None,
) -> int:
    """Revoke the live tokens selected by user, token or id (among the account's tokens)."""
    require_account(conn, account_id)
    clause, args = _in_account(account_id)
    where = [clause, "revoked_at IS NULL"]
    if principal is not None:
        where.append("principal = ?")
        args.append(principal)
    if token is not None:
        where.append("token_hash = ?")
        args.append(hash_token(token))
    if token_id is not None:
        where.append("id = ?")
        args.append(token_id)
    if len(where) == 2:
        raise UsageError("say which tokens to revoke: --user, --token or --id")
    with transaction(conn):
        rows = conn.execute(
            f"SELECT id, kind, principal FROM tokens WHERE {' AND '.join(where)}", args
        ).fetchall()
        for tid, kind, name in rows:
            conn.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", (now, tid))
            conn.execute("DELETE FROM sessions WHERE token_id = ?", (tid,))
            concerned = [account_id, *(
                r[0] for r in conn.execute(
                    "SELECT account_id FROM token_scopes WHERE token_id = ? AND account_id != ?",
                    (tid, account_id)))]
            for account in concerned:
                record(conn, now=now, account_id=account, actor=actor, action="token.revoke",
                       target=f"token {tid}",
                       before={"token_id": tid, "kind": kind, "user": name, "revoked_at": None},
                       after={"token_id": tid, "kind": kind, "user": name,
                              "revoked_at": iso(now)})
    return len(rows)


def list_tokens(conn: Connection, account_id: str) -> list[TokenInfo]:
    """The account's tokens, admin tokens that administer it included (never the tokens)."""
    require_account(conn, account_id)
    clause, args = _in_account(account_id)
    rows = conn.execute(
        "SELECT id, account_id, principal, kind, created_at, expires_at, revoked_at,"
        " (SELECT group_concat(account_id, ',') FROM token_scopes s WHERE s.token_id = t.id)"
        f" FROM tokens t WHERE {clause} ORDER BY id", args)
    return [TokenInfo(r[0], r[1], r[2], r[3], r[4], r[5], r[6],
                      tuple(sorted(r[7].split(","))) if r[7] else ()) for r in rows]


def lookup_token(conn: Connection, token: str, *, now: float) -> Principal | None:
    """The principal of a live token, or None for an unknown, revoked or expired one."""
    row = conn.execute(
        "SELECT id, account_id, principal, kind, expires_at FROM tokens"
        " WHERE token_hash = ? AND revoked_at IS NULL",
        (hash_token(token),),
    ).fetchone()
    if row is None:
        return None
    scopes: frozenset[str] = frozenset()
    if row[3] == "admin":
        scopes = frozenset(r[0] for r in conn.execute(
            "SELECT account_id FROM token_scopes WHERE token_id = ?", (row[0],)))
    principal = Principal(row[0], row[1], row[2], row[3], row[4], scopes)
    if principal.expires_at is not None and principal.expires_at <= now:
        return None
    return principal
