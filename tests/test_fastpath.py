"""The fast path of single events (fastpath.py) at the HTTP level, on a real server process:
keep-alive, pipelining, connection close, HTTP/1.0, and what it leaves to ASGI."""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator

import httpx
import orjson
import pytest

from conftest import TARGET, Server, make_server
from kiro_activity import landing


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = make_server(tmp_path_factory.mktemp("fast"), "--no-schedule")
    yield s
    s.stop()


def request(server: Server, token: str, path: str = "/SendTelemetryEvent",
            version: str = "1.1", extra: str = "", body: bytes | None = None) -> bytes:
    body = body if body is not None else orjson.dumps({"telemetryEvent": {
        "chatAddMessageEvent": {"conversationId": "c", "messageId": "m"}},
        "clientToken": str(uuid.uuid4())})
    target = f"X-Amz-Target: {TARGET}\r\n" if path == "/" else ""
    ctype = "application/x-amz-json-1.0" if path == "/" else "application/json"
    return (f"POST {path} HTTP/{version}\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: {ctype}\r\n{target}Content-Length: {len(body)}\r\n{extra}\r\n"
            ).encode() + body


def read_responses(sock: socket.socket, n: int) -> list[bytes]:
    """Read until n complete responses (each with a Content-Length) have arrived."""
    data, out = b"", []
    while len(out) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        while b"\r\n\r\n" in data:
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            if len(rest) < length:
                break
            out.append(head + b"\r\n\r\n" + rest[:length])
            data = rest[length:]
    return out


def fast_count(server: Server) -> int:
    return int(httpx.get(f"{server.url}/health").json()["fast_path_requests"])


def test_keep_alive_and_pipelining_answer_in_order(server: Server) -> None:
    token = server.token("pipe")
    before = len(landing.read_events(server.config.landing_db))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        # three requests in one write: the first on the fast path, the others queued behind it
        bad = request(server, "kat_nope")
        sock.sendall(request(server, token) + bad + request(server, token, "/"))
        answers = read_responses(sock, 3)
        assert [a.split(b"\r\n")[0] for a in answers] == [
            b"HTTP/1.1 200 OK", b"HTTP/1.1 403 Forbidden", b"HTTP/1.1 200 OK"]
        assert b"AccessDeniedException" in answers[1]
        # the connection is still usable
        sock.sendall(request(server, token))
        assert read_responses(sock, 1)[0].startswith(b"HTTP/1.1 200 OK")
    assert len(landing.read_events(server.config.landing_db)) == before + 3


def test_fast_path_headers_and_connection_close(server: Server) -> None:
    token = server.token("close")
    start = fast_count(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request(server, token, extra="Connection: close\r\n"))
        [answer] = read_responses(sock, 1)
        assert sock.recv(10) == b""  # closed by the server after the answer
    head = answer.split(b"\r\n\r\n")[0].lower()
    assert b"connection: close" in head and b"content-type: application/json" in head
    assert b"x-amzn-requestid: " in head and b"date: " in head
    assert answer.endswith(b"\r\n\r\n{}")
    assert fast_count(server) == start + 1


def test_what_goes_through_asgi(server: Server) -> None:
    """HTTP/1.0, chunked bodies, a query string: answered the same, not on the fast path."""
    token = server.token("slow")
    start = fast_count(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request(server, token, version="1.0"))
        [answer] = read_responses(sock, 1)
        assert answer.startswith(b"HTTP/1.1 200 OK")
    body = orjson.dumps({"telemetryEvent": {"chatAddMessageEvent": {
        "conversationId": "c", "messageId": "m"}}})
    with httpx.Client(base_url=server.url, timeout=10,
                      headers={"Authorization": f"Bearer {token}",
                               "Content-Type": "application/json"}) as client:
        assert client.post("/SendTelemetryEvent", content=iter([body])).status_code == 200
        assert client.post("/SendTelemetryEvent?x=1", content=body).status_code == 200
    assert fast_count(server) == start


def test_errors_on_the_fast_path(server: Server) -> None:
    token = server.token("errs")
    start = fast_count(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request(server, token, body=b'{"telemetryEvent": {'))  # broken JSON
        [answer] = read_responses(sock, 1)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request")
    assert b"x-amzn-errortype: ValidationException" in answer
    assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["__type"] == "ValidationException"
    assert fast_count(server) == start + 1


# --- slow clients (#13) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = make_server(tmp_path_factory.mktemp("slow"), "--no-schedule", "--header-timeout", "1",
                    "--body-timeout", "1.5", "--keep-alive-timeout", "1",
                    "--max-connections", "20")
    yield s
    s.stop()


def closed_within(sock: socket.socket, seconds: float) -> tuple[bytes, float]:
    """What the server wrote before closing ``sock``, and after how long."""
    import time
    start, data = time.monotonic(), b""
    sock.settimeout(seconds)
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic() - start


def test_slow_and_idle_connections_are_closed(guarded: Server) -> None:
    """~21,000 idle or trickling connections used to exhaust the descriptors: each must now
    complete its headers within 1 s and its body within 1.5 s more, or be closed."""
    import time
    token = guarded.token("slowpoke")
    full = request(guarded, token)
    head, _, body = full.partition(b"\r\n\r\n")
    silent = socket.create_connection(("127.0.0.1", guarded.port))
    trickle = socket.create_connection(("127.0.0.1", guarded.port))
    slow_body = socket.create_connection(("127.0.0.1", guarded.port))
    idle = socket.create_connection(("127.0.0.1", guarded.port))
    with silent, trickle, slow_body, idle:
        idle.sendall(request(guarded, token, path="/"))
        assert read_responses(idle, 1)[0].startswith(b"HTTP/1.1 200")
        slow_body.sendall(head + b"\r\n\r\n" + body[:5])
        for byte in head[:8]:  # one byte every 0.1 s: the deadline does not move
            trickle.sendall(bytes([byte]))
            time.sleep(0.1)
        cut = socket.create_connection(("127.0.0.1", guarded.port))
        start = time.monotonic()
        with cut, contextlib.suppress(OSError):  # trickling on until the server cuts it
            for byte in head:
                cut.sendall(bytes([byte]))
                time.sleep(0.2)
                cut.settimeout(0.01)
                with contextlib.suppress(TimeoutError):
                    if cut.recv(65536) == b"":
                        break
        assert time.monotonic() - start < 2.5
        for sock, limit in ((silent, 1), (trickle, 1), (slow_body, 2.5), (idle, 1)):
            data, _ = closed_within(sock, limit + 5)
            if sock is idle:
                assert data == b""  # closed quietly after the keep-alive timeout
            elif sock is slow_body:  # the request was cut short: nothing stored
                assert data.startswith(b"HTTP/1.1 408 ")
                assert b"x-amzn-errortype: RequestTimeoutException" in data
                assert b"body did not arrive within 1.5 s" in data
            else:
                assert data.startswith(b"HTTP/1.1 408 ")
                assert b"x-amzn-errortype: RequestTimeoutException" in data
                assert b"x-amzn-requestid: " in data
                assert b"did not arrive within 1 s" in data
    rows = landing.read_events(guarded.config.landing_db, "WHERE user_id = 'slowpoke'")
    assert len(rows) == 1


def test_connections_beyond_the_cap_are_refused(guarded: Server) -> None:
    token = guarded.token("many")
    held = [socket.create_connection(("127.0.0.1", guarded.port)) for _ in range(20)]
    try:
        extra = socket.create_connection(("127.0.0.1", guarded.port))
        with extra:
            data, _ = closed_within(extra, 5)
        assert data.startswith(b"HTTP/1.1 503 ")
        assert b"ServiceUnavailableException" in data and b"(20)" in data
    finally:
        for sock in held:
            sock.close()
    import time
    time.sleep(0.3)  # the server sees the closes
    with socket.create_connection(("127.0.0.1", guarded.port)) as sock:
        sock.sendall(request(guarded, token))
        assert read_responses(sock, 1)[0].startswith(b"HTTP/1.1 200")


def test_a_slow_body_through_asgi_is_answered_408_and_not_stored(guarded: Server) -> None:
    """A chunked body (served by the ASGI path) that stops arriving: 408, nothing stored, and
    the application's late answer never reaches the wire."""
    token = guarded.token("slowchunk")
    head = (f"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: {TARGET}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/x-amz-json-1.0\r\n"
            "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"tel\r\n").encode()
    with socket.create_connection(("127.0.0.1", guarded.port)) as sock:
        sock.sendall(head)
        data, took = closed_within(sock, 10)
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert data.count(b"HTTP/1.1") == 1
    assert b"x-amzn-errortype: RequestTimeoutException" in data
    assert b"body did not arrive within 1.5 s" in data and took < 5
    assert landing.read_events(guarded.config.landing_db,
                               "WHERE user_id = 'slowchunk'") == []
