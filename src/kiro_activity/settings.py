"""Per-account report settings (minimal form; the admin issue adds the bucket checks).

``enabled``, ``s3_uri``, ``layout``, ``sse``, ``kms_key_arn``, kept as one declarative table from
which the CLI help is derived. Saved only when every value is valid; every problem is listed.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import asdict, dataclass, replace
from datetime import date
from typing import Any

from .errors import UsageError
from .metrics import LAYOUTS
from .report import longest_key_bytes
from .store import require_account, transaction

#: name, type, default, help: the one place settings are described
TABLE: list[tuple[str, str, object, str]] = [
    ("enabled", "bool", False, "Collect granular metrics per user: produce and deliver reports."),
    ("s3_uri", "str", None, "Where reports go: s3://bucket/prefix/ (none: the local folder)."),
    ("layout", "str", "documented", "CSV layout: documented or delivered."),
    ("sse", "str", "AES256", "Server-side encryption of report objects: AES256 or aws:kms."),
    ("kms_key_arn", "str", None, "Full KMS key ARN (not an alias) when sse is aws:kms."),
]
KMS_ARN = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+")


@dataclass(frozen=True)
class Settings:
    account_id: str
    enabled: bool = False
    s3_uri: str | None = None
    layout: str = "documented"
    sse: str = "AES256"
    kms_key_arn: str | None = None
    enabled_since: date | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["enabled_since"] = self.enabled_since.isoformat() if self.enabled_since else None
        return out


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix/`` -> (bucket, prefix without surrounding slashes)."""
    if not uri.startswith("s3://"):
        raise UsageError(f"S3 URI {uri!r} must start with s3://")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


def problems(s: Settings, region: str) -> list[str]:
    """Every problem with these settings (empty: valid)."""
    out = []
    if s.layout not in LAYOUTS:
        out.append(f"layout {s.layout!r} must be one of: {', '.join(LAYOUTS)}")
    if s.sse not in ("AES256", "aws:kms"):
        out.append(f"sse {s.sse!r} must be AES256 or aws:kms")
    if s.sse == "aws:kms" and not (s.kms_key_arn and KMS_ARN.fullmatch(s.kms_key_arn)):
        out.append("sse aws:kms needs --kms-key-arn with the full key ARN "
                   "(arn:aws:kms:REGION:ACCOUNT:key/ID), not an alias")
    if s.s3_uri is not None:
        try:
            bucket, prefix = split_s3_uri(s.s3_uri)
        except UsageError as exc:
            return [*out, str(exc)]
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket) or ".." in bucket:
            out.append(f"bucket name {bucket!r} is not a valid S3 bucket name")
        if not prefix:
            out.append("a prefix is required: the CSV file cannot be saved in the root of the "
                       "bucket (use s3://bucket/prefix/)")
        elif longest_key_bytes(prefix, s.account_id, region) > 1024:
            out.append("the prefix is too long: object keys would pass 1,024 bytes")
    return out


def get(conn: sqlite3.Connection, account_id: str) -> Settings:
    require_account(conn, account_id)
    row = conn.execute(
        "SELECT enabled, s3_uri, layout, sse, kms_key_arn, enabled_since FROM settings"
        " WHERE account_id = ?", (account_id,)).fetchone()
    if row is None:
        return Settings(account_id)
    since = date.fromisoformat(row[5]) if row[5] else None
    return Settings(account_id, bool(row[0]), row[1], row[2], row[3], row[4], since)


def update(conn: sqlite3.Connection, account_id: str, *, now: float, today: date,
           **changes: Any) -> Settings:
    """Apply changes (None: unchanged), validate everything, save or raise with every problem."""
    account = require_account(conn, account_id)
    current = get(conn, account_id)
    wanted = replace(current, **{k: v for k, v in changes.items() if v is not None})
    if wanted.enabled and not current.enabled:
        wanted = replace(wanted, enabled_since=today)
    found = problems(wanted, account.region)
    if found:
        raise UsageError("settings not saved:\n- " + "\n- ".join(found))
    with transaction(conn):
        conn.execute(
            "INSERT OR REPLACE INTO settings VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (account_id, int(wanted.enabled), wanted.s3_uri, wanted.layout, wanted.sse,
             wanted.kms_key_arn,
             wanted.enabled_since.isoformat() if wanted.enabled_since else None, now))
    return wanted


def enabled_accounts(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT account_id FROM settings WHERE enabled = 1 ORDER BY account_id")]
