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

Lingering close (#12): a request refused before its body has arrived (over a size limit, a bad
token ...) on a connection that is then closed would leave the client's bytes unread, and the
kernel answers unread bytes with a reset: a client still writing sees ``ECONNRESET`` instead of
the answer, and SDKs take that for a timeout and send the body again. Every close of a connection
whose request is still arriving is therefore a lingering close, as nginx's: the answer is sent,
our side half-closed (``write_eof``), and what the client still sends read and discarded until it
closes its side, or for at most ``linger_time`` seconds, ``linger_timeout`` seconds without data,
``linger_bytes`` bytes, whichever comes first. A lingering connection still counts against
``max_connections``. Closes for a time limit (408) or the connection cap (503) and at shutdown are
immediate.
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


class _Transport:
    """The connection's transport as uvicorn sees it: the real one, except that ``close`` asks
    the protocol, which lingers when the request is still arriving (see the module docstring).
    The methods of the hot path are bound once, not looked up through ``__getattr__``."""

    def __init__(self, real: asyncio.Transport, protocol: FastProtocol) -> None:
        self.real, self.protocol, self.closing = real, protocol, False
        self.write, self.get_extra_info = real.write, real.get_extra_info
        self.pause_reading, self.resume_reading = real.pause_reading, real.resume_reading

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def is_closing(self) -> bool:
        return self.closing or self.real.is_closing()

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.protocol.closed_by_server()


class FastProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, serving single telemetry events without ASGI, with a
    deadline on each request's receipt and a cap on open connections."""

    ingest: IngestApp  # set on the subclass made by :func:`protocol_for`
    #: the deadline in force (loop time) and what it is for, if any
    _until: float | None = None
    _until_what: tuple[float, str] = (0.0, "")
    #: the one timer that checks it, and when that timer fires (see _arm)
    _timer: asyncio.TimerHandle | None = None
    _timer_at = 0.0
    _arriving = False  # a request has begun and not been received in full
    _abrupt = False  # the next close is immediate (time limits, the cap, shutdown)
    _lingering: tuple[float, float, int] | None = None  # (until, last data, bytes read)
    _linger_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._real = transport
        super().connection_made(_Transport(transport, self))  # type: ignore[arg-type]
        config = self.ingest.config
        if len(self.connections) > config.max_connections:
            exc = OverloadedError(f"the server holds its most connections "
                                  f"({config.max_connections}); try again shortly")
            self._refuse(exc)
            return
        self._arm(config.header_timeout, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm(stop=True)
        self._abrupt = True  # uvicorn closes the transport it holds: nothing to linger for
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering is None:
            super().data_received(data)
            return
        until, _, read = self._lingering  # the rest of a refused request: read and dropped
        self._lingering = (until, self.loop.time(), read + len(data))
        if read + len(data) > self.ingest.config.linger_bytes:
            self._real.close()

    def closed_by_server(self) -> None:
        """The server closes this connection (uvicorn, an answer with ``connection: close``, a
        refusal): at once, or lingering while the client may still be sending its request."""
        config = self.ingest.config
        if (self._abrupt or not self._arriving or config.linger_time <= 0
                or self._real.is_closing() or not self._real.can_write_eof()):
            self._real.close()
            return
        now = self.loop.time()
        self._lingering = (now + config.linger_time, now, 0)
        self._real.resume_reading()
        self._real.write_eof()  # after what is buffered: the client gets the answer, then EOF
        self._linger_timer = self.loop.call_later(min(config.linger_timeout,
                                                      config.linger_time), self._linger_check)

    def _linger_check(self) -> None:
        self._linger_timer = None
        assert self._lingering is not None
        until, last, _ = self._lingering
        now, idle = self.loop.time(), self.ingest.config.linger_timeout
        if now >= until or now - last >= idle:
            self._real.close()
            return
        self._linger_timer = self.loop.call_later(max(0.01, min(until, last + idle) - now),
                                                  self._linger_check)

    def shutdown(self) -> None:
        self._abrupt = self._abrupt or self.cycle is None or self.cycle.response_complete
        if self._lingering is not None:
            self._real.close()
            return
        super().shutdown()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arriving = True
        if self._until is None:
            self._arm(self.ingest.config.header_timeout, "headers")

    def _arm(self, seconds: float, what: str) -> None:
        """Set the deadline. A request sets two and clears them, so this does not start and
        cancel a timer each time: one timer per connection stays, fires at the deadline it was
        started for, and starts again for the deadline then in force (if any); it is restarted
        early only when the new deadline comes before it."""
        if seconds <= 0:
            self._until = None
            return
        until = self.loop.time() + seconds
        self._until, self._until_what = until, (seconds, what)
        if self._timer is None or self._timer_at > until:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at, self._timer = until, self.loop.call_at(until, self._check_deadline)

    def _disarm(self, *, stop: bool = False) -> None:
        self._until = None  # the timer, when it fires, finds nothing to do
        if stop and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_deadline(self) -> None:
        self._timer = None
        until = self._until
        if until is None:
            return
        if until - self.loop.time() > 0.001:  # a later deadline than the timer's: wait for it
            self._timer_at, self._timer = until, self.loop.call_at(until, self._check_deadline)
            return
        self._until = None
        self._too_slow(*self._until_what)

    def _too_slow(self, seconds: float, what: str) -> None:
        if self.transport.is_closing():
            return
        self._abrupt = True  # a client this slow is not waited for
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # the body is still arriving (the deadline ends when it is in): nothing is stored;
            # an ASGI request sees a disconnect, and nothing it sends goes out
            cycle.disconnected = True
            cycle.message_event.set()
            if getattr(cycle, "response_started", False):  # answered already (say, a 401)
                self.transport.close()
                return
        self._refuse(RequestTimeoutError(
            f"the request's {what} did not arrive within {seconds:g} s; the connection is "
            "closed"))

    def _refuse(self, exc: ApiError) -> None:
        """Answer ``exc`` before any request was read in full, and close at once."""
        self._abrupt = True
        body = orjson.dumps(exc.body())
        parts = [STATUS_LINE[exc.status], b"content-type: application/json\r\n"
                 b"x-amzn-requestid: ", request_id(), b"\r\n"]
        for name, value in error_headers(exc):
            parts += [name, b": ", value, b"\r\n"]
        parts += [b"connection: close\r\ncontent-length: ", str(len(body)).encode(),
                  b"\r\n\r\n", body]
        self.transport.write(b"".join(parts))
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
        self._arriving = False
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
        self.ingest.landing.submit([record], self.loop,
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
