"""Checking a bulk request's lines, on the event loop or in a worker process.

Every line of ``POST /v1/batch/SendTelemetryEvent`` is checked like a single event: its size,
the JSON and the telemetry rules (:func:`.events.parse_request`), its profileArn against the
token's account and Region, its Kiro ``userId`` against the token's user; and what it adds to
the counters is summed as it is parsed (:class:`.counters.BatchCounter`). That is about 9 us of
CPU per line, most of a bulk import's cost (the event loop then spends about 4 us a line, the
landing writer 2: bench/RESULTS.md). So a batch of :data:`WORKER_MIN_LINES` lines or more is
checked in **worker processes** (``batch_workers`` of them, default 2; a batch of at least
twice as many lines in one part per worker, at once, so that a single client keeps every core
busy) while the loop goes on serving. Only what the loop needs comes back: per accepted line
its index and the fields the landing log keeps, per refused line its status and error, and the
batch's counters. Smaller batches are checked on the loop (a round trip to a worker costs more
than they do).

Both ways run :func:`check_lines`, so they accept and refuse the same lines with the same
errors (a part's line numbers are the batch's). A worker that dies (killed, out of memory) costs
nothing but time: its batch is checked on the loop and a new worker is started for the next
one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from . import counters, events
from .counters import BatchCounts
from .errors import AccessDeniedError, ApiError, ValidationError

log = logging.getLogger(__name__)

#: a batch with fewer lines is checked on the event loop
WORKER_MIN_LINES = 256
OPTOUT_HEADER = {"true": "OPTOUT", "false": "OPTIN"}


@dataclass(frozen=True, slots=True)
class Token:
    """What the checks need to know of the token that sent the batch."""

    account_id: str
    user_id: str
    region: str | None  # the account's Region (None: the account is gone)
    opt_out_header: str  # the x-amzn-codewhisperer-optout header, "" when absent
    max_line_bytes: int


@dataclass(slots=True)
class Checked:
    """A batch's lines, checked: the accepted ones (their indexes, in order, and per line the
    fields a landing record keeps) and the refused ones (index, status, error body)."""

    accepted: list[int] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    client_tokens: list[str | None] = field(default_factory=list)
    opt_outs: list[str | None] = field(default_factory=list)
    client_ts: list[float | None] = field(default_factory=list)
    ides: list[str | None] = field(default_factory=list)
    refused: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    #: what the accepted lines add to the counters (:class:`.counters.BatchCounter`)
    counts: BatchCounts = field(default_factory=lambda: ({}, []))


def check(request: events.TelemetryRequest, account_id: str, user_id: str,
          region: str | None, opt_out_header: str) -> str | None:
    """Refuse an event that is not the token's user's (its profileArn's account and Region:
    ``region``, None when the account is gone; its Kiro userId); its optOutPreference, from
    the header when the body has none."""
    if request.profile_arn is not None:
        arn_region, arn_account = events.parse_profile_arn(request.profile_arn)
        if arn_account != account_id or region is None or arn_region != region:
            raise AccessDeniedError(
                f"profileArn {request.profile_arn} is not a profile of this token's account"
            )
    if request.user_id is not None and request.user_id != user_id:
        raise AccessDeniedError(
            f"telemetryEvent.{request.member}.userId is not the user of this token; "
            "a user can only send telemetry as themself"
        )
    if request.opt_out is not None:
        return request.opt_out
    return OPTOUT_HEADER.get(opt_out_header.lower())


def split_lines(body: bytes) -> list[bytes]:
    """The lines of a bulk call's NDJSON body (blank ones are not lines)."""
    return [line for line in body.split(b"\n") if line.strip()]


def check_body(body: bytes, granted: int, token: Token, first: int = 0) -> Checked:
    """:func:`check_lines` of the first ``granted`` lines of ``body`` (in a worker: one
    bytes object crosses to it, not a list of thousands)."""
    return check_lines(split_lines(body)[:granted], token, first)


def check_lines(lines: list[bytes], token: Token, first: int = 0) -> Checked:
    """Check every line like a single event (its size limit too); ``lines`` are the batch's
    from its line ``first`` (0-based) on, and the results say so."""
    out = Checked()
    limit = token.max_line_bytes
    parse = events.parse_request
    counter = counters.BatchCounter()
    for i, line in enumerate(lines, first):
        try:
            if len(line) > limit:
                raise ValidationError(
                    f"line {i + 1} is {len(line)} bytes; a line holds one event, at most "
                    f"{limit} bytes like a single request",
                    reason="CONTENT_LENGTH_EXCEEDS_THRESHOLD")
            request = parse(line)
            opt_out = check(request, token.account_id, token.user_id, token.region,
                            token.opt_out_header)
        except ApiError as exc:
            out.refused.append((i, exc.status, exc.body()))
            continue
        out.accepted.append(i)
        out.members.append(request.member)
        out.client_tokens.append(request.client_token)
        out.opt_outs.append(opt_out)
        out.client_ts.append(request.client_timestamp)
        out.ides.append(request.ide_category)
        counter.add(request.member, request.event, request.ide_category)
    out.counts = counter.counts()
    return out


def joined(parts: list[Checked]) -> Checked:
    """One batch's result from the results of its consecutive parts."""
    out = Checked()
    for part in parts:
        out.accepted += part.accepted
        out.members += part.members
        out.client_tokens += part.client_tokens
        out.opt_outs += part.opt_outs
        out.client_ts += part.client_ts
        out.ides += part.ides
        out.refused += part.refused
        counters.merge_cells(out.counts[0], part.counts[0])
        out.counts[1].extend(part.counts[1])  # in the lines' order: the first one's IDE counts
    return out


def _worker_start(parent: int) -> None:
    # Ctrl-C reaches the whole process group: the service stops its workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_end_with, args=(parent,), name="parent-watch", daemon=True).start()


def _end_with(parent: int) -> None:
    """End this worker once the service that started it is gone (killed: nothing else tells
    a pool's worker, whose queues it holds both ends of)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


class Checker:
    """Checks batches on the loop or in worker processes (started at the first large batch)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        #: batches checked in a worker (the rest: on the loop)
        self.in_workers = 0

    async def check(self, body: bytes, lines: list[bytes], token: Token) -> Checked:
        """Check ``lines``, the first lines of ``body`` (:func:`split_lines`)."""
        if self.workers <= 0 or len(lines) < WORKER_MIN_LINES:
            return check_lines(lines, token)
        loop = asyncio.get_running_loop()
        try:
            if self._pool is None:
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    self.workers, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_worker_start, initargs=(os.getpid(),))
            n = len(lines)
            parts = max(1, min(self.workers, n // WORKER_MIN_LINES))
            if parts == 1:
                checked = await loop.run_in_executor(self._pool, check_body, body, n, token)
            else:  # one part per worker, checked at once: a single client uses every core
                cuts = [n * k // parts for k in range(parts + 1)]
                checked = joined(await asyncio.gather(*(
                    loop.run_in_executor(self._pool, check_body, b"\n".join(lines[a:b]),
                                         b - a, token, a)
                    for a, b in itertools.pairwise(cuts))))
        except (BrokenProcessPool, OSError) as exc:  # died, or could not be started
            log.error("a batch checker process failed (%s); checking this batch here and "
                      "starting another for the next", exc or type(exc).__name__)
            self.close(wait=False)
            return check_lines(lines, token)
        self.in_workers += 1
        return checked

    def close(self, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None
