"""Per-account report settings: one declarative table, validation, saving with an audit entry.

:data:`SETTINGS` is the one place a setting is described (name, type, default, help, choices);
the CLI options, the admin API's JSON schema, the web form and ``docs/settings.md`` are all
derived from it. Saving validates everything first, S3 location included
(:func:`.location.check_location`, checks 1-4 of docs/location-checks.md), and either saves
(with the warnings, which are kept and shown) or refuses with every problem listed and changes
nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from typing import TYPE_CHECKING, Any

from . import db, lazy, s3uri
from .audit import record
from .errors import SettingsConflict, SettingsRejected
from .metrics import DEFAULT_LAYOUT, LAYOUTS
from .store import require_account, transaction

if TYPE_CHECKING:
    from . import location
else:  # boto3, DuckDB: only when a location is checked (the command's options need this module)
    location = lazy.module(f"{__package__}.location")


@dataclass(frozen=True)
class Setting:
    """One setting of an account, as admins see it everywhere."""

    name: str
    type: str  # "bool" | "choice" | "text"
    default: object
    help: str
    choices: tuple[str, ...] = ()
    example: str = ""

    @property
    def flag(self) -> str:
        """The CLI option: ``--enable/--disable`` for the switch, else ``--name-with-dashes``."""
        return "--enable/--disable" if self.name == "enabled" else "--" + self.name.replace("_",
                                                                                          "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("enabled", "bool", False,
            "Collect granular metrics per user: produce each day's report at 00:00 UTC and "
            "deliver it."),
    Setting("s3_uri", "text", None,
            "Where reports go: s3://bucket/prefix/ in a bucket of this account, in its Region, "
            "whose policy lets the report writer put objects under the prefix. None (an empty "
            "value): the local folder DATA_DIR/reports.",
            example="s3://example-reports-bucket/user-activity-reports/"),
    Setting("layout", "choice", DEFAULT_LAYOUT,
            "CSV layout and file names: 'delivered' (the column names, order and file names of "
            "the objects the service actually delivers, which importers of these reports read) "
            "or 'documented' (as the user guide names things; importers that go by the "
            "delivered objects read wrong numbers from it).", choices=LAYOUTS),
    Setting("sse", "choice", "AES256",
            "Server-side encryption of the report objects.", choices=("AES256", "aws:kms")),
    Setting("kms_key_arn", "text", None,
            "The full KMS key ARN (not an alias) used when sse is aws:kms; an empty value "
            "clears it.",
            example="arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
)
BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    """An account's settings, and what the last validation of its location found."""

    account_id: str
    enabled: bool = False
    s3_uri: str | None = None
    layout: str = DEFAULT_LAYOUT
    sse: str = "AES256"
    kms_key_arn: str | None = None
    enabled_since: date | None = None
    #: False when the bucket policy allows the CSV keys but not the manifest key
    manifest: bool = True
    warnings: tuple[str, ...] = field(default=())

    def values(self) -> dict[str, Any]:
        """The settings of the table only (what admins set)."""
        return {s.name: getattr(self, s.name) for s in SETTINGS}

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["enabled_since"] = self.enabled_since.isoformat() if self.enabled_since else None
        out["warnings"] = list(self.warnings)
        return out


def json_schema() -> dict[str, Any]:
    """The JSON schema of a settings change (the admin API's request body)."""
    props: dict[str, Any] = {}
    for s in SETTINGS:
        if s.type == "bool":
            prop: dict[str, Any] = {"type": "boolean"}
        elif s.type == "choice":
            prop = {"type": "string", "enum": list(s.choices)}
        else:
            prop = {"type": ["string", "null"]}
            if s.example:
                prop["examples"] = [s.example]
        props[s.name] = {**prop, "default": s.default, "description": s.help}
    return {"type": "object", "properties": props, "additionalProperties": False}


def docs_markdown() -> str:
    """``docs/settings.md``: the settings table (a test keeps the file in step)."""
    lines = [
        "# Settings of an account",
        "",
        "Generated from `kiro_activity.settings.SETTINGS` by `kiro-activity settings docs`; "
        "do not edit by hand.",
        "",
        "| setting | CLI | type | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        kind = " \\| ".join(f"`{c}`" for c in s.choices) if s.choices else s.type
        default = "none" if s.default is None else f"`{json.dumps(s.default)}`".replace(
            '`"', "`").replace('"`', "`")
        lines.append(f"| `{s.name}` | `{s.flag}` | {kind} | {default} | {s.help} |")
    lines += [
        "",
        "A location is saved only when it passes the checks described in "
        "[location-checks.md](location-checks.md): the URI and prefix rules, the bucket's "
        "Region, its owner, and the bucket policy evaluated for the report writer "
        "(`KIRO_ACTIVITY_WRITER_PRINCIPAL`, default `q.amazonaws.com`). Warnings are saved and "
        "shown; `kiro-activity settings validate` runs the checks again.",
        "",
        "## Retention (service-wide)",
        "",
        "Set for the whole service by environment variables (see [design.md](design.md), "
        "Retention); "
        "`kiro-activity purge` applies them at once, the service after each daily run.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
        "| `KIRO_ACTIVITY_RETENTION_DAYS` | `90` | Days the archive, the per-user-day counters, "
        "the dashboard's snapshots and the delivery ledger keep; how far back missed days are "
        "caught up. A report of an older day is refused. |",
        "| `KIRO_ACTIVITY_DEDUPE_DAYS` | `30` | Days a `clientToken` is recognised and raw "
        "events stay in the landing log; an older day's events leave it once the archive holds "
        "them (its event count checked first). |",
        "",
    ]
    return "\n".join(lines)


def _coerce(name: str, value: Any) -> tuple[Any, str | None]:
    """A value of the right type for the setting, or a problem."""
    s = BY_NAME[name]
    if s.type == "bool":
        if isinstance(value, bool):
            return value, None
        return None, f"{name} must be true or false, not {value!r}"
    if value is None or value == "":
        if s.type == "choice":
            return None, f"{name} must be one of: {', '.join(s.choices)}"
        return None, None
    if not isinstance(value, str):
        return None, f"{name} must be a string, not {type(value).__name__}"
    if s.choices and value not in s.choices:
        return None, f"{name} {value!r} must be one of: {', '.join(s.choices)}"
    return value, None


def field_problems(s: Settings, region: str) -> list[tuple[str, str]]:
    """Problems of the values themselves, without looking at any bucket."""
    out = [("kms", m) for m in s3uri.kms_problems(s.sse, s.kms_key_arn, region)]
    if s.sse != "aws:kms" and s.kms_key_arn:
        out.append(("kms", "kms_key_arn is only used with sse aws:kms: set sse aws:kms "
                           "or clear kms_key_arn"))
    return out


Checker = Callable[..., "location.LocationReport"]


def check(s: Settings, account: Any, *, writer: str, policy: Any = None, client: Any = None,
          checker: Checker | None = None) -> location.LocationReport:
    """Every check of these settings: the values, then the S3 location (docs/location-checks.md)."""
    problems = [location.Finding(c, m) for c, m in field_problems(s, account.region)]
    if s.s3_uri is None:
        return location.LocationReport(problems, [])
    report = (checker or location.check_location)(
        s.s3_uri, account, layout=s.layout, sse=s.sse, kms_key_arn=s.kms_key_arn, writer=writer,
        policy=policy, client=client)
    # the KMS rules are the values' (above), whether or not there is a bucket to look at
    extra = [f for f in report.problems if f.check != "kms"]
    return replace(report, problems=problems + extra)


def get(conn: db.Connection, account_id: str) -> Settings:
    require_account(conn, account_id)
    row = conn.execute(
        "SELECT enabled, s3_uri, layout, sse, kms_key_arn, enabled_since, manifest, warnings"
        " FROM settings WHERE account_id = ?", (account_id,)).fetchone()
    if row is None:
        return Settings(account_id)
    since = date.fromisoformat(row[5]) if row[5] else None
    warnings = tuple(json.loads(row[7])) if row[7] else ()
    return Settings(account_id, bool(row[0]), row[1], row[2], row[3], row[4], since,
                    bool(row[6]), warnings)


def _save(conn: db.Connection, s: Settings, now: float) -> None:
    conn.execute(
        db.upsert("settings", ["account_id"], ["enabled", "s3_uri", "layout", "sse",
                                               "kms_key_arn", "enabled_since", "updated_at",
                                               "manifest", "warnings"]),
        (s.account_id, int(s.enabled), s.s3_uri, s.layout, s.sse, s.kms_key_arn,
         s.enabled_since.isoformat() if s.enabled_since else None, now, int(s.manifest),
         json.dumps(list(s.warnings)) if s.warnings else None))


def merge(current: Settings, changes: Mapping[str, Any], region: str | None = None) -> Settings:
    """The current settings with ``changes`` applied, or SettingsRejected (unknown names, types).

    A text value of None or "" clears it (s3_uri: back to the local folder).
    """
    problems = [("settings", f"unknown setting {name!r}; the settings are: "
                             f"{', '.join(BY_NAME)}") for name in changes if name not in BY_NAME]
    values: dict[str, Any] = {}
    for name, value in changes.items():
        if name in BY_NAME:
            coerced, problem = _coerce(name, value)
            if problem:
                problems.append((name, problem))
            else:
                values[name] = coerced
    if problems:
        # list the value problems the rest of the change has too (no bucket is looked at)
        partial = replace(current, **values)
        problems += field_problems(partial, region) if region else []
        uri = values.get("s3_uri")
        if uri and region:
            problems += [("uri", m) for m in s3uri.uri_problems(
                uri, account_id=current.account_id, region=region)]
        raise SettingsRejected(problems)
    return replace(current, **values)


#: the settings that decide where and how objects are put: a change to any of them is checked
LOCATION = ("s3_uri", "layout", "sse", "kms_key_arn")


def _location(s: Settings) -> tuple[object, ...]:
    return tuple(getattr(s, name) for name in LOCATION)


def _needs_check(current: Settings, wanted: Settings) -> bool:
    """Check the location when it changes or reports are switched on; turning reports off,
    or saving what is already saved, never waits on (or is refused by) a bucket."""
    return _location(wanted) != _location(current) or (wanted.enabled and not current.enabled)


def _manifest(report: location.LocationReport, wanted: Settings, current: Settings) -> bool:
    """Whether manifests are written: what the policy said, else what was known before for
    the same location, else yes (the documented policy allows the manifest)."""
    if wanted.s3_uri is None:
        return True
    if report.manifest_allowed is not None:
        return report.manifest_allowed
    return current.manifest if _location(wanted) == _location(current) else True


def update(conn: db.Connection, account_id: str, changes: Mapping[str, Any], *,
           actor: str, now: float, today: date, writer: str, policy: Any = None,
           client: Any = None, checker: Checker | None = None,
           ) -> tuple[Settings, location.LocationReport]:
    """Validate the changed settings (bucket checks included) and save them, or refuse.

    Raises SettingsRejected with every problem (nothing saved), or SettingsConflict when
    another change of the location was saved while this one was being checked. On success
    the warnings are saved with the settings, and the change is written to the audit log in
    the same transaction.
    """
    account = require_account(conn, account_id)
    current = get(conn, account_id)
    wanted = merge(current, changes, account.region)
    checked = _needs_check(current, wanted)
    report = (check(wanted, account, writer=writer, policy=policy, client=client,
                    checker=checker) if checked
              else location.LocationReport([], [], manifest_allowed=current.manifest))
    if not report.valid:
        raise SettingsRejected([(f.check, f.message) for f in report.problems],
                               [(f.check, f.message) for f in report.warnings])
    with transaction(conn):
        latest = get(conn, account_id)  # as of this transaction: others may have saved
        fresh = merge(latest, changes, account.region)
        if _location(fresh) != _location(wanted) or (
                fresh.enabled and not latest.enabled and not checked):
            raise SettingsConflict(
                "the settings were changed by someone else while these were being checked; "
                "look at them again and retry")
        warnings = (tuple(f.message for f in report.warnings) if checked
                    else latest.warnings)
        # reports cover the days from the one the switch was turned on (as it stands now)
        since = (latest.enabled_since or today) if latest.enabled else today
        fresh = replace(fresh, enabled_since=since if fresh.enabled else None,
                        manifest=_manifest(report, fresh, latest), warnings=warnings)
        _save(conn, fresh, now)
        before, after = latest.values(), fresh.values()
        changed = [k for k in after if before[k] != after[k]]
        if changed:
            record(conn, now=now, account_id=account_id, actor=actor, action="settings.update",
                   target="settings", before={k: before[k] for k in changed},
                   after={k: after[k] for k in changed})
    return fresh, report


def validate(conn: db.Connection, account_id: str, *, writer: str, policy: Any = None,
             client: Any = None, checker: Checker | None = None, now: float,
             actor: str = "validate") -> location.LocationReport:
    """Run every check again on the saved settings; keep what it found (manifest, warnings),
    and note in the audit log when that changes whether manifests are written."""
    account = require_account(conn, account_id)
    current = get(conn, account_id)
    report = check(current, account, writer=writer, policy=policy, client=client,
                   checker=checker)
    if report.valid:
        with transaction(conn):
            latest = get(conn, account_id)
            if latest.values() == current.values():
                manifest = _manifest(report, latest, latest)
                _save(conn, replace(latest, manifest=manifest,
                                    warnings=tuple(f.message for f in report.warnings)), now)
                if manifest != latest.manifest:
                    record(conn, now=now, account_id=account_id, actor=actor,
                           action="settings.validate", target="manifest",
                           before={"manifest": latest.manifest}, after={"manifest": manifest})
    return report


def enabled_accounts(conn: db.Connection) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT account_id FROM settings WHERE enabled = 1 ORDER BY account_id")]
