"""``serve --workers 2``: real processes. A repeat on other connections (so other workers) is
stored once, a killed worker is replaced without losing acknowledged events, bulk import goes
through the store process, and SIGTERM stops everything cleanly. (SIGKILL of the supervisor
under load is in test_durability.py; every ingest test also runs in this mode.)"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from conftest import TARGET, Server, make_server
from kiro_activity import landing
from kiro_activity.simulate import request_body
from test_durability import children, gone, sender

HEADERS = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": TARGET}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = make_server(tmp_path / "data", "--workers", "2")
    yield s
    s.stop()


def workers_of(server: Server) -> list[int]:
    assert server.proc is not None
    return children(server.proc.pid)


def test_a_repeat_on_other_connections_is_stored_once(server: Server) -> None:
    body = orjson.dumps(request_body("chatAddMessageEvent", random.Random(3)))
    token = server.token("alice")
    answered_by: set[str] = set()
    for _ in range(24):  # a new connection each time: the kernel spreads them over the workers
        r = httpx.post(f"{server.url}/", content=body,
                       headers={**HEADERS, "Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        answered_by.add(r.headers["x-amzn-requestid"].split("-")[0])
    assert len(answered_by) == 2, "all requests went to one worker; the test proves nothing"
    client_token = orjson.loads(body)["clientToken"]
    assert len(landing.read_events(server.config.landing_db, "WHERE client_token = ?",
                                   [client_token])) == 1


def test_a_killed_worker_is_replaced_and_nothing_acknowledged_is_lost(server: Server) -> None:
    acked: list[str] = []
    stop = threading.Event()
    users = [f"user{i}" for i in range(6)]
    for user in users:
        server.token(user)
    threads = [threading.Thread(target=sender, args=(server, u, acked, stop, True))
               for u in users]
    for t in threads:
        t.start()
    try:
        while len(acked) < 300:
            time.sleep(0.02)
        victim = workers_of(server)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = workers_of(server)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.05)
        assert len(workers_of(server)) == 2 and victim not in workers_of(server)
        count = len(acked)
        while len(acked) < count + 300 and time.monotonic() < deadline + 20:
            time.sleep(0.02)
        assert len(acked) >= count + 300, "the service did not go on after a worker died"
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    tokens = {r["client_token"] for r in landing.read_events(server.config.landing_db)}
    assert set(acked) <= tokens


def test_bulk_import_through_the_store_process(server: Server) -> None:
    rng = random.Random(5)
    lines = [request_body("userTriggerDecisionEvent", rng) for _ in range(500)]
    lines.append({"telemetryEvent": {}})
    payload = b"\n".join(orjson.dumps(line) for line in lines)
    with server.client("bob") as client:
        r = client.post("/v1/batch/SendTelemetryEvent", content=payload,
                        headers={"Content-Type": "application/x-ndjson"})
        again = client.post("/v1/batch/SendTelemetryEvent", content=payload,
                            headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    summary = r.json()
    assert (summary["stored"], summary["rejected"]) == (500, 1)
    assert again.json()["stored"] == 0 and again.json()["duplicates"] == 500
    assert len(landing.read_events(server.config.landing_db, "WHERE user_id = 'bob'")) == 500


def test_sigterm_stops_the_workers_and_the_store_cleanly(server: Server) -> None:
    with server.client("carol") as client:
        body = request_body("chatAddMessageEvent", random.Random(9))
        assert client.post("/", content=orjson.dumps(body), headers=HEADERS).status_code == 200
    pids = workers_of(server)
    server.stop()
    assert server.proc is not None and server.proc.returncode == 0
    assert all(gone(pid) for pid in pids)
    assert len(landing.read_events(server.config.landing_db, "WHERE user_id = 'carol'")) == 1
