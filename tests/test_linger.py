"""A body over a limit on a ``Connection: close`` request (#12): the client must read the refusal,
not a reset.

The server answers a body over its limit as soon as the limit is crossed, before the rest has
arrived. Closing the socket then, with the client's bytes unread, makes the kernel reset the
connection; a client still writing sees ``ECONNRESET`` instead of the 400 (the VS Code toolkit's
aws-sdk v2 client takes that for a timeout and uploads the body again, four times). The server
closes as nginx does instead: it half-closes its side after the answer and reads and discards
what the client still sends, within a time and a byte bound (``linger_time``, ``linger_timeout``,
``linger_bytes``).

Each case is a raw socket on the real server process that writes the whole body, as those
clients do, and only then reads the answer.
"""

from __future__ import annotations

import gzip
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TARGET, Server, make_server

MIB = 1024 * 1024
TRIES = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    os.environ["KIRO_ACTIVITY_MAX_BATCH_BYTES"] = str(2 * MIB)
    os.environ["KIRO_ACTIVITY_LINGER_TIME"] = "6"
    os.environ["KIRO_ACTIVITY_LINGER_TIMEOUT"] = "2"
    os.environ["KIRO_ACTIVITY_LINGER_BYTES"] = str(32 * MIB)
    try:
        s = make_server(tmp_path_factory.mktemp("data"), "--no-schedule", "--rate", "0",
                        "--events-rate", "0")
    finally:
        for name in ("MAX_BATCH_BYTES", "LINGER_TIME", "LINGER_TIMEOUT", "LINGER_BYTES"):
            del os.environ[f"KIRO_ACTIVITY_{name}"]
    yield s
    s.stop()


def _chunked(body: bytes, size: int = 64 * 1024) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
             for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def _request(kind: str, token: str) -> bytes:
    """The whole request (head and body) of each case."""
    big = b'{"telemetryEvent": {"x": "' + b"a" * (8 * MIB) + b'"}}'
    head = [f"Authorization: Bearer {token}", "Host: 127.0.0.1", "Connection: close"]
    path, body = "/", big
    if kind in ("content-length", "chunked", "gzip"):
        head += [f"X-Amz-Target: {TARGET}", "Content-Type: application/x-amz-json-1.0"]
    if kind == "restJson1":
        path = "/SendTelemetryEvent"
        head.append("Content-Type: application/json")
    if kind == "gzip":  # random-ish text so that the compressed body is large too
        body = gzip.compress(os.urandom(6 * MIB).hex().encode(), compresslevel=1)
        head.append("Content-Encoding: gzip")
    if kind == "batch":
        path = "/v1/batch/SendTelemetryEvent"
        head.append("Content-Type: application/x-ndjson")
        body = b'{"telemetryEvent": {}}\n' * (4 * MIB // 23)
    if kind == "chunked":
        head.append("Transfer-Encoding: chunked")
        body = _chunked(body)
    else:
        head.append(f"Content-Length: {len(body)}")
    return (f"POST {path} HTTP/1.1\r\n" + "\r\n".join(head) + "\r\n\r\n").encode() + body


def _send_then_read(port: int, request: bytes) -> tuple[str, bytes]:
    """Write all of ``request``, then read to the end: ("answered", bytes) or ("reset", ...)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(request)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            return "reset", b""
        except BrokenPipeError:
            return "reset", b""
    return "answered", b"".join(chunks)


CASES = {"content-length": 400, "restJson1": 400, "chunked": 400, "gzip": 400, "batch": 400}


def test_every_over_limit_body_is_answered_not_reset(server: Server) -> None:
    token = server.token("alice")
    resets = answered = 0
    for kind, status in CASES.items():
        request = _request(kind, token)
        for _ in range(TRIES):
            how, data = _send_then_read(server.port, request)
            if how == "reset":
                resets += 1
                continue
            answered += 1
            head = data.split(b"\r\n", 1)[0]
            assert head.startswith(b"HTTP/1.1 %d" % status), (kind, data[:300])
            assert b"connection: close" in data.lower(), kind
            assert b"exception" in data.lower() or b"Exception" in data, (kind, data[:300])
    print(f"linger: cases={len(CASES)} tries={len(CASES) * TRIES} answered={answered} "
          f"resets={resets}")
    assert resets == 0
    with server.client() as c:  # and the server serves as before
        assert c.get("/health").status_code == 200


def _write_until_cut(port: int, token: str, chunk: int, pause: float) -> tuple[int, float]:
    """Write a body that never ends, ``chunk`` bytes every ``pause`` s: (bytes, seconds) until
    the server cut the connection off."""
    head = (f"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: {TARGET}\r\nConnection: close\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {1 << 40}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)
        start, sent = time.monotonic(), 0
        try:
            while time.monotonic() - start < 30:
                s.sendall(b"a" * chunk)
                sent += chunk
                time.sleep(pause)
        except (ConnectionResetError, BrokenPipeError):
            pass
        return sent, time.monotonic() - start


def test_a_client_that_never_stops_writing_is_cut_off_within_the_bounds(server: Server) -> None:
    """The lingering close is bounded: a client that writes forever is closed after
    ``linger_bytes`` (32 MiB here) or ``linger_time`` (6 s), whichever comes first, and others
    are served meanwhile."""
    token = server.token("alice")
    fast_bytes, _ = _write_until_cut(server.port, token, 65536, 0)
    slow_bytes, slow_s = _write_until_cut(server.port, token, 65536, 0.5)  # 0.5 s < idle bound
    print(f"linger_bounds: fast_cut_mib={fast_bytes / MIB:.0f} slow_cut_s={slow_s:.1f}")
    assert 32 * MIB <= fast_bytes < 64 * MIB
    assert 5 <= slow_s < 12 and slow_bytes < 32 * MIB
    with server.client() as c:
        assert c.get("/health").status_code == 200


def test_a_client_that_stops_writing_is_closed_after_the_idle_bound(server: Server) -> None:
    """The answer and the server's end of stream come at once; the client may go on writing
    (read and dropped) until it has been quiet for ``linger_timeout`` (2 s here)."""
    token = server.token("alice")
    head = (f"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: {TARGET}\r\nConnection: close\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {4 * MIB}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(head + b"a" * (2 * MIB))
        data = b""
        while chunk := s.recv(65536):  # the answer, then the server's end of the stream
            data += chunk
        assert data.startswith(b"HTTP/1.1 400"), data[:200]
        time.sleep(1)
        s.sendall(b"a" * 65536)  # still read: within the idle bound
        time.sleep(3.5)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for _ in range(20):  # quiet for longer than the bound: the socket is gone
                s.sendall(b"a" * 65536)
                time.sleep(0.1)


def test_keep_alive_is_unchanged(server: Server, tmp_path: Path) -> None:
    """Without ``Connection: close`` the connection stays usable after the refusal."""
    token = server.token("alice")
    body = b'{"telemetryEvent": {"x": "' + b"a" * (2 * MIB) + b'"}}'
    head = (f"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: {TARGET}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(head + body)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400")
    assert b"HTTP/1.1 200" in data
