"""A damaged store: flipped bytes in a copy of each database file, a truncated file, a torn
write-ahead log. The real ``serve`` process must either refuse to start, once, with a one-line
message that names the damaged file (no traceback, no restart loop), or start and keep every
event committed before the damage; it must never start having silently dropped events.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson

from conftest import ACCOUNT, free_port, setup_accounts
from kiro_activity.config import Config
from kiro_activity.landing import LandingLog, LandingRecord

EVENTS = 3_000


def seed(data: Path) -> None:
    setup_accounts(data)
    log = LandingLog(Config(data_dir=data).landing_db)
    try:
        for start in range(0, EVENTS, 500):
            log.append_sync([LandingRecord(
                ACCOUNT, f"user{i % 50}", "chatAddMessageEvent", None, None, None, None, "test",
                orjson.dumps({"telemetryEvent": {"chatAddMessageEvent": {
                    "conversationId": f"c{i}", "messageId": f"m{i}" * 20}}}))
                for i in range(start, start + 500)])
    finally:
        log.close()


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for offset in range(4096 + 200, len(data), 4096 * 7):  # inside pages, headers and cells
        data[offset:offset + 64] = bytes(b ^ 0x5A for b in data[offset:offset + 64])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2 + 123)


def torn_wal(data: Path) -> int:
    """Leave landing.db with a write-ahead log whose last transaction is torn mid-frame (as a
    power cut during its write would): returns the events committed before it."""
    src = sqlite3.connect(data / "landing.db", isolation_level=None)
    src.execute("PRAGMA journal_mode=WAL")
    src.execute("PRAGMA wal_autocheckpoint=0")
    src.execute("INSERT INTO events (received_us, account_id, user_id, member, protocol, body)"
                " SELECT received_us, account_id, user_id, member, protocol, body FROM events"
                " LIMIT 10")  # a committed transaction, in the log only
    before_torn = src.execute("SELECT count(*) FROM events").fetchone()[0]
    src.execute("BEGIN")
    src.execute("INSERT INTO events (received_us, account_id, user_id, member, protocol, body)"
                " SELECT received_us, account_id, user_id, member, protocol, body FROM events")
    src.execute("COMMIT")  # the one that will be torn
    shutil.copy(data / "landing.db", data / "landing.db.copy")
    shutil.copy(data / "landing.db-wal", data / "landing.db-wal.copy")
    src.close()  # (closing would checkpoint: the copies are the crash image)
    (data / "landing.db").unlink()
    (data / "landing.db-wal").unlink(missing_ok=True)
    (data / "landing.db-shm").unlink(missing_ok=True)
    (data / "landing.db.copy").rename(data / "landing.db")
    wal = data / "landing.db-wal.copy"
    with wal.open("r+b") as f:
        f.truncate(wal.stat().st_size - 3000)  # the last commit frame is gone, mid-frame
    wal.rename(data / "landing.db-wal")
    return int(before_torn)


def count_events(data: Path) -> int:
    conn = sqlite3.connect(f"file:{data / 'landing.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def serve(data: Path) -> tuple[str, str]:
    """Start the real server: ('started', '') once it answers, or ('refused', stderr)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kiro_activity", "--data-dir", str(data),
                             "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--no-schedule"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return "refused", proc.communicate()[1]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return "started", ""
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("neither started nor refused within 30 s")
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.communicate(timeout=20)  # (closes the pipe)


def test_damaged_files_are_refused_by_name_or_kept(tmp_path: Path) -> None:
    pristine = tmp_path / "pristine"
    seed(pristine)
    committed = count_events(pristine)
    assert committed == EVENTS
    cases: dict[str, Callable[[Path], object]] = {
        "landing.db flipped": lambda d: flip(d / "landing.db"),
        "landing.db truncated": lambda d: truncate(d / "landing.db"),
        "control.db flipped": lambda d: flip(d / "control.db"),
        "control.db truncated": lambda d: truncate(d / "control.db"),
        "landing.db torn wal": torn_wal,
    }
    outcomes: dict[str, str] = {}
    silent_loss = tracebacks = unnamed = 0
    for name, damage in cases.items():
        data = tmp_path / name.replace(" ", "-")
        shutil.copytree(pristine, data)
        kept = damage(data)
        expected = kept if isinstance(kept, int) else committed
        state, stderr = serve(data)
        outcomes[name] = state
        if state == "refused":
            tracebacks += "Traceback" in stderr
            damaged_file = name.split()[0]
            message = [line for line in stderr.splitlines() if line.strip()]
            unnamed += not (len(message) == 1 and damaged_file in message[0])
            assert serve(data)[0] == "refused"  # the same answer again: no half-repaired state
        else:
            silent_loss += count_events(data) < expected
    refused = sum(s == "refused" for s in outcomes.values())
    print(f"damage: cases={len(cases)} refused_by_name={refused - unnamed} "
          f"started_intact={len(cases) - refused - silent_loss} silent_loss={silent_loss} "
          f"tracebacks={tracebacks} " + " ".join(
              f"[{k}: {v}]" for k, v in outcomes.items()))
    assert (silent_loss, tracebacks, unnamed) == (0, 0, 0)
