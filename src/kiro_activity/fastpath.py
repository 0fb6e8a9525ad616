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
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .errors import ApiError, InternalServerError
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
    """uvicorn's httptools protocol, serving single telemetry events without ASGI."""

    ingest: IngestApp  # set on the subclass made by :func:`protocol_for`

    def on_headers_complete(self) -> None:
        fast = self._fast_cycle()
        if fast is None:
            super().on_headers_complete()
        else:
            self.cycle = fast  # type: ignore[assignment]

    def _fast_cycle(self) -> _FastCycle | None:
        route = ROUTES.get(self.url)
        if route is None or self.parser.get_method() != b"POST" or self.access_log:
            return None
        if self.cycle is not None and not self.cycle.response_complete:
            return None  # a request of this connection is in flight: queue like uvicorn does
        headers: dict[str, str] = {}
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
