"""The ``kiro-activity`` command line: a thin layer over the library functions.

Data goes to stdout, messages to stderr; exit 1 for errors, 2 for usage errors; no tracebacks
for user errors. Every command works on the data folder while the service runs on it.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from . import landing, store
from .config import Config
from .errors import KiroActivityError

F = TypeVar("F", bound=Callable[..., Any])


def _errors(fn: F) -> F:
    """Turn our errors (and SQLite's) into a message on stderr and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (KiroActivityError, sqlite3.Error, OSError) as exc:
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


def _control(ctx: click.Context) -> sqlite3.Connection:
    config: Config = ctx.obj
    return store.connect(config.control_db)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to bind.")
@click.option("--rate", type=float, help="Requests/s per token (0: no limit). [default: 100]")
@click.option("--burst", type=float, help="Burst allowance per token. [default: 1000]")
@click.option("--max-body-bytes", type=int, help="Largest request body. [default: 1 MiB]")
@click.option("--access-log/--no-access-log", default=False, show_default=True)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, rate: float | None, burst: float | None,
          max_body_bytes: int | None, access_log: bool) -> None:
    """Serve SendTelemetryEvent (awsJson 1.0 and restJson1) and the bulk-import endpoint."""
    import uvicorn

    from .ingest import create_app

    config = Config.from_environ(
        data_dir=ctx.obj.data_dir, host=host, port=port, rate_per_token=rate,
        burst_per_token=burst, max_body_bytes=max_body_bytes,
    )
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store.connect(config.control_db).close()
    click.echo(f"kiro-activity serving on http://{host}:{port} (data in {config.data_dir})",
               err=True)
    uvicorn.run(create_app(config), host=host, port=port, loop="uvloop", http="httptools",
                lifespan="on", access_log=access_log, log_level="warning")


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
@click.option("--account", "account_id", required=True, help="The user's account.")
@click.option("--user", "users", required=True, multiple=True,
              help="User id; repeat for many users (then one USER<TAB>TOKEN line each).")
@click.option("--expires-in-days", type=float, help="Expire the token(s) after this many days.")
@click.pass_context
@_errors
def tokens_issue(ctx: click.Context, account_id: str, users: tuple[str, ...],
                 expires_in_days: float | None) -> None:
    """Print a new telemetry token for each --user (the token is never shown again)."""
    now = time.time()
    expires = now + expires_in_days * 86400 if expires_in_days is not None else None
    issued = store.issue_tokens(_control(ctx), account_id, users, now=now, expires_at=expires)
    if len(issued) == 1:
        click.echo(issued[0][1])
    else:
        click.echo("".join(f"{user}\t{token}\n" for user, token in issued), nl=False)


@tokens.command("revoke")
@click.option("--account", "account_id", required=True)
@click.option("--user", help="Revoke every live token of this user.")
@click.option("--token", help="Revoke this token.")
@click.option("--id", "token_id", type=int, help="Revoke the token with this id (see list).")
@click.pass_context
@_errors
def tokens_revoke(ctx: click.Context, account_id: str, user: str | None, token: str | None,
                  token_id: int | None) -> None:
    """Revoke tokens; they are refused from the next request on."""
    n = store.revoke_tokens(_control(ctx), account_id, now=time.time(), principal=user,
                            token=token, token_id=token_id)
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
        click.echo(f"{t['token_id']}\t{t['kind']}\t{t['principal']}\t{state}")


@main.command("events")
@click.option("--account", "account_id", help="Only this account.")
@click.pass_context
@_errors
def events_cmd(ctx: click.Context, account_id: str | None) -> None:
    """Print how many events the landing log holds, per account and member (JSON)."""
    conn = landing.connect(ctx.obj.landing_db)
    where, args = ("WHERE account_id = ?", (account_id,)) if account_id else ("", ())
    rows = conn.execute(
        f"SELECT account_id, member, count(*), count(DISTINCT user_id) FROM events {where}"
        " GROUP BY 1, 2 ORDER BY 1, 2", args,
    ).fetchall()
    out: dict[str, Any] = {}
    for account, member, n, users in rows:
        acc = out.setdefault(account, {"events": 0, "members": {}})
        acc["events"] += n
        acc["members"][member] = {"events": n, "users": users}
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


def _asdict(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}
