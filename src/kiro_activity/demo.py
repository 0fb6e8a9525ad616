"""The main job on the embedded default, end to end: ``kiro-activity demo``.

Starts the service as a real process on 127.0.0.1, registers two accounts, issues a token per
user, sends a realistic day of telemetry for a few hundred users over the real HTTP protocols
(awsJson 1.0 and restJson1, some gzip-encoded, with client retries), and prints where everything is.
"""

from __future__ import annotations

import gzip
import http.client
import os
import random
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote

import orjson
from rich.console import Console
from rich.table import Table

from . import daily, landing, settings, store
from .config import Config
from .simulate import user_day

ACCOUNTS = [("111122223333", "us-east-1", 0.8), ("444455556666", "eu-west-1", 0.2)]


@dataclass(frozen=True)
class Sender:
    user_id: str
    token: str
    bodies: list[dict[str, Any]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(config: Config, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """Start ``kiro-activity serve`` as a child process and wait until it answers /health."""
    env = dict(os.environ)
    for name in ("database_url", "replica", "archive_folder"):  # what the data folder is not
        if getattr(config, name):
            env[f"KIRO_ACTIVITY_{name.upper()}"] = getattr(config, name)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiro_activity", "--data-dir", str(config.data_dir), "serve",
         "--host", "127.0.0.1", "--port", str(port), *extra], env=env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.05)
        finally:
            conn.close()
    proc.kill()
    raise RuntimeError("the server did not answer /health within 30 s")


def send_all(port: int, sender: Sender) -> dict[int, int]:
    """Send one user's requests on one keep-alive connection, retrying 429/5xx like an SDK."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    statuses: dict[int, int] = {}
    for i, body in enumerate(sender.bodies):
        raw = orjson.dumps(body)
        headers = {"Authorization": f"Bearer {sender.token}"}
        if i % 2:
            path, headers["Content-Type"] = "/SendTelemetryEvent", "application/json"
            headers["x-amzn-codewhisperer-optout"] = "false"
        else:
            path, headers["Content-Type"] = "/", "application/x-amz-json-1.0"
            headers["X-Amz-Target"] = "AmazonCodeWhispererService.SendTelemetryEvent"
        if i % 10 == 0:
            raw, headers["Content-Encoding"] = gzip.compress(raw), "gzip"
        for attempt in range(4):
            conn.request("POST", path, raw, headers)
            response = conn.getresponse()
            response.read()
            if response.status not in (429, 500, 502, 503, 504):
                break
            time.sleep(0.1 * 2**attempt)
        statuses[response.status] = statuses.get(response.status, 0) + 1
    conn.close()
    return statuses


def prepare(config: Config, users: int, day_start: float, rng: random.Random) -> list[Sender]:
    """Accounts and tokens in the control database, and each user's day of request bodies."""
    conn = store.connect(config.control)
    senders: list[Sender] = []
    for account_id, region, share in ACCOUNTS:
        account = store.get_account(conn, account_id) or store.add_account(
            conn, account_id, region, now=time.time())
        names = [f"user-{account_id[-4:]}-{i:04d}" for i in range(max(1, int(users * share)))]
        issued = store.issue_tokens(conn, account_id, names, now=time.time(), actor="demo")
        for name, token in issued:
            bodies = user_day(rng, user_id=name, day_start=day_start,
                              n_events=rng.randint(20, 120), profile_arn=account.profile_arn)
            senders.append(Sender(name, token, bodies))
    conn.close()
    return senders


def run_demo(config: Config, *, users: int = 300, port: int = 0) -> None:
    """Send a day of telemetry, close the day, and let the service deliver its report.

    So that the report exists at once, the demo's day is yesterday (UTC): the service runs with
    its clock set to yesterday noon while the telemetry is sent, then is started again just after
    midnight, when it catches up the closed day and delivers it to the local folder.
    """
    console = Console(stderr=True)
    port = port or free_port()
    rng = random.Random(20261130)
    day = datetime.now(UTC).date() - timedelta(days=1)
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    senders = prepare(config, users, noon.timestamp() - 12 * 3600, rng)
    _enable(config, day)
    total = sum(len(s.bodies) for s in senders)
    console.print(f"Starting the service on http://127.0.0.1:{port} (data in {config.data_dir}),"
                  f" its clock at {noon:%Y-%m-%d %H:%M} UTC")
    proc = start_server(config, port, "--fake-clock-start", noon.isoformat())
    try:
        console.print(f"Sending {total} events for {len(senders)} users over HTTP ...")
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda s: send_all(port, s), senders))
        elapsed = time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(30)
    statuses: dict[int, int] = {}
    for r in results:
        for status, n in r.items():
            statuses[status] = statuses.get(status, 0) + n
    _summary(console, config, port, total, statuses, elapsed)
    after = noon + timedelta(hours=12, seconds=5)
    console.print(f"Starting the service again at {after:%Y-%m-%d %H:%M:%S} UTC: {day} is closed")
    proc = start_server(config, port, "--fake-clock-start", after.isoformat())
    try:
        _wait_delivered(config, day)
    finally:
        proc.terminate()
        proc.wait(30)
    _reports(console, config, day)


def _enable(config: Config, day: date) -> None:
    conn = store.connect(config.control)
    try:
        for account_id, _, _ in ACCOUNTS:
            current = settings.get(conn, account_id)
            if not current.enabled or (current.enabled_since or day) > day:
                conn.execute("DELETE FROM settings WHERE account_id = ?", (account_id,))
                settings.update(conn, account_id, {"enabled": True}, actor="demo", now=time.time(),
                                today=day, writer=config.writer_principal)
    finally:
        conn.close()


def _wait_delivered(config: Config, day: date, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    conn = store.connect(config.control)
    try:
        while time.monotonic() < deadline:
            states = [d["state"] for a, _, _ in ACCOUNTS
                      for d in daily.status(conn, a)["days"]  # type: ignore[attr-defined]
                      if d["day"] == day.isoformat()]
            if states == ["delivered"] * len(ACCOUNTS):
                return
            time.sleep(0.2)
    finally:
        conn.close()
    raise RuntimeError(f"the reports of {day} were not delivered within {timeout:.0f} s")


def _reports(console: Console, config: Config, day: date) -> None:
    root = config.data_dir / "reports"
    console.print(f"Reports of {day}, delivered to the local folder {root.resolve()}:")
    for path in sorted(root.rglob(f"*{day:%Y%m%d}0000*")):
        console.print(f"  {path.relative_to(root)}  ({path.stat().st_size} bytes)",
                      soft_wrap=True)
    console.print(f"Status: kiro-activity --data-dir {config.data_dir} report status "
                  f"--account {ACCOUNTS[0][0]}", soft_wrap=True)
    conn = store.connect(config.control)
    try:
        [(_, token)] = store.issue_tokens(conn, ACCOUNTS[0][0], ["demo-admin"], now=time.time(),
                                          actor="demo", kind="admin",
                                          scopes=[a for a, _, _ in ACCOUNTS[1:]])
    finally:
        conn.close()
    account = ACCOUNTS[0][0]
    dashboard = (f"/admin/accounts/{account}/usage?from={day.isoformat()}"
                 f"&to={day.isoformat()}")
    console.print("Admin pages (settings, delivery status, audit) and the usage dashboard: run "
                  f"'kiro-activity --data-dir {config.data_dir} serve', then open")
    console.print(f"  dashboard: http://127.0.0.1:8080/admin/login?next={quote(dashboard)}",
                  soft_wrap=True)
    console.print(f"  and log in with this admin token (shown once): {token}", soft_wrap=True)


def _summary(console: Console, config: Config, port: int, total: int,
             statuses: dict[int, int], elapsed: float) -> None:
    conn = landing.connect(config.landing_db, readonly=True)
    rows = conn.execute("SELECT account_id, sum(n), count(DISTINCT user_id) FROM events"
                        " GROUP BY 1 ORDER BY 1").fetchall()
    conn.close()
    table = Table(title="Landing log (all days)")
    for col in ("account", "events stored", "users"):
        table.add_column(col)
    for account_id, n, u in rows:
        table.add_row(account_id, str(n), str(u))
    console.print(table)
    console.print(f"Sent {total} requests in {elapsed:.1f} s; answers by status: {statuses}")
    console.print(f"Data folder:  {config.data_dir.resolve()}")
    console.print(f"  control state (accounts, token hashes): {config.control_db}")
    console.print(f"  landing log (every acknowledged event): {config.landing_db}")
    console.print(f"API description: http://127.0.0.1:{port}/openapi.json (while serving)")
    console.print(f"Serve again with: kiro-activity --data-dir {config.data_dir} serve")
