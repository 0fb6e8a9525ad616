"""The audit log of the control database: who changed what, when, before and after.

Settings changes, token issues and revokes, report replacements and validations that change
whether manifests are written. Entries are written inside the transaction that makes the change,
and each account's entries name no other account.
"""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime

from . import db


def local_actor() -> str:
    """How the audit log names someone using the CLI on this machine."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"cli:{user}"


def record(conn: db.Connection, *, now: float, account_id: str, actor: str, action: str,
           target: str, before: object = None, after: object = None) -> None:
    """Append one audit entry (call inside the transaction that makes the change)."""
    conn.execute(
        "INSERT INTO audit (at, account_id, actor, action, target, before, after)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (now, account_id, actor, action, target,
         None if before is None else json.dumps(before, sort_keys=True),
         None if after is None else json.dumps(after, sort_keys=True)))


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: float
    account_id: str
    actor: str
    action: str
    target: str
    before: object
    after: object

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "at": iso(self.at), "account_id": self.account_id,
                "actor": self.actor, "action": self.action, "target": self.target,
                "before": self.before, "after": self.after}


def audit_log(conn: db.Connection, account_id: str, *, limit: int | None = None,
              before_id: int | None = None) -> list[AuditEntry]:
    """An account's audit entries, newest first."""
    rows = conn.execute(
        "SELECT id, at, account_id, actor, action, target, before, after FROM audit"
        " WHERE account_id = ? AND id < ? ORDER BY id DESC"
        + ("" if limit is None else " LIMIT ?"),
        (account_id, before_id if before_id is not None else 2**62)
        + (() if limit is None else (limit,)))
    return [AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5],
                       None if r[6] is None else json.loads(r[6]),
                       None if r[7] is None else json.loads(r[7])) for r in rows]


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
