"""Administration: what an admin may do (:class:`Admin`), and the admin HTTP API at ``/admin/v1/``.

Every operation takes the calling :class:`~.store.Principal` and first checks that it is an admin
token that administers the account; anything else is refused before any data is read, with the
same answer whether or not the account exists. The web pages (:mod:`.web`) call the same
operations. The API speaks JSON with a bearer admin token; errors have one shape,
``{"error": {"type", "message", "problems": [{check, message}], "warnings": [...]}}``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

from . import audit, daily, dashboard, location, store
from . import settings as settings_mod
from .auth import Authenticator, FailureLimiter
from .config import Config
from .deliver import Backoff
from .errors import (
    AdminError,
    AdminServerError,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    KiroActivityError,
    MethodNotAllowedError,
    NotFoundError,
    SettingsConflict,
    SettingsRejected,
    TooManyFailuresError,
    UnauthorizedError,
    retry_seconds,
)
from .store import Principal

log = logging.getLogger(__name__)
#: every route takes every method, so that a wrong one is answered in the JSON error shape
ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
MAX_BODY = 1 << 20  # a settings change with a bucket policy is a few kB; policies are <= 20 kB


@dataclass
class Admin:
    """The admin operations, each authorised against the calling principal."""

    config: Config
    clock: Callable[[], float] = time.time
    #: the S3 client used for the bucket checks (None: boto3's default credential chain)
    s3_client: Any = None

    @contextmanager
    def conn(self) -> Iterator[store.Connection]:
        """A connection to the control database, closed after use."""
        conn = store.connect(self.config.control)
        try:
            yield conn
        finally:
            conn.close()

    @staticmethod
    def authorise(p: Principal, account_id: str) -> None:
        """Refuse unless ``p`` is an admin of ``account_id`` (same answer if it does not exist)."""
        if p.kind != "admin":
            raise ForbiddenError("a telemetry token cannot use the admin API; "
                                 "use an admin token (kiro-activity tokens issue --admin)")
        if not p.may_administer(account_id):
            raise ForbiddenError(f"this admin token does not administer account {account_id!r}")

    def accounts(self, p: Principal) -> list[store.Account]:
        if p.kind != "admin":
            raise ForbiddenError("a telemetry token cannot use the admin API")
        with self.conn() as conn:
            found = (store.get_account(conn, a) for a in sorted(p.scopes))
            return [a for a in found if a is not None]

    def account(self, p: Principal, account_id: str) -> store.Account:
        self.authorise(p, account_id)
        with self.conn() as conn:
            return store.require_account(conn, account_id)

    def settings(self, p: Principal, account_id: str) -> settings_mod.Settings:
        self.authorise(p, account_id)
        with self.conn() as conn:
            return settings_mod.get(conn, account_id)

    def change(self, p: Principal, account_id: str, changes: Mapping[str, Any],
               policy: Any = None) -> tuple[settings_mod.Settings, location.LocationReport]:
        """Validate and save (SettingsRejected: nothing saved); audited as this admin."""
        self.authorise(p, account_id)
        now = self.clock()
        with self.conn() as conn:
            return settings_mod.update(
                conn, account_id, changes, actor=p.actor, now=now, today=_day(now),
                writer=self.config.writer_principal, policy=policy, client=self.s3_client)

    def validate(self, p: Principal, account_id: str, changes: Mapping[str, Any] | None = None,
                 policy: Any = None) -> location.LocationReport:
        """The checks of the saved settings, or of the saved settings with ``changes`` (a dry
        run: nothing is saved)."""
        self.authorise(p, account_id)
        with self.conn() as conn:
            if changes is None:
                return settings_mod.validate(conn, account_id, writer=self.config.writer_principal,
                                             policy=policy, client=self.s3_client,
                                             now=self.clock())
            account = store.require_account(conn, account_id)
            wanted = settings_mod.merge(settings_mod.get(conn, account_id), changes,
                                        account.region)
        return settings_mod.check(wanted, account, writer=self.config.writer_principal,
                                  policy=policy, client=self.s3_client)

    def deliveries(self, p: Principal, account_id: str) -> dict[str, object]:
        self.authorise(p, account_id)
        with self.conn() as conn:
            return daily.status(conn, account_id)

    def replace(self, p: Principal, account_id: str, day_text: str) -> daily.Outcome:
        """Produce a closed day again and overwrite what was delivered (audited)."""
        self.authorise(p, account_id)
        day = daily.check_day(day_text)
        if not daily.closed(day, self.clock()):
            raise ConflictError(f"{day} is not closed yet (it closes at 00:00 UTC)")
        with self.conn() as conn:
            planned = daily.planned(conn, account_id, day)
            s = settings_mod.get(conn, account_id)
        if not planned and not (s.enabled and s.enabled_since and s.enabled_since <= day):
            raise ConflictError(
                f"there is no report of {day} to produce again: reports were not on for this "
                "account that day" + (f" (they are on since {s.enabled_since})"
                                      if s.enabled and s.enabled_since else ""))
        return daily.deliver_day(self.config, account_id, day, now=self.clock, replace=True,
                                 attempts=3, backoff=Backoff(base=0.5, cap=5), actor=p.actor)

    def audit(self, p: Principal, account_id: str, *, limit: int = 100,
              before_id: int | None = None) -> list[audit.AuditEntry]:
        self.authorise(p, account_id)
        with self.conn() as conn:
            return audit.audit_log(conn, account_id, limit=limit, before_id=before_id)

    def tokens(self, p: Principal, account_id: str) -> list[store.TokenInfo]:
        self.authorise(p, account_id)
        with self.conn() as conn:
            return store.list_tokens(conn, account_id)

    def usage_range(self, p: Principal, account_id: str, first: str | None,
                    last: str | None) -> tuple[dashboard.Range, str]:
        """The range asked for, and the account's report layout (its CSV names)."""
        self.authorise(p, account_id)
        r = dashboard.parse_range(first, last, self.clock())
        with self.conn() as conn:
            store.require_account(conn, account_id)
            return r, settings_mod.get(conn, account_id).layout

    def usage(self, p: Principal, account_id: str, first: str | None,
              last: str | None) -> dict[str, Any]:
        """The dashboard's figures of the range (see :func:`.dashboard.document`)."""
        r, layout = self.usage_range(p, account_id, first, last)
        with self.conn() as conn:
            return dashboard.document(self.config, conn, account_id, layout, r, self.clock())

    def usage_page(self, p: Principal, account_id: str, r: dashboard.Range,
                   user: str | None = None) -> dict[str, Any]:
        """What the dashboard's overview, or one user's page, shows."""
        self.authorise(p, account_id)
        with self.conn() as conn:
            store.require_account(conn, account_id)
            return dashboard.page_data(self.config, conn, account_id, r, self.clock(), user)

    def usage_users(self, p: Principal, account_id: str, r: dashboard.Range,
                    **options: Any) -> dict[str, Any]:
        """One page of the dashboard's users table."""
        self.authorise(p, account_id)
        return dashboard.users(self.config, account_id, r, self.clock(), **options)

    def usage_csv(self, p: Principal, account_id: str, first: str | None,
                  last: str | None) -> tuple[bytes, str]:
        """The users of the range with the 44 metrics summed, as the report's CSV cells, and
        a file name for it."""
        r, layout = self.usage_range(p, account_id, first, last)
        rows = dashboard.user_totals(self.config, account_id, r, self.clock())
        return (dashboard.export_csv(rows, layout),
                f"{account_id}_usage_{r.first.isoformat()}_{r.last.isoformat()}.csv")


def _day(now: float) -> date:
    return datetime.fromtimestamp(now, UTC).date()


# --- the JSON API -------------------------------------------------------------------------------


def json_response(status: int, body: object) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store"})


def csv_response(data: bytes, filename: str) -> Response:
    return Response(data, media_type="text/csv; charset=utf-8", headers={
        "cache-control": "no-store", "x-content-type-options": "nosniff",
        "content-disposition": f'attachment; filename="{filename}"'})


def error_response(exc: AdminError) -> Response:
    response = json_response(exc.status, exc.body())
    if exc.status == 401:
        response.headers["www-authenticate"] = 'Bearer realm="kiro-activity admin"'
    elif isinstance(exc, TooManyFailuresError):
        response.headers["retry-after"] = str(retry_seconds(exc.retry_after))
    return response


async def read_json(request: Request) -> dict[str, Any]:
    """The request's JSON object (an empty body is ``{}``), read within :data:`MAX_BODY`."""
    declared = request.headers.get("content-length")
    if declared is not None and re.fullmatch(r"[0-9]{1,19}", declared) \
            and int(declared) > MAX_BODY:
        raise BadRequestError(f"body of {declared} bytes; at most {MAX_BODY} accepted")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise BadRequestError(f"body over {MAX_BODY} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequestError("the body must be a JSON object")
    return body


def _policy(body: dict[str, Any]) -> Any:
    """The optional ``policy`` of a body: a JSON object, or JSON text."""
    policy = body.pop("policy", None)
    if policy is not None and not isinstance(policy, dict | str):
        raise BadRequestError(f"policy must be a JSON object or JSON text, not "
                              f"{type(policy).__name__}")
    return policy


class AdminApi:
    """The ``/admin/v1/`` routes: bearer admin token, JSON in and out."""

    def __init__(self, admin: Admin, auth: Authenticator,
                 failures: FailureLimiter | None = None) -> None:
        self.admin, self.auth = admin, auth
        self.failures = failures or FailureLimiter(0, 60)
        a = "/admin/v1/accounts/{account_id}"
        route = self._route
        self.router = Router(routes=[
            route("/admin/v1/accounts", GET=self.list_accounts),
            route(a, GET=self.get_account),
            route(f"{a}/settings", GET=self.get_settings, PATCH=self.patch_settings),
            route(f"{a}/settings/validate", POST=self.validate),
            route(f"{a}/deliveries", GET=self.deliveries),
            route(f"{a}/deliveries/{{day}}/replace", POST=self.replace),
            route(f"{a}/audit", GET=self.audit),
            route(f"{a}/tokens", GET=self.tokens),
            route(f"{a}/usage", GET=self.usage),
            route(f"{a}/usage.csv", GET=self.usage_csv),
        ])
        self.router.default = self._no_route

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.router(scope, receive, send)

    def principal(self, request: Request) -> Principal:
        """The admin calling, or Unauthorized/Forbidden (before anything else is looked at);
        a source that failed too often is refused first, and each Unauthorized counts."""
        source = request.client.host if request.client else ""
        refused = self.failures.blocked(source)
        if refused is not None:
            raise TooManyFailuresError(refused, retry_after=self.failures.retry_after(source))
        try:
            return self._principal(request)
        except UnauthorizedError:
            self.failures.failed(source)
            raise

    def _principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization")
        if not header:
            raise UnauthorizedError("missing Authorization header; send 'Authorization: Bearer "
                                    "<admin token>'")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("the Authorization header must be 'Bearer <admin token>'")
        found = self.auth.lookup(token.strip())
        if found is None:
            raise UnauthorizedError("the token is unknown, revoked or expired")
        if found.kind != "admin":
            raise ForbiddenError("a telemetry token cannot use the admin API; "
                                 "use an admin token (kiro-activity tokens issue --admin)")
        return found

    def _route(self, path: str, **handlers: Callable[..., Any]) -> Route:
        """A route that takes every method: authenticate, pick the handler of the method (a
        405 in the JSON error shape when there is none), answer JSON."""
        async def endpoint(request: Request) -> Response:
            return await self._answer(request, handlers)
        return Route(path, endpoint, methods=ANY_METHOD)

    async def _no_route(self, scope: Any, receive: Any, send: Any) -> None:
        response = await self._answer(Request(scope, receive), {})
        await response(scope, receive, send)

    async def _answer(self, request: Request,
                      handlers: dict[str, Callable[..., Any]]) -> Response:
        try:
            p = self.principal(request)
            if not handlers:
                raise NotFoundError(f"no admin operation at {request.url.path}; "
                                    "see /openapi.json")
            handler = handlers.get(request.method)
            if handler is None:
                raise MethodNotAllowedError(f"{request.url.path} takes "
                                            f"{', '.join(handlers)}, not {request.method}")
            status, body = await handler(request, p, **request.path_params)
            return body if isinstance(body, Response) else json_response(status, body)
        except SettingsRejected as exc:
            return error_response(BadRequestError(
                "settings not saved", problems=exc.problems, warnings=exc.warnings))
        except SettingsConflict as exc:
            return error_response(ConflictError(str(exc)))
        except AdminError as exc:
            return error_response(exc)
        except KiroActivityError as exc:
            return error_response(BadRequestError(str(exc)))
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.url.path)
            return error_response(AdminServerError("internal error; the service log has the "
                                                   "details"))

    async def list_accounts(self, request: Request, p: Principal) -> tuple[int, object]:
        found = await run_in_threadpool(self.admin.accounts, p)
        return 200, {"accounts": [_account(a) for a in found]}

    async def get_account(self, request: Request, p: Principal,
                          account_id: str) -> tuple[int, object]:
        account = await run_in_threadpool(self.admin.account, p, account_id)
        s = await run_in_threadpool(self.admin.settings, p, account_id)
        return 200, {**_account(account), "settings": s.as_dict()}

    async def get_settings(self, request: Request, p: Principal,
                           account_id: str) -> tuple[int, object]:
        s = await run_in_threadpool(self.admin.settings, p, account_id)
        return 200, {"settings": s.as_dict(), "schema": settings_mod.json_schema()}

    async def patch_settings(self, request: Request, p: Principal,
                             account_id: str) -> tuple[int, object]:
        self.admin.authorise(p, account_id)
        body = await read_json(request)
        policy = _policy(body)
        saved, report = await run_in_threadpool(self.admin.change, p, account_id, body, policy)
        return 200, {"settings": saved.as_dict(), "validation": report.as_dict()}

    async def validate(self, request: Request, p: Principal,
                       account_id: str) -> tuple[int, object]:
        self.admin.authorise(p, account_id)
        body = await read_json(request)
        policy = _policy(body)
        changes = body.pop("settings", None)
        if body:
            raise BadRequestError(f"unknown field(s) {sorted(body)}; send settings and policy")
        if changes is not None and not isinstance(changes, dict):
            raise BadRequestError("settings must be an object of settings to try")
        report = await run_in_threadpool(self.admin.validate, p, account_id, changes, policy)
        return 200, report.as_dict()

    async def deliveries(self, request: Request, p: Principal,
                         account_id: str) -> tuple[int, object]:
        return 200, await run_in_threadpool(self.admin.deliveries, p, account_id)

    async def replace(self, request: Request, p: Principal, account_id: str,
                      day: str) -> tuple[int, object]:
        outcome = await run_in_threadpool(self.admin.replace, p, account_id, day)
        body = {"account_id": account_id, "day": outcome.day.isoformat(), "state": outcome.state,
                "objects": [{"key": k, "result": r} for k, r in outcome.objects],
                "error": None if outcome.error is None else {
                    "code": outcome.error.code, "message": str(outcome.error)}}
        if outcome.note:  # replicas: the day waits for one, or another one delivers it
            raise ConflictError(f"{day}: {outcome.note}")
        return (200 if outcome.state != "failed" else 502), body

    async def audit(self, request: Request, p: Principal, account_id: str) -> tuple[int, object]:
        limit = _int_param(request, "limit", 100, 1, 1000)
        before = request.query_params.get("before")
        before_id = _int_param(request, "before", 0, 1, 2**62) if before is not None else None
        entries = await run_in_threadpool(self.admin.audit, p, account_id, limit=limit,
                                          before_id=before_id)
        return 200, {"entries": [e.as_dict() for e in entries]}

    async def tokens(self, request: Request, p: Principal, account_id: str) -> tuple[int, object]:
        found = await run_in_threadpool(self.admin.tokens, p, account_id)
        return 200, {"tokens": [{
            "token_id": t.token_id, "kind": t.kind, "user": t.principal,
            "administers": account_id if t.kind == "admin" else None,
            "created_at": audit.iso(t.created_at), "expires_at": audit.iso(t.expires_at),
            "revoked_at": audit.iso(t.revoked_at)} for t in found]}


    async def usage(self, request: Request, p: Principal, account_id: str) -> tuple[int, object]:
        q = request.query_params
        return 200, await run_in_threadpool(self.admin.usage, p, account_id, q.get("from"),
                                            q.get("to"))

    async def usage_csv(self, request: Request, p: Principal,
                        account_id: str) -> tuple[int, object]:
        q = request.query_params
        data, name = await run_in_threadpool(self.admin.usage_csv, p, account_id,
                                             q.get("from"), q.get("to"))
        return 200, csv_response(data, name)


def _account(a: store.Account) -> dict[str, str]:
    return {"account_id": a.account_id, "region": a.region, "profile_arn": a.profile_arn}


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,19}", raw) or not low <= int(raw) <= high:
        raise BadRequestError(f"query parameter {name}={raw!r} must be an integer from {low} "
                              f"to {high}")
    return int(raw)
