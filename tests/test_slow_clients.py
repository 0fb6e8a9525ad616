"""Slow clients (slowloris): 500 connections to the real server trickle their headers or their
bodies a byte at a time. Meanwhile a normal client must be served as usual; every slow
connection must be cut off by the server once its header or body time limit has passed; and the
server's memory must not grow with them.
"""

from __future__ import annotations

import random
import selectors
import socket
import statistics
import time
from pathlib import Path

import httpx
import orjson

from conftest import TARGET, make_server
from kiro_activity.simulate import request_body

SLOW = 500
HEADER_TIMEOUT, BODY_TIMEOUT = 2.0, 3.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_five_hundred_slow_connections_do_not_stop_others(tmp_path: Path) -> None:
    server = make_server(tmp_path / "data", "--no-schedule", "--header-timeout",
                         str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT))
    try:
        assert server.proc is not None
        token = server.token("alice")
        headers = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": TARGET,
                   "Authorization": f"Bearer {token}"}
        rng = random.Random(5)
        with httpx.Client(base_url=server.url, timeout=30) as c:  # warm up, then the baseline
            for _ in range(50):
                c.post("/", content=orjson.dumps(request_body("chatAddMessageEvent", rng)),
                       headers=headers)
        before = rss_kib(server.proc.pid)
        sel = selectors.DefaultSelector()
        socks: dict[socket.socket, bytes] = {}
        head = (f"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: {TARGET}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/x-amz-json-1.0\r\n")
        for i in range(SLOW):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.setblocking(False)
            if i % 2:  # headers, trickled
                todo = head.encode() + b"X-Pad: " + b"a" * 10_000
            else:  # headers whole, then the body trickled
                s.sendall((head + "Content-Length: 5000\r\n\r\n").encode())
                todo = b"{" + b" " * 4999
            socks[s] = todo
            sel.register(s, selectors.EVENT_READ)
        opened = time.monotonic()
        latencies: list[float] = []
        served = 0
        closed: dict[socket.socket, float] = {}
        with httpx.Client(base_url=server.url, timeout=30) as c:
            last_trickle = 0.0
            while len(closed) < SLOW and time.monotonic() - opened < BODY_TIMEOUT + 20:
                now = time.monotonic()
                if now - last_trickle >= 0.5:  # one byte per slow connection every 0.5 s
                    last_trickle = now
                    for s, todo in socks.items():
                        if s not in closed and todo:
                            try:
                                s.send(todo[:1])
                                socks[s] = todo[1:]
                            except OSError:
                                closed[s] = now
                                sel.unregister(s)
                for key, _ in sel.select(timeout=0):
                    s = key.fileobj  # type: ignore[assignment]
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        closed[s] = time.monotonic()
                        sel.unregister(s)
                if served < 200:  # the normal client, on its own connection
                    t0 = time.perf_counter()
                    r = c.post("/", headers=headers, content=orjson.dumps(
                        request_body("chatAddMessageEvent", rng)))
                    latencies.append(time.perf_counter() - t0)
                    assert r.status_code == 200, r.text
                    served += 1
                else:
                    time.sleep(0.02)
        during = rss_kib(server.proc.pid)
        cut_off = [t - opened for t in closed.values()]
        for s in socks:
            s.close()
        p99 = statistics.quantiles(latencies, n=100)[98] * 1000
        print(f"slow-clients: slow={SLOW} cut_off={len(closed)} "
              f"last_cut_off_after={max(cut_off):.1f}s served={served} "
              f"p50_ms={statistics.median(latencies) * 1000:.1f} p99_ms={p99:.1f} "
              f"rss_before_kib={before} rss_during_kib={during}")
        assert served == 200 and p99 < 1000
        assert len(closed) == SLOW  # every one timed out by the server
        assert max(cut_off) < BODY_TIMEOUT + 15
        assert during - before < 64 * 1024  # 500 slow sockets: no growth beyond buffers
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.get("/health").status_code == 200
    finally:
        server.stop()
