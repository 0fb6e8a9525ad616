"""The report files of one account's day: CSV parts, their keys, and the manifest.

Everything here is a pure function of the day's aggregate and the account's settings, so the same
events always give the same bytes (the manifest adds its generation time).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import orjson

from .metrics import DATE_FORMAT, DEFAULT_LAYOUT, LAYOUTS, column_order, header

if TYPE_CHECKING:  # (importing it would load DuckDB and pyarrow for the key rules of s3uri)
    from .aggregate import DayAggregate

PART_SIZE = 1000
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
MAX_KEY_BYTES = 1024
SCHEMA = "kiro-activity/by_user_analytic"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ReportObject:
    """One object of a drop: its key, its bytes and what the manifest says of it."""

    key: str
    data: bytes
    rows: int
    content_type: str = "text/csv"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Drop:
    """Everything delivered for one account's day: the CSV parts, then the manifest (last)."""

    account_id: str
    day: date
    layout: str
    parts: list[ReportObject]
    manifest: ReportObject | None
    users: int
    events: int
    neutralised: list[dict[str, Any]] = field(default_factory=list)

    @property
    def objects(self) -> list[ReportObject]:
        return [*self.parts, *([self.manifest] if self.manifest else [])]


def clean_prefix(prefix: str | None) -> str:
    return (prefix or "").strip("/")


def _base(prefix: str | None, account_id: str) -> str:
    p = clean_prefix(prefix)
    return f"{p}/AWSLogs/{account_id}/KiroLogs" if p else f"AWSLogs/{account_id}/KiroLogs"


def timestamp(day: date) -> str:
    return f"{day:%Y%m%d}0000"


def csv_key(prefix: str | None, account_id: str, region: str, day: date, layout: str,
            part: int | None) -> str:
    """The object key of a CSV part (``part`` None: the only file of the day)."""
    suffix = "_report" if layout == "delivered" else ""
    if part is not None:
        suffix += f"_part_{part}"
    return (f"{_base(prefix, account_id)}/by_user_analytic/{region}/{day:%Y/%m/%d}/00/"
            f"{account_id}_by_user_analytic_{timestamp(day)}{suffix}.csv")


def manifest_key(prefix: str | None, account_id: str, region: str, day: date) -> str:
    return (f"{_base(prefix, account_id)}/by_user_analytic_manifest/{region}/{day:%Y/%m/%d}/"
            f"{account_id}_manifest_{timestamp(day)}.json")


def longest_key_bytes(prefix: str | None, account_id: str, region: str) -> int:
    """The longest key the layout can produce for this prefix (for the 1,024-byte check)."""
    day = date(2099, 12, 31)
    keys = [csv_key(prefix, account_id, region, day, layout, 999_999) for layout in LAYOUTS]
    keys.append(manifest_key(prefix, account_id, region, day))
    return max(len(k.encode()) for k in keys)


def neutralise(text: str) -> tuple[str, bool]:
    """Prefix ``'`` to a cell a spreadsheet would read as a formula."""
    if text.startswith(FORMULA_STARTS):
        return "'" + text, True
    return text, False


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def render_part(rows: list[tuple[str, str]], day: date,
                layout: str) -> tuple[bytes, list[int]]:
    """One CSV file: the header and the rows (user, metric cells already comma-joined in the
    layout's order); returns the bytes and the numbers of the neutralised rows."""
    date_cell = f",{day.strftime(DATE_FORMAT)},"
    lines = [",".join(header(layout))]
    neutralised = []
    for number, (user_id, cells) in enumerate(rows, 1):
        cell, changed = neutralise(user_id)
        if changed:
            neutralised.append(number)
        lines.append(_quoted(cell) + date_cell + cells)
    return ("\n".join(lines) + "\n").encode("utf-8"), neutralised


def cells_of(agg: DayAggregate, layout: str) -> list[tuple[str, str]]:
    """Per user the comma-joined metric cells in the layout's order."""
    if agg.cells is not None and agg.cells_layout == layout:
        return agg.cells
    if agg.cells is not None:
        raise ValueError(f"the aggregate was read for layout {agg.cells_layout}, not {layout}")
    order = column_order(layout)
    return [(user, ",".join([str(values[i]) for i in order])) for user, values in agg.rows]


def build_drop(agg: DayAggregate, *, region: str, prefix: str | None, layout: str = DEFAULT_LAYOUT,
               generated_at: datetime, partial: bool = False, manifest: bool = True) -> Drop:
    """The day's objects, split into parts of 1,000 users, with the manifest last."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    rows = cells_of(agg, layout)
    chunks = [rows[i:i + PART_SIZE] for i in range(0, len(rows), PART_SIZE)] or [[]]
    parts, neutralised = [], []
    for n, chunk in enumerate(chunks, 1):
        key = csv_key(prefix, agg.account_id, region, agg.day, layout,
                      n if len(chunks) > 1 else None)
        data, changed = render_part(chunk, agg.day, layout)
        parts.append(ReportObject(key, data, len(chunk)))
        neutralised += [{"key": key, "row": row} for row in changed]
    drop = Drop(agg.account_id, agg.day, layout, parts, None, agg.users, agg.events,
                neutralised)
    if not manifest:
        return drop
    body = _manifest(drop, agg, region, generated_at, partial)
    man = ReportObject(manifest_key(prefix, agg.account_id, region, agg.day), body, 0,
                       "application/json")
    return Drop(drop.account_id, drop.day, layout, parts, man, drop.users, drop.events,
                neutralised)


def _iso(epoch_us: int) -> str:
    return datetime.fromtimestamp(epoch_us / 1e6, UTC).isoformat().replace("+00:00", "Z")


def _manifest(drop: Drop, agg: DayAggregate, region: str, generated_at: datetime,
              partial: bool) -> bytes:
    doc = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "layout": drop.layout,
        "account_id": drop.account_id, "region": region, "day": drop.day.isoformat(),
        "receipt_window": {"start": _iso(agg.window[0]), "end": _iso(agg.window[1])},
        "generated_at": generated_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "partial": partial, "users": drop.users, "events": drop.events,
        "columns": header(drop.layout), "date_format": DATE_FORMAT,
        "parts": [{"key": p.key, "rows": p.rows, "bytes": len(p.data), "sha256": p.sha256}
                  for p in drop.parts],
        "neutralised_user_ids": drop.neutralised,
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
