"""The hot path: single SendTelemetryEvent requests served straight from uvicorn's HTTP parser.

uvicorn turns every request into an ASGI scope, a request-response cycle object and an asyncio
task; for a 300-byte telemetry event that costs more CPU than everything we do with it
(measured: a raw httptools protocol answers ~100k requests/s here, uvicorn's ASGI path ~23k).
:class:`FastProtocol` is uvicorn's own httptools protocol with one change: a request that is
plainly a single telemetry event (``POST /`` with our ``X-Amz-Target``, or
``POST /SendTelemetryEvent``; a ``Content-Length`` within the body limit; no content or transfer
encoding, no ``Expect``; no other request of the connection in flight) is checked by the same
:meth:`.ingest.IngestApp.single_record`, queued for the same group commit, and answered from a
callback when the commit is durable: no scope, no task. Everything else (gzip bodies, chunked
bodies, pipelined requests, the bulk endpoint, the admin pages ...) goes through ASGI unchanged,
so both paths give the same answers; the tests run every case through both.

Slow clients (#13): every connection must send a request's headers within ``header_timeout``
seconds (counted from the connection's start, or from the request's first byte) and its body
within ``body_timeout`` more, or it is answered 408 and closed; idle keep-alive connections are
closed by uvicorn after ``keep_alive_timeout``. A connection beyond ``max_connections`` is
answered 503 and closed at once, so idle sockets cannot exhaust the descriptors.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .errors import ApiError, InternalServerError, OverloadedError, RequestTimeoutError
from .ingest import AWS_JSON, TARGET, WANTED_HEADERS, error_headers, request_id

if TYPE_CHECKING:
    from .ingest import IngestApp

log = logging.getLogger(__name__)
ROUTES = {b"/": ("awsJson1_0", AWS_JSON), b"/SendTelemetryEvent": ("restJson1",
                                                                    "application/json")}
_SLOW_HEADERS = frozenset({b"transfer-encoding", b"expect", b"upgrade"})


class _NoEvent:
    """Stands in for the cycle's asyncio.Event that uvicorn sets when a connection drops."""

    def set(self) -> None:
        pass


class _FastCycle:
    """The in-flight fast request, in the place uvicorn keeps its request-response cycle, so
    that pipelined requests queue behind it and shutdown and disconnects find what they expect."""

    __slots__ = (
        "body",
        "disconnected",
        "headers",
        "keep_alive",
        "message_event",
        "response_complete",
        "route",
    )

    def __init__(self, headers: dict[str, str], route: tuple[str, str],
                 keep_alive: bool) -> None:
        self.headers, self.route, self.keep_alive = headers, route, keep_alive
        self.body: list[bytes] = []
        self.response_complete = False
        self.disconnected = False
        self.message_event = _NoEvent()


class FastProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, serving single telemetry events without ASGI, with a
    deadline on each request's receipt and a cap on open connections."""

    ingest: IngestApp  # set on the subclass made by :func:`protocol_for`
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        config = self.ingest.config
        if len(self.connections) > config.max_connections:
            exc = OverloadedError(f"the server holds its most connections "
                                  f"({config.max_connections}); try again shortly")
            self._refuse(exc, b"retry-after: 1\r\n")
            return
        self._arm(config.header_timeout, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm(self.ingest.config.header_timeout, "headers")

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        if seconds > 0:
            self._deadline = self.loop.call_later(seconds, self._too_slow, seconds, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, seconds: float, what: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            if isinstance(self.cycle, _FastCycle):
                self.cycle.disconnected = True
            self.transport.close()  # an ASGI request sees a disconnect: nothing is stored
            return
        self._refuse(RequestTimeoutError(
            f"the request's {what} did not arrive within {seconds:g} s; the connection is "
            "closed"), b"")

    def _refuse(self, exc: ApiError, extra: bytes) -> None:
        body = orjson.dumps(exc.body())
        self.transport.write(STATUS_LINE[exc.status] + b"content-type: application/json\r\n"
                             + extra + b"connection: close\r\ncontent-length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.transport.close()

    def on_headers_complete(self) -> None:
        self._arm(self.ingest.config.body_timeout, "body")
        fast = self._fast_cycle()
        if fast is None:
            super().on_headers_complete()
        else:
            self.cycle = fast  # type: ignore[assignment]

    def _fast_cycle(self) -> _FastCycle | None:
        route = ROUTES.get(self.url)
        if (route is None or self.parser.get_method() != b"POST" or self.access_log
                or not self.ingest.config.fast_path):
            return None
        if self.cycle is not None and not self.cycle.response_complete:
            return None  # a request of this connection is in flight: queue like uvicorn does
        headers = {"source": self.client[0] if self.client else ""}  # as ingest sets it
        for name, value in self.headers:
            if name in WANTED_HEADERS:
                headers[name.decode("latin-1")] = value.decode("latin-1")
            elif name in _SLOW_HEADERS:
                return None
        length = headers.get("content-length", "")
        if (not length.isdigit() or int(length) > self.ingest.config.max_body_bytes
                or headers.get("content-encoding", "identity").lower() != "identity"
                or (route[0] == "awsJson1_0" and headers.get("x-amz-target") != TARGET)
                or self.parser.get_http_version() != "1.1"):
            return None
        return _FastCycle(headers, route, self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if isinstance(cycle, _FastCycle):
            cycle.body.append(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()  # received in full: the rest is ours
        cycle = self.cycle
        if not isinstance(cycle, _FastCycle):
            super().on_message_complete()
            return
        self.ingest.fast_requests += 1
        try:
            record = self.ingest.single_record(cycle.headers, b"".join(cycle.body), *cycle.route)
        except ApiError as exc:
            self._respond(cycle, exc.status, orjson.dumps(exc.body()), error_headers(exc))
            return
        except Exception:
            log.exception("unexpected error on a fast-path request")
            exc = InternalServerError("internal error; retry the request")
            self._respond(cycle, 500, orjson.dumps(exc.body()), error_headers(exc))
            return
        self.ingest.landing.submit([record], self.loop).add_done_callback(
            lambda fut: self._committed(cycle, fut))

    def _committed(self, cycle: _FastCycle, fut: asyncio.Future[int]) -> None:
        error = fut.exception()
        if error is None:
            self._respond(cycle, 200, b"{}", ())
        elif isinstance(error, ApiError):
            self._respond(cycle, error.status, orjson.dumps(error.body()), error_headers(error))
        else:
            log.error("unexpected error committing a fast-path request: %r", error)
            exc = InternalServerError("internal error; retry the request")
            self._respond(cycle, 500, orjson.dumps(exc.body()), error_headers(exc))

    def _respond(self, cycle: _FastCycle, status: int, body: bytes,
                 extra: Any) -> None:
        cycle.response_complete = True
        if cycle.disconnected or self.transport.is_closing():
            return  # the client went away; a committed event stays stored
        parts = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            parts += [name, b": ", value, b"\r\n"]
        parts += [b"content-type: application/json\r\nx-amzn-requestid: ", request_id(),
                  b"\r\n"]
        for name, value in extra:
            parts += [name, b": ", value, b"\r\n"]
        if not cycle.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += [b"content-length: ", str(len(body)).encode(), b"\r\n\r\n", body]
        self.transport.write(b"".join(parts))
        if not cycle.keep_alive:
            self.transport.close()
            return
        self.on_response_complete()


def protocol_for(app: IngestApp) -> type[FastProtocol]:
    """uvicorn's ``http`` protocol class for this app."""
    return type("IngestProtocol", (FastProtocol,), {"ingest": app})
