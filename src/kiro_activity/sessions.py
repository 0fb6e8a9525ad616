"""Admin web sessions in the control database: only a hash of each session id is kept, and a
session ends with its token (revoked or expired) or after :data:`SESSION_SECONDS`."""

from __future__ import annotations

import secrets

from . import db
from .store import Principal, hash_token, transaction

SESSION_SECONDS = 8 * 3600


def open_session(conn: db.Connection, principal: Principal, *, now: float) -> str:
    """A new session id for a logged-in admin (only its hash is stored)."""
    session_id = secrets.token_urlsafe(32)
    with transaction(conn):
        conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
        conn.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)",
                     (hash_token(session_id), principal.token_id, now, now + SESSION_SECONDS))
    return session_id


def session_principal(conn: db.Connection, session_id: str, *,
                      now: float) -> Principal | None:
    """The admin of a live session whose token is still live, or None."""
    row = conn.execute(
        "SELECT t.id, t.account_id, t.principal, t.kind, t.expires_at FROM sessions s"
        " JOIN tokens t ON t.id = s.token_id"
        " WHERE s.id_hash = ? AND s.expires_at > ? AND t.revoked_at IS NULL",
        (hash_token(session_id), now)).fetchone()
    if row is None or row[3] != "admin" or (row[4] is not None and row[4] <= now):
        return None
    scopes = frozenset(r[0] for r in conn.execute(
        "SELECT account_id FROM token_scopes WHERE token_id = ?", (row[0],)))
    return Principal(row[0], row[1], row[2], row[3], row[4], scopes)


def close_session(conn: db.Connection, session_id: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM sessions WHERE id_hash = ?", (hash_token(session_id),))
