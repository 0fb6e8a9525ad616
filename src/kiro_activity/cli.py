"""The ``kiro-activity`` command line: a thin layer over the library functions.

Data goes to stdout, messages to stderr; exit 1 for errors, 2 for usage errors; no tracebacks
for user errors. Every command works on the data folder while the service runs on it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console

from . import audit, db, landing, lazy, logrows, metrics, store
from .config import ENGINES, Config
from .errors import KiroActivityError, SettingsRejected, UsageError

if TYPE_CHECKING:
    from . import aggregate, archive, daily, deliver, replicas, retention
    from . import settings as settings_mod
else:  # DuckDB, pyarrow and boto3 only when a command uses them (see lazy.py)
    aggregate, archive, daily, deliver, replicas, retention, settings_mod = (
        lazy.module(f"{__package__}.{name}") for name in (
            "aggregate", "archive", "daily", "deliver", "replicas", "retention", "settings"))

F = TypeVar("F", bound=Callable[..., Any])


def _errors(fn: F) -> F:
    """Turn our errors (and SQLite's) into a message on stderr and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not isinstance(exc, (KiroActivityError, OSError, *db.errors())):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="KIRO_ACTIVITY_DATA_DIR",
              default=Path("kiro-data"), show_default=True,
              help="Folder holding all state of the embedded default.")
@click.pass_context
def main(ctx: click.Context, data_dir: Path) -> None:
    """kiro-activity: per-user activity reports for AI coding assistant users."""
    ctx.obj = Config.from_environ(data_dir=data_dir)


def _control(ctx: click.Context) -> store.Connection:
    config: Config = ctx.obj
    return store.connect(config.control)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to bind.")
@click.option("--rate", type=float, help="Requests/s per token (0: no limit). [default: 100]")
@click.option("--burst", type=float, help="Burst allowance per token. [default: 1000]")
@click.option("--events-rate", type=float,
              help="Events/s per token, a bulk line each (0: no limit). [default: 1000]")
@click.option("--events-burst", type=float, help="Event burst per token. [default: 100000]")
@click.option("--max-body-bytes", type=int, help="Largest request body. [default: 1 MiB]")
@click.option("--header-timeout", type=float,
              help="Seconds to send a request's headers (0: none). [default: 10]")
@click.option("--body-timeout", type=float,
              help="Seconds to send a request's body after its headers (0: none). [default: 60]")
@click.option("--keep-alive-timeout", type=float,
              help="Seconds an idle keep-alive connection is kept. [default: 5]")
@click.option("--max-connections", type=int,
              help="Most open connections; more are answered 503. [default: 4096]")
@click.option("--access-log/--no-access-log", default=False, show_default=True)
@click.option("--schedule/--no-schedule", default=True, show_default=True,
              help="Produce and deliver reports at 00:00 UTC.")
@click.option("--fake-clock-start", hidden=True,
              help="Testing aid: run the service's clock from this ISO time.")
@click.pass_context
@_errors
def serve(ctx: click.Context, host: str, port: int, rate: float | None, burst: float | None,
          events_rate: float | None, events_burst: float | None,
          max_body_bytes: int | None, header_timeout: float | None, body_timeout: float | None,
          keep_alive_timeout: float | None, max_connections: int | None, access_log: bool,
          schedule: bool, fake_clock_start: str | None) -> None:
    """Serve SendTelemetryEvent (awsJson 1.0 and restJson1) and the bulk-import endpoint,
    and deliver each enabled account's report at 00:00 UTC."""
    import uvicorn

    from .fastpath import protocol_for
    from .ingest import create_app

    config = Config.from_environ(
        data_dir=ctx.obj.data_dir, host=host, port=port, rate_per_token=rate,
        burst_per_token=burst, max_body_bytes=max_body_bytes, schedule=schedule,
        events_per_token=events_rate, events_burst_per_token=events_burst,
        header_timeout=header_timeout, body_timeout=body_timeout,
        keep_alive_timeout=keep_alive_timeout, max_connections=max_connections,
    )
    config = _within_descriptors(config)
    store.private_dir(config.data_dir)
    for path in ([] if config.database_url else [config.control_db]) + [config.landing_db]:
        store.check_database(path)
    store.connect(config.control).close()
    landing.connect(config.landing_db).close()
    click.echo(f"kiro-activity serving on http://{host}:{port} (data in {config.data_dir})",
               err=True)
    clock = time.time
    if fake_clock_start:
        start, t0 = datetime.fromisoformat(fake_clock_start).timestamp(), time.monotonic()

        def clock() -> float:
            return start + (time.monotonic() - t0)
    replicas.check(config)
    replicas.register(config, clock())  # before the first event: the reports wait for it
    app = create_app(config, clock=clock)
    uvicorn.run(app, host=host, port=port, loop="uvloop", http=protocol_for(app),
                lifespan="on", access_log=access_log, log_level="warning",
                timeout_keep_alive=max(1, round(config.keep_alive_timeout)),
                limit_concurrency=config.max_connections + 1)


def _within_descriptors(config: Config) -> Config:
    """``config`` with at most as many connections as the process has file descriptors for
    (raising its soft limit towards the hard one first), keeping 256 for the databases."""
    import resource
    from dataclasses import replace

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = config.max_connections + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        if soft < want:
            click.echo(f"warning: {soft} file descriptors: at most {soft - 256} connections "
                       f"instead of {config.max_connections}", err=True)
            return replace(config, max_connections=max(1, soft - 256))
    return config


@main.group()
def accounts() -> None:
    """Register and list accounts."""


@accounts.command("add")
@click.argument("account_id")
@click.option("--region", required=True, help="Region of the account's profile, e.g. us-east-1.")
@click.option("--profile-arn", help="The account's profile ARN (made up when not given).")
@click.pass_context
@_errors
def accounts_add(ctx: click.Context, account_id: str, region: str, profile_arn: str | None) -> None:
    """Register ACCOUNT_ID and print its profile ARN."""
    account = store.add_account(_control(ctx), account_id, region, now=time.time(),
                                profile_arn=profile_arn)
    click.echo(account.profile_arn)


@accounts.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@_errors
def accounts_list(ctx: click.Context, as_json: bool) -> None:
    """List accounts."""
    rows = store.list_accounts(_control(ctx))
    if as_json:
        click.echo(json.dumps([_asdict(a) for a in rows], indent=2))
        return
    for a in rows:
        click.echo(f"{a.account_id}\t{a.region}\t{a.profile_arn}")


@main.group()
def tokens() -> None:
    """Issue, revoke and list bearer tokens (stored only as hashes)."""


@tokens.command("issue")
@click.option("--account", "accounts", required=True, multiple=True,
              help="The user's account; an --admin token may name several (repeat the option).")
@click.option("--user", "users", required=True, multiple=True,
              help="User id (or the admin's name); repeat for many (then USER<TAB>TOKEN lines).")
@click.option("--admin", is_flag=True,
              help="Issue an admin token (settings, status, audit of its accounts), not a "
                   "telemetry token.")
@click.option("--expires-in-days", type=float, help="Expire the token(s) after this many days.")
@click.pass_context
@_errors
def tokens_issue(ctx: click.Context, accounts: tuple[str, ...], users: tuple[str, ...],
                 admin: bool, expires_in_days: float | None) -> None:
    """Print a new token for each --user (the token is never shown again)."""
    now = time.time()
    expires = now + expires_in_days * 86400 if expires_in_days is not None else None
    issued = store.issue_tokens(_control(ctx), accounts[0], users, now=now, expires_at=expires,
                                actor=audit.local_actor(), kind="admin" if admin else "user",
                                scopes=accounts[1:])
    if len(issued) == 1:
        click.echo(issued[0][1])
    else:
        click.echo("".join(f"{user}\t{token}\n" for user, token in issued), nl=False)


@tokens.command("revoke")
@click.option("--account", "account_id", required=True)
@click.option("--user", help="Revoke every live token of this user (or admin).")
@click.option("--token", help="Revoke this token.")
@click.option("--id", "token_id", type=int, help="Revoke the token with this id (see list).")
@click.pass_context
@_errors
def tokens_revoke(ctx: click.Context, account_id: str, user: str | None, token: str | None,
                  token_id: int | None) -> None:
    """Revoke tokens; they are refused from the next request on."""
    n = store.revoke_tokens(_control(ctx), account_id, now=time.time(), principal=user,
                            token=token, token_id=token_id, actor=audit.local_actor())
    click.echo(f"revoked {n} token(s)", err=True)
    if n == 0:
        sys.exit(1)


@tokens.command("list")
@click.option("--account", "account_id", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@_errors
def tokens_list(ctx: click.Context, account_id: str, as_json: bool) -> None:
    """List an account's tokens (ids and owners; never the tokens themselves)."""
    rows = [_asdict(t) for t in store.list_tokens(_control(ctx), account_id)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for t in rows:
        state = "revoked" if t["revoked_at"] else "live"
        scope = f"\t{','.join(t['scopes'])}" if t["kind"] == "admin" else ""
        click.echo(f"{t['token_id']}\t{t['kind']}\t{t['principal']}\t{state}{scope}")


@main.command("events")
@click.option("--account", "account_id", help="Only this account.")
@click.pass_context
@_errors
def events_cmd(ctx: click.Context, account_id: str | None) -> None:
    """Print how many events the landing log holds, per account and member (JSON)."""
    conn = landing.connect(ctx.obj.landing_db)
    where, args = ("AND account_id = ?", (account_id,)) if account_id else ("", ())
    # single events counted by SQLite, per user so that batch rows' users can join them
    tally: dict[tuple[str, str], dict[str, int]] = {}
    for account, member, user, n in conn.execute(
            f"SELECT account_id, member, user_id, count(*) FROM events WHERE idx IS NULL {where}"
            " GROUP BY 1, 2, 3", args):
        tally.setdefault((account, member), {})[user] = n
    for chunk in logrows.scan(conn, ("account_id", "member", "user_id"),
                              f"WHERE idx IS NOT NULL {where}", args):
        for account, member, user in chunk:
            users = tally.setdefault((account, member), {})
            users[user] = users.get(user, 0) + 1
    out: dict[str, Any] = {}
    for (account, member), users in sorted(tally.items()):
        acc = out.setdefault(account, {"events": 0, "members": {}})
        acc["events"] += sum(users.values())
        acc["members"][member] = {"events": sum(users.values()), "users": len(users)}
    click.echo(json.dumps(out, indent=2))


@main.command()
@click.option("--users", default=300, show_default=True, help="Users to simulate.")
@click.option("--port", default=0, type=int, help="Port for the demo server (0: any free one).")
@click.pass_context
@_errors
def demo(ctx: click.Context, users: int, port: int) -> None:
    """Run the main job end to end on the embedded default, and print where everything is."""
    from .demo import run_demo

    run_demo(ctx.obj, users=users, port=port)


@main.group("settings")
def settings_group() -> None:
    """Show, change and validate an account's report settings."""


@settings_group.command("show")
@click.argument("account_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@_errors
def settings_show(ctx: click.Context, account_id: str, as_json: bool) -> None:
    """Print ACCOUNT_ID's settings (and the warnings of their last validation)."""
    values = settings_mod.get(_control(ctx), account_id).as_dict()
    if as_json:
        click.echo(json.dumps(values, indent=2))
        return
    for name, value in values.items():
        if name != "warnings":
            click.echo(f"{name}\t{'' if value is None else value}")
    for warning in values["warnings"]:
        click.echo(f"warning: {warning}", err=True)


def _setting_options(fn: F) -> F:
    """One option per setting of the table (help, choices and flag from settings.SETTINGS)."""
    for s in reversed(settings_mod.SETTINGS):
        if s.type == "bool":
            option = click.option(s.flag, s.name, default=None, help=s.help)
        elif s.type == "choice":
            option = click.option(s.flag, s.name, type=click.Choice(s.choices), help=s.help)
        else:
            option = click.option(s.flag, s.name, metavar="TEXT", help=s.help)
        fn = option(fn)
    return fn


_POLICY_FILE = click.option(
    "--policy-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A copy of the bucket policy (JSON), checked when the bucket's own policy cannot be "
         "read with these credentials (when it can, the bucket's own is what S3 applies).")


def _echo_findings(report: Any) -> None:
    for f in report.problems:
        click.echo(f"problem [{f.check}]: {f.message}", err=True)
    for f in report.warnings:
        click.echo(f"warning [{f.check}]: {f.message}", err=True)


@settings_group.command("set")
@click.argument("account_id")
@_setting_options
@_POLICY_FILE
@click.pass_context
@_errors
def settings_set(ctx: click.Context, /, account_id: str, policy_file: Path | None,
                 **values: Any) -> None:
    """Validate and save settings; refuse with every problem listed (exit 1).

    The S3 location is checked as docs/location-checks.md says: the URI and prefix, the bucket's
    Region and owner, and its bucket policy (read with your own AWS credentials, or from
    --policy-file). Warnings are saved, shown, and do not refuse.
    """
    now = time.time()
    changes = {k: v for k, v in values.items() if v is not None}
    policy = policy_file.read_bytes() if policy_file else None
    conn = _control(ctx)
    store.require_account(conn, account_id)
    try:
        saved, report = settings_mod.update(
            conn, account_id, changes, actor=audit.local_actor(), now=now,
            today=datetime.fromtimestamp(now, UTC).date(), writer=ctx.obj.writer_principal,
            policy=policy)
    except SettingsRejected as exc:
        click.echo("error: settings not saved", err=True)
        for check, message in exc.problems:
            click.echo(f"problem [{check}]: {message}", err=True)
        for check, message in exc.warnings:
            click.echo(f"warning [{check}]: {message}", err=True)
        sys.exit(1)
    for f in report.warnings:
        click.echo(f"warning [{f.check}]: {f.message}", err=True)
    click.echo(json.dumps(saved.as_dict(), indent=2))


@settings_group.command("validate")
@click.argument("account_id")
@_POLICY_FILE
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.pass_context
@_errors
def settings_validate(ctx: click.Context, account_id: str, policy_file: Path | None,
                      as_json: bool) -> None:
    """Run every check of the saved settings again (after a bucket policy change, say).

    Exits 0 only when the location is valid; warnings are printed and do not fail it.
    """
    policy = policy_file.read_bytes() if policy_file else None
    report = settings_mod.validate(_control(ctx), account_id, writer=ctx.obj.writer_principal,
                                   policy=policy, now=time.time())
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        _echo_findings(report)
        click.echo("valid" if report.valid else "not valid")
    if not report.valid:
        sys.exit(1)


@settings_group.command("docs")
def settings_docs() -> None:
    """Print the settings table as Markdown (docs/settings.md)."""
    click.echo(settings_mod.docs_markdown(), nl=False)


@main.command("audit")
@click.argument("account_id")
@click.option("--limit", type=int, default=100, show_default=True, help="Newest entries shown.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@_errors
def audit_cmd(ctx: click.Context, account_id: str, limit: int, as_json: bool) -> None:
    """Settings changes, token issues and revokes, and report replacements: who, when, what."""
    conn = _control(ctx)
    store.require_account(conn, account_id)
    entries = [e.as_dict() for e in audit.audit_log(conn, account_id, limit=limit)]
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    for e in entries:
        before = "" if e["before"] is None else json.dumps(e["before"], sort_keys=True)
        after = "" if e["after"] is None else json.dumps(e["after"], sort_keys=True)
        click.echo(f"{e['at']}\t{e['actor']}\t{e['action']}\t{e['target']}\t{before}\t{after}")


@main.group()
def report() -> None:
    """Build, deliver and inspect the daily per-user activity reports."""


_ENGINE = click.option(
    "--engine", type=click.Choice(ENGINES),
    help="What computes the day: duckdb (the counters, or with --rebuild DuckDB over the raw "
         "events), or spark (Apache Spark over the archive's segments, always a rebuild; needs "
         "kiro-activity[spark]). [default: KIRO_ACTIVITY_ENGINE, else duckdb]")


def _with_engine(config: Config, engine: str | None) -> Config:
    from dataclasses import replace

    return config if engine is None else replace(config, engine=engine)


@report.command("build")
@click.option("--account", "account_id", required=True)
@click.option("--date", "day", required=True, help="The UTC day, YYYY-MM-DD (today: so far).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder to write the files under, at their keys.")
@click.option("--rebuild", is_flag=True,
              help="Compute from every raw event instead of the per-user-day counters.")
@_ENGINE
@click.pass_context
@_errors
def report_build(ctx: click.Context, account_id: str, day: str, out: Path,
                 rebuild: bool, engine: str | None) -> None:
    """Write a day's report files under OUT without delivering them; prints their paths."""
    conn = _control(ctx)
    account = store.require_account(conn, account_id)
    drop = daily.render(_with_engine(ctx.obj, engine), account, settings_mod.get(conn, account_id),
                        daily.check_day(day), now=time.time(), rebuild=rebuild)
    for obj in drop.objects:
        path = out / obj.key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(obj.data)
        click.echo(str(path))
    click.echo(f"{drop.users} users, {drop.events} events, {len(drop.parts)} part(s)", err=True)


@report.command("run")
@click.option("--account", "account_id", required=True)
@click.option("--date", "day", required=True, help="A closed UTC day, YYYY-MM-DD.")
@click.option("--replace", is_flag=True, help="Regenerate and overwrite a delivered day.")
@click.option("--attempts", default=3, show_default=True, help="Tries per object.")
@_ENGINE
@click.pass_context
@_errors
def report_run(ctx: click.Context, account_id: str, day: str, replace: bool,
               attempts: int, engine: str | None) -> None:
    """Produce and deliver a closed day now (resumes a planned one; idempotent)."""
    when = daily.check_day(day)
    if not daily.closed(when, time.time()):
        raise UsageError(f"{when} is not closed yet (it closes at 00:00 UTC); "
                         "use 'report build' to look at it so far")
    outcome = daily.deliver_day(_with_engine(ctx.obj, engine), account_id, when, now=time.time,
                                replace=replace, attempts=attempts,
                                backoff=deliver.Backoff(base=0.5, cap=5), actor=audit.local_actor())
    for key, result in outcome.objects:
        click.echo(f"{result}\t{key}")
    if outcome.state == "failed":
        assert outcome.error is not None
        raise outcome.error
    if outcome.note:  # replicas: not sealed by every replica yet, or another one delivers it
        raise UsageError(f"{account_id} {when}: {outcome.state}: {outcome.note}")
    click.echo(f"{account_id} {when}: {outcome.state.replace('_', ' ')}", err=True)


@report.command("backfill")
@click.option("--account", "account_id", required=True)
@click.option("--from", "first", required=True, help="First UTC day, YYYY-MM-DD.")
@click.option("--to", "last", required=True, help="Last UTC day (closed), YYYY-MM-DD.")
@click.option("--replace", is_flag=True, help="Regenerate days that were delivered already.")
@click.option("--attempts", default=3, show_default=True, help="Tries per object.")
@_ENGINE
@click.pass_context
@_errors
def report_backfill(ctx: click.Context, account_id: str, first: str, last: str, replace: bool,
                    attempts: int, engine: str | None) -> None:
    """Produce and deliver every closed day from --from to --to, oldest first, with progress."""
    from rich.progress import Progress

    start, end = daily.check_day(first), daily.check_day(last)
    if end < start:
        raise UsageError(f"--to {end} is before --from {start}")
    if not daily.closed(end, time.time()):
        raise UsageError(f"{end} is not closed yet (it closes at 00:00 UTC)")
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    store.require_account(_control(ctx), account_id)
    with Progress(console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(f"{account_id} {start}..{end}", total=len(days))
        for day in days:
            outcome = daily.deliver_day(_with_engine(ctx.obj, engine), account_id, day,
                                        now=time.time, replace=replace, attempts=attempts,
                                        backoff=deliver.Backoff(base=0.5, cap=5),
                                        actor=audit.local_actor())
            progress.advance(task)
            click.echo(f"{day}\t{outcome.state}")
            if outcome.state == "failed":
                assert outcome.error is not None
                raise outcome.error
            if outcome.note:
                raise UsageError(f"{account_id} {day}: {outcome.state}: {outcome.note}")


@report.command("seal")
@click.option("--account", "account_id", help="Print this account's segments of --date.")
@click.option("--date", "day", help="A UTC day, YYYY-MM-DD.")
@click.pass_context
@_errors
def report_seal(ctx: click.Context, account_id: str | None, day: str | None) -> None:
    """Seal the archive now: every event the landing log holds past the last sealing becomes
    part of an immutable Parquet segment (the service does it every 5 minutes), and closed
    days' segments are compacted into one, and new segments are put in the bucket of each
    account with reports on and an S3 location; 'report build --rebuild' reads the archive."""
    if (account_id is None) != (day is None):
        raise UsageError("--account and --date go together")
    done = archive.seal(ctx.obj.landing_db, ctx.obj.archive_dir, now=time.time(),
                        replica=ctx.obj.replica)
    replicas.publish(ctx.obj, time.time())  # with replicas: the days sealed for good
    click.echo(f"sealed {done.events} event(s) in {done.segments} segment(s), compacted "
               f"{done.compacted} day(s); sealed up to seq {done.sealed_seq}")
    sent = archive.upload(ctx.obj)
    click.echo(f"put {sent.put} segment(s) in the accounts' buckets"
               + (f" ({sent.already_there} there already)" if sent.already_there else ""))
    for account_id, error in sent.errors.items():
        click.echo(f"warning: the archive of {account_id} is not in its bucket yet: {error}",
                   err=True)
    if account_id is not None and day is not None:
        store.require_account(_control(ctx), account_id)
        for path in archive.day_files(ctx.obj.landing_db, ctx.obj.archive_dir, account_id,
                                      daily.check_day(day)):
            click.echo(str(path))


@report.command("status")
@click.option("--account", "account_id", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@_errors
def report_status(ctx: click.Context, account_id: str, as_json: bool) -> None:
    """Each day's delivery state, and the last delivery error."""
    info = daily.status(_control(ctx), account_id)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for d in info["days"]:  # type: ignore[attr-defined]
        click.echo(f"{d['day']}\t{d['state']}\t{d['users']} users\t{d['events']} events\t"
                   f"{d['objects_delivered']}/{d['objects']} objects\t{d['destination']}")
    err = info["last_error"]
    if err:
        click.echo(f"last delivery error: {err}", err=True)
    if info["archive_error"]:
        click.echo(f"telemetry archive not in the bucket yet: {info['archive_error']}",
                   err=True)


@main.group("replicas")
def replicas_group() -> None:
    """The replicas sharing this PostgreSQL control database (KIRO_ACTIVITY_REPLICA)."""


@replicas_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@_errors
def replicas_list(ctx: click.Context, as_json: bool) -> None:
    """Each replica: when it first and last ran, the last day it sealed for good (a day is
    reported once every replica not retired has sealed it)."""
    found = replicas.listing(_control(ctx))
    if as_json:
        click.echo(json.dumps([{**r.__dict__, "last_published": r.last_published and
                                r.last_published.isoformat()} for r in found], indent=2))
        return
    for r in found:
        seen = datetime.fromtimestamp(r.seen_at, UTC).isoformat(timespec="seconds")
        state = "retired" if r.retired_at is not None else "live"
        click.echo(f"{r.name}\t{state}\tlast seen {seen}\tsealed through "
                   f"{r.last_published or 'nothing yet'}")


@replicas_group.command("retire")
@click.argument("name")
@click.pass_context
@_errors
def replicas_retire(ctx: click.Context, name: str) -> None:
    """Stop waiting for a replica that is gone for good (it is back when it starts again);
    the events it never sealed are missing from the reports of their days."""
    replicas.retire(_control(ctx), name, time.time())
    click.echo(f"replica {name} retired: the reports no longer wait for it")


@main.command("purge")
@click.pass_context
@_errors
def purge(ctx: click.Context) -> None:
    """Apply the retention now (the service does it after each daily run): raw events older
    than KIRO_ACTIVITY_DEDUPE_DAYS (30) leave the landing log once archived; days older than
    KIRO_ACTIVITY_RETENTION_DAYS (90) leave the archive, the counters, the dashboard's
    snapshots and the delivery ledger."""
    done = retention.purge(ctx.obj, time.time())
    click.echo(done.summary())
    for account_id, day, why in done.kept:
        click.echo(f"kept {account_id} {day} in the landing log: {why}", err=True)


@main.command("metrics")
@click.option("--markdown", is_flag=True, help="Print the docs table instead of metrics.json.")
def metrics_cmd(markdown: bool) -> None:
    """Print the metric definitions (metrics.json), derived from the one rule table."""
    if markdown:
        click.echo(metrics.docs_markdown(), nl=False)
    else:
        click.echo(metrics.definitions_json().decode(), nl=False)


def _asdict(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}
