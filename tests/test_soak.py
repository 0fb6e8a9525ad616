"""A soak: the real server under steady load, its schedule on and the day rolling over (the
service's clock starts just before midnight), the report of the closed day delivered while the
load goes on. Memory, open files and threads of the server and of its writer process are sampled
throughout and must stay flat.

CI runs a short version (``KIRO_ACTIVITY_SOAK_SECONDS``, default 40 s); run several minutes with
e.g. ``KIRO_ACTIVITY_SOAK_SECONDS=600 .venv/bin/pytest tests/test_soak.py -s``.
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson

from conftest import ACCOUNT, TARGET, Server, free_port, setup_accounts
from kiro_activity import settings, store
from kiro_activity.simulate import request_body

SECONDS = float(os.environ.get("KIRO_ACTIVITY_SOAK_SECONDS", "40"))
START = datetime(2026, 11, 30, 23, 59, 45, tzinfo=UTC)


def sample(pid: int) -> tuple[int, int, int]:
    """(RSS KiB, open files, threads) of a process."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    rss = next(int(x.split()[1]) for x in status if x.startswith("VmRSS:"))
    threads = next(int(x.split()[1]) for x in status if x.startswith("Threads:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd")), threads


def writer_pid(parent: int) -> int | None:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[1]) == parent and b"kiro_activity.writer" in cmd:
                return int(proc.name)
    return None


def load(server: Server, user: str, stop: threading.Event, counts: list[int]) -> None:
    rng = random.Random(user)
    headers = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": TARGET,
               "Authorization": f"Bearer {server.token(user)}"}
    with httpx.Client(base_url=server.url, timeout=30) as c:
        while not stop.is_set():
            member = rng.choice(["userTriggerDecisionEvent", "chatAddMessageEvent"])
            r = c.post("/", headers=headers,
                       content=orjson.dumps(request_body(member, rng, user_id=user)))
            counts.append(r.status_code)
            time.sleep(0.0125)  # steady, under the per-token rate: a soak, not a benchmark


def test_soak_memory_files_and_threads_stay_flat(tmp_path: Path) -> None:
    data = tmp_path / "data"
    setup_accounts(data)
    conn = store.connect(data / "control.db")
    settings.update(conn, ACCOUNT, {"enabled": True}, actor="test", now=START.timestamp(),
                    today=START.date(), writer="q.amazonaws.com")
    conn.close()
    server = Server(data_dir=data, port=free_port(),
                    extra=("--fake-clock-start", START.isoformat()))
    server.start()
    stop = threading.Event()
    counts: list[int] = []
    users = [f"user{i}" for i in range(4)]
    for u in users:
        server.token(u)
    threads = [threading.Thread(target=load, args=(server, u, stop, counts)) for u in users]
    samples: list[tuple[float, tuple[int, int, int], tuple[int, int, int]]] = []
    try:
        assert server.proc is not None
        for t in threads:
            t.start()
        began = time.monotonic()
        while time.monotonic() - began < SECONDS:
            time.sleep(1)
            wpid = writer_pid(server.proc.pid)
            if wpid is not None:
                samples.append((time.monotonic() - began, sample(server.proc.pid),
                                sample(wpid)))
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        server.stop()
    reports = list((data / "reports").rglob("*_202611300000*.csv"))
    third = max(1, len(samples) // 3)
    early, late = samples[third:2 * third] or samples[:third], samples[-third:]

    def growth(i: int, j: int) -> float:
        return (statistics.median(s[i][j] for s in late)
                - statistics.median(s[i][j] for s in early))

    rss, fds, thr = growth(1, 0), growth(1, 1), growth(1, 2)
    wrss, wfds = growth(2, 0), growth(2, 1)
    ok = counts.count(200)
    print(f"soak: seconds={SECONDS:.0f} requests={len(counts)} ok={ok} "
          f"report_delivered={int(bool(reports))} server_rss_growth_kib={rss:.0f} "
          f"server_fds_growth={fds:.0f} server_threads_growth={thr:.0f} "
          f"writer_rss_growth_kib={wrss:.0f} writer_fds_growth={wfds:.0f} "
          f"server_rss_kib={samples[-1][1][0]} fds={samples[-1][1][1]} "
          f"threads={samples[-1][1][2]}")
    assert ok == len(counts) and ok > 20 * SECONDS
    assert reports, "the day that closed during the soak was not delivered"
    assert rss < 32 * 1024 and wrss < 32 * 1024
    assert fds <= 4 and wfds <= 4 and thr <= 2
