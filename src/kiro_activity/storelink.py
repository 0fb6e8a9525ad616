"""The link between HTTP worker processes and the one process that owns the landing log.

With ``serve --workers N`` the HTTP edge runs in N processes (each with its own interpreter, so
parsing and validation are not serialised by one GIL), and the landing log stays single-writer
in the supervising process: one group commit, one dedupe index, one counters watermark, exactly
as with one process. Each worker holds one end of a socket pair:

- :class:`RemoteLanding` (worker side) has the landing log's ``submit``/``append`` interface.
  Records submitted during one turn of the worker's event loop travel as one frame.
- :class:`StoreLink` (store side) hands each request's records to
  :meth:`.landing.LandingLog.submit` and, once the group commit is durable (or failed), sends
  the answer back; answers released by one commit travel as one frame.

A worker answers 200 only for an answer that says its records were committed; if the store
process goes away, every waiting request gets 503 and the worker shuts down.

Frames are a 4-byte little-endian length and a pickle. Pickle is safe here: the socket pair is
created by the supervisor and only its own children hold the other ends.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import pickle
import signal
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

from .errors import ApiError, InternalServerError, StoreUnavailableError
from .landing import LandingLog, LandingRecord

log = logging.getLogger(__name__)
_LEN = struct.Struct("<I")
#: how a failed commit is told to the worker: the error's kind and message
_ERRORS: dict[str, type[ApiError]] = {
    "store": StoreUnavailableError, "internal": InternalServerError,
}


def _as_tuple(r: LandingRecord) -> tuple[Any, ...]:
    return (r.account_id, r.user_id, r.member, r.client_token, r.opt_out, r.client_ts,
            r.ide_category, r.protocol, r.body, r.amounts, r.interaction)


class _Framed(asyncio.Protocol):
    """Length-prefixed pickled frames over a stream."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= 4:
            (size,) = _LEN.unpack_from(buffer, start)
            if len(buffer) - start - 4 < size:
                break
            frame = pickle.loads(memoryview(buffer)[start + 4:start + 4 + size])
            start += 4 + size
            self.frame_received(frame)
        if start:
            del buffer[:start]

    def frame_received(self, frame: Any) -> None:
        raise NotImplementedError

    def send_frame(self, frame: Any) -> None:
        payload = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
        assert self.transport is not None
        self.transport.write(_LEN.pack(len(payload)) + payload)


class StoreLink(_Framed):
    """Store side: commits what one worker sends and answers when it is durable."""

    def __init__(self, landing: LandingLog, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.landing, self.loop = landing, loop
        self._answers: list[tuple[int, Any]] = []

    def frame_received(self, frame: list[tuple[int, list[tuple[Any, ...]]]]) -> None:
        for msg_id, rows in frame:
            fut = self.landing.submit([LandingRecord(*row) for row in rows], self.loop)
            fut.add_done_callback(functools.partial(self._committed, msg_id))

    def _committed(self, msg_id: int, fut: asyncio.Future[int]) -> None:
        error = fut.exception()
        if error is None:
            answer: Any = fut.result()
        else:
            kind = "store" if isinstance(error, StoreUnavailableError) else "internal"
            if kind == "internal":
                log.error("unexpected error committing a worker's records: %r", error)
            answer = (kind, str(error) if kind == "store" else "internal error; retry")
        if not self._answers:
            self.loop.call_soon(self._send_answers)
        self._answers.append((msg_id, answer))

    def _send_answers(self) -> None:
        answers, self._answers = self._answers, []
        if self.transport is not None and not self.transport.is_closing():
            self.send_frame((answers, self.landing.commits, self.landing.healthy))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None  # the worker is gone; what it sent is committed anyway


class RemoteLanding(_Framed):
    """Worker side: the landing log of the supervising process, behind the socket pair."""

    def __init__(self, sock: socket.socket, *,
                 on_lost: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.sock = sock
        self.healthy = True
        self.commits = 0
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[int]] = {}
        self._outbox: list[tuple[int, list[tuple[Any, ...]]]] = []
        self._sent: set[int] = set()  # the requests of the frame not fully answered yet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_lost = on_lost if on_lost is not None else _stop_this_worker

    async def connect(self) -> None:
        """Attach the socket to the running loop (at the app's startup)."""
        self._loop = asyncio.get_running_loop()
        await self._loop.connect_accepted_socket(lambda: self, self.sock)

    async def append(self, records: Sequence[LandingRecord]) -> int:
        return await self.submit(records, asyncio.get_running_loop())

    def submit(self, records: Sequence[LandingRecord],
               loop: asyncio.AbstractEventLoop) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = loop.create_future()
        if self.transport is None or self.transport.is_closing():
            fut.set_exception(_store_gone())
            return fut
        msg_id = next(self._ids)
        self._waiting[msg_id] = fut
        if not self._outbox and not self._sent:
            loop.call_soon(self._send_outbox)
        self._outbox.append((msg_id, [_as_tuple(r) for r in records]))
        return fut

    def _send_outbox(self) -> None:
        """Send what gathered; while a frame is unanswered the next one gathers (the store
        would put it in its next group anyway), so a frame carries many requests under load."""
        outbox, self._outbox = self._outbox, []
        if not outbox:
            return
        if self.transport is None or self.transport.is_closing():
            for msg_id, _ in outbox:
                self._fail(msg_id, _store_gone())
            return
        self._sent = {msg_id for msg_id, _ in outbox}
        self.send_frame(outbox)

    def frame_received(self, frame: tuple[list[tuple[int, Any]], int, bool]) -> None:
        answers, self.commits, self.healthy = frame
        for msg_id, answer in answers:
            self._sent.discard(msg_id)
            fut = self._waiting.pop(msg_id, None)
            if fut is None or fut.done():
                continue
            if isinstance(answer, int):
                fut.set_result(answer)
            else:
                kind, message = answer
                fut.set_exception(_ERRORS.get(kind, InternalServerError)(message))
        if not self._sent:
            self._send_outbox()

    def _fail(self, msg_id: int, error: ApiError) -> None:
        fut = self._waiting.pop(msg_id, None)
        if fut is not None and not fut.done():
            fut.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.healthy = False
        for msg_id in list(self._waiting):
            self._fail(msg_id, _store_gone())
        log.error("the landing log's process is gone; this worker stops")
        self._on_lost()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _store_gone() -> StoreUnavailableError:
    return StoreUnavailableError(
        "the event could not be stored (the landing log's process is not running); "
        "nothing was stored, retry later"
    )


def _stop_this_worker() -> None:
    """Shut this worker down as uvicorn does on SIGTERM; exit hard if that hangs."""
    os.kill(os.getpid(), signal.SIGTERM)
    loop = asyncio.get_event_loop()
    loop.call_later(10, os._exit, 1)
