"""The ingestion edge: a plain ASGI app speaking SendTelemetryEvent (awsJson 1.0 and restJson1).

The hot path is deliberately a bare ASGI handler (no framework routing or request objects): per
request it authenticates, rate-limits, reads the body within its limit, validates it
(:mod:`.events`), checks the profile ARN and Kiro ``userId`` against the token, and waits for the
landing log's group commit before answering ``200 {}``. Everything below the edge is plain
functions and the :class:`~.landing.LandingLog`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from . import batchcheck, breakdown, events, openapi
from .admin import Admin, AdminApi
from .auth import Authenticator, FailureLimiter, RateLimiter
from .body import ClientDisconnected, read_body
from .config import Config
from .errors import (
    AccessDeniedError,
    ApiError,
    InternalServerError,
    ThrottlingError,
    UnknownOperationError,
    ValidationError,
    retry_seconds,
)
from .landing import BatchRecord, LandingLog, LandingRecord
from .metrics import deltas
from .schedule import Scheduler
from .store import Principal
from .web import WebPages

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

TARGET = "AmazonCodeWhispererService.SendTelemetryEvent"
AWS_JSON = "application/x-amz-json-1.0"
BATCH_PATH = "/v1/batch/SendTelemetryEvent"
OK_BODY = b"{}"
JSON_HEADERS = [(b"content-type", b"application/json")]
WANTED_HEADERS = frozenset({
    b"authorization", b"content-type", b"content-length", b"content-encoding", b"x-amz-target",
    b"x-amzn-codewhisperer-optout",
})
_request_ids = itertools.count(1)
_PROCESS_ID = uuid.uuid4().hex[:12]


class IngestApp:
    """The ASGI application. Owns the landing log during its lifespan."""

    def __init__(self, config: Config, *, landing: LandingLog | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self._own_landing = landing is None
        self.landing = landing or LandingLog(
            config.landing_db, clock=clock, max_group=config.max_group_commit,
            dedupe_days=config.dedupe_days,
        )
        self.auth = Authenticator(config.control, clock=clock)
        self.failures = FailureLimiter(config.auth_failures_per_source,
                                       config.auth_failure_window)
        self.limiter = RateLimiter(config.rate_per_token, config.burst_per_token)
        self.event_limiter = RateLimiter(config.events_per_token, config.events_burst_per_token,
                                         what="events")
        self._openapi = orjson.dumps(openapi.document(config))
        self.checker = batchcheck.Checker(config.batch_workers)
        self.scheduler = Scheduler(config, clock) if config.schedule else None
        admin = Admin(config, clock)
        self.admin_api = AdminApi(admin, self.auth, self.failures)
        self.pages = WebPages(admin, self.failures)
        self._stop = asyncio.Event()
        #: single events answered by :mod:`.fastpath` (the rest went through ASGI)
        self.fast_requests = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith("/admin"):
            app = self.admin_api if path.startswith("/admin/v1/") else self.pages
            await app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                   if k in WANTED_HEADERS}
        client = scope.get("client")
        headers["source"] = client[0] if client else ""  # not a header name: never sent
        try:
            await self._route(scope["method"], scope["path"], headers, receive, send)
        except ApiError as exc:
            await _send_error(send, exc)
        except ClientDisconnected:
            return  # nothing was stored and no one is left to answer
        except Exception:
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            await _send_error(send, InternalServerError("internal error; retry the request"))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.landing.start(asyncio.get_running_loop())
                if self.scheduler is not None:
                    self._tasks.append(asyncio.create_task(
                        self.scheduler.run(self._stop, self._barrier)))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._stop.set()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                self.checker.close()
                if self._own_landing:
                    self.landing.close()
                self.auth.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _barrier(self) -> None:
        """Wait until every group taken by the landing log so far is durable."""
        await self.landing.barrier()

    async def _route(self, method: str, path: str, headers: dict[str, str],
                     receive: Receive, send: Send) -> None:
        if method == "POST" and path == "/":
            target = headers.get("x-amz-target")
            if target != TARGET:
                raise UnknownOperationError(
                    f"unknown operation {target!r} in X-Amz-Target; this endpoint serves {TARGET}"
                    if target else f"missing X-Amz-Target header; send X-Amz-Target: {TARGET}"
                )
            await self._single(headers, receive, send, "awsJson1_0", AWS_JSON)
        elif method == "POST" and path == "/SendTelemetryEvent":
            await self._single(headers, receive, send, "restJson1", "application/json")
        elif method == "POST" and path == BATCH_PATH:
            await self._batch(headers, receive, send)
        elif method == "GET" and path == "/health":
            await self._health(send)
        elif method == "GET" and path == "/":
            await _send(send, 303, b"", [(b"location", b"/admin/")])
        elif method == "GET" and path == "/openapi.json":
            await _send(send, 200, self._openapi)
        else:
            raise _not_found(method, path)

    async def _single(self, headers: dict[str, str], receive: Receive, send: Send,
                      protocol: str, content_type: str) -> None:
        principal = self._admit(headers)
        _check_content_type(headers, content_type)
        body = await read_body(receive, headers, self.config.max_body_bytes)
        record = self._record(events.parse_request(body), body, principal, headers, protocol)
        await self.landing.append([record])
        await _send(send, 200, OK_BODY)

    def single_record(self, headers: dict[str, str], body: bytes, protocol: str,
                      content_type: str) -> LandingRecord:
        """The checks of :meth:`_single` on a body already read in full (the fast path of
        :mod:`.fastpath`): the record to store, or the ApiError to answer."""
        principal = self._admit(headers)
        _check_content_type(headers, content_type)
        return self._record(events.parse_request(body), body, principal, headers, protocol)

    async def _batch(self, headers: dict[str, str], receive: Receive, send: Send) -> None:
        principal = self._admit(headers, events=0)
        _check_content_type(headers, "application/x-ndjson", "application/json")
        body = await read_body(receive, headers, self.config.max_batch_bytes)
        lines = batchcheck.split_lines(body)
        if len(lines) > self.config.max_batch_lines:
            raise ValidationError(
                f"{len(lines)} lines in one batch; at most {self.config.max_batch_lines} allowed",
                reason="CONTENT_LENGTH_EXCEEDS_THRESHOLD",
            )
        # every line costs one event of the token's bucket; lines past what it covers are
        # answered 429 (none covered: the whole call is, with its Retry-After)
        granted, wait = self.event_limiter.take(principal.token_id, len(lines))
        account = self.auth.account(principal.account_id)
        token = batchcheck.Token(principal.account_id, principal.principal,
                                 account.region if account is not None else None,
                                 headers.get("x-amzn-codewhisperer-optout", ""),
                                 self.config.max_body_bytes)
        checked = await self.checker.check(body, lines[:granted], token)
        batch = BatchRecord(principal.account_id, principal.principal, "batch",
                            [lines[i] for i in checked.accepted], checked.members,
                            checked.client_tokens, checked.opt_outs, checked.client_ts,
                            checked.ides, checked.counts)
        results = _ok_results(granted)  # each line's result, as JSON
        for i, status, body_ in checked.refused:
            results[i] = orjson.dumps({"line": i + 1, "status": status, **body_})
        if granted < len(lines):
            throttled = ThrottlingError(
                f"{len(lines) - granted} of {len(lines)} lines are over the rate limit of "
                f"{self.event_limiter.rate:g} events/s per token (burst "
                f"{self.event_limiter.burst:g}); send them again in {retry_seconds(wait)} s",
                retry_after=wait)
            results += [orjson.dumps({"line": number, "status": 429, **throttled.body()})
                        for number in range(granted + 1, len(lines) + 1)]
        accepted = len(batch)
        stored = await self.landing.append([batch]) if accepted else 0
        summary = orjson.dumps({
            "lines": len(lines), "accepted": accepted, "stored": stored,
            "duplicates": accepted - stored, "rejected": len(lines) - accepted,
            "throttled": len(lines) - granted,
        })  # then "results", joined from the lines' JSON: what orjson writes for the list
        answer = b"".join((summary[:-1], b',"results":[', b",".join(results), b"]}"))
        extra = error_headers(throttled)[1:] if granted < len(lines) else None
        await _send(send, 200, answer, extra)

    def _admit(self, headers: dict[str, str], events: int = 1) -> Principal:
        """The token's principal, its request taken from its rate limit (and ``events``); a
        source that failed to authenticate too often is refused first."""
        source = headers.get("source", "")
        refused = self.failures.blocked(source)
        if refused is not None:
            raise ThrottlingError(refused, retry_after=self.failures.retry_after(source))
        try:
            principal = self.auth.principal(headers.get("authorization"))
        except AccessDeniedError:
            self.failures.failed(source)
            raise
        self.limiter.check(principal.token_id)
        if events:
            self.event_limiter.take(principal.token_id, events)
        return principal

    def _record(self, request: events.TelemetryRequest, body: bytes, principal: Principal,
                headers: dict[str, str], protocol: str) -> LandingRecord:
        opt_out = self._check(request, principal, headers)
        amounts, interaction = deltas(request.member, request.event, request.ide_category)
        return LandingRecord(
            principal.account_id, principal.principal, request.member, request.client_token,
            opt_out, request.client_timestamp, request.ide_category, protocol, body,
            amounts, interaction, breakdown.dim_of(request.event, request.ide_category),
        )

    def _check(self, request: events.TelemetryRequest, principal: Principal,
               headers: dict[str, str]) -> str | None:
        """:func:`.batchcheck.check` of a single event: the account's Region is looked up only
        for an event with a profileArn."""
        region = None
        if request.profile_arn is not None:
            account = self.auth.account(principal.account_id)
            region = account.region if account is not None else None
        return batchcheck.check(request, principal.account_id, principal.principal, region,
                                headers.get("x-amzn-codewhisperer-optout", ""))

    async def _health(self, send: Send) -> None:
        ok = self.landing.healthy
        body = {"status": "ok" if ok else "degraded", "landing_log": "ok" if ok else "failing",
                "commits": self.landing.commits, "fast_path_requests": self.fast_requests,
                "batches_checked_in_workers": self.checker.in_workers}
        await _send(send, 200 if ok else 503, orjson.dumps(body))


#: the JSON result of an accepted batch line, by line number - 1 (a line of a large batch
#: then costs a list item, not a dict built and written: 10% of the loop's time in a bulk load)
_OK_LINES: list[bytes] = []


def _ok_results(n: int) -> list[bytes]:
    """The results of lines 1..n, all accepted (the refused ones are put in by the caller)."""
    while len(_OK_LINES) < n:  # at most max_batch_lines of them, made once
        _OK_LINES.append(orjson.dumps({"line": len(_OK_LINES) + 1, "status": 200}))
    return _OK_LINES[:n]


def create_app(config: Config, **kwargs: Any) -> IngestApp:
    return IngestApp(config, **kwargs)


def _check_content_type(headers: dict[str, str], *allowed: str) -> None:
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    if media and media not in allowed:
        raise ValidationError(
            f"Content-Type {media!r} is not accepted here; send {' or '.join(allowed)}"
        )


def _not_found(method: str, path: str) -> ApiError:
    error = UnknownOperationError(
        f"no operation at {method} {path}; see /openapi.json for the operations served"
    )
    error.status = 404
    return error


def request_id() -> bytes:
    """A new x-amzn-RequestId: unique per process start and request."""
    return f"{_PROCESS_ID}-{next(_request_ids):012d}".encode()


def error_headers(exc: ApiError) -> list[tuple[bytes, bytes]]:
    """The headers of an error answer: its type, and when to retry."""
    extra = [(b"x-amzn-errortype", exc.type_name.encode())]
    if isinstance(exc, ThrottlingError):
        extra.append((b"retry-after", str(retry_seconds(exc.retry_after)).encode()))
    elif exc.status == 503:
        extra.append((b"retry-after", b"1"))
    return extra


async def _send(send: Send, status: int, body: bytes,
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [*JSON_HEADERS, (b"x-amzn-requestid", request_id()),
               (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, exc: ApiError) -> None:
    await _send(send, exc.status, orjson.dumps(exc.body()), error_headers(exc))
