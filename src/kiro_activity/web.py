"""The admin web pages: log in with an admin token, see and change settings, delivery status.

A login exchanges the admin token for a session: a random id in a cookie that is ``HttpOnly``,
``SameSite=Strict``, limited to ``/admin`` (and ``Secure`` over HTTPS); the control database
keeps only its hash, and the session ends when the token is revoked. Every change is a POST
that must carry the session's CSRF token (an HMAC of the session id, so nothing more is stored)
and, when the browser sends one, an ``Origin`` of this site. Pages are rendered on the server
with Jinja2 (autoescaped), with no script, and a Content-Security-Policy that allows none.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route, Router

from . import audit, daily, sessions, store
from . import settings as settings_mod
from .admin import Admin
from .auth import FailureLimiter
from .dashboard_web import DashboardPages
from .errors import (
    AdminError,
    BadRequestError,
    ForbiddenError,
    KiroActivityError,
    SettingsConflict,
    SettingsRejected,
)
from .store import Principal

log = logging.getLogger(__name__)
COOKIE = "kat_session"
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
MAX_FORM = 256 * 1024


class Redirect(Exception):
    """Answer with a 303 to ``location`` (a login, or the page after a change)."""

    def __init__(self, location: str) -> None:
        self.location = location


def csrf_token(session_id: str) -> str:
    return hmac.new(session_id.encode(), b"kiro-activity csrf", hashlib.sha256).hexdigest()


class WebPages:
    """The ``/admin`` pages (everything under ``/admin`` but the ``/admin/v1/`` API)."""

    def __init__(self, admin: Admin, failures: FailureLimiter | None = None) -> None:
        self.admin = admin
        self.failures = failures or FailureLimiter(0, 60)
        self.env = Environment(loader=PackageLoader("kiro_activity", "templates"),
                               autoescape=True)
        self.env.globals["settings_table"] = settings_mod.SETTINGS
        self.env.filters["iso"] = audit.iso
        self.css = resources.files("kiro_activity").joinpath("static/admin.css").read_bytes()
        a = "/admin/accounts/{account_id}"
        self.router = Router(routes=[
            Route("/admin", lambda r: RedirectResponse("/admin/", 303)),
            Route("/admin/", self._page(self.index)),
            Route("/admin/login", self.login_form, methods=["GET"]),
            Route("/admin/login", self.login, methods=["POST"]),
            Route("/admin/logout", self.logout, methods=["POST"]),
            Route("/admin/static/admin.css", self.stylesheet),
            Route(a, self._page(self.account)),
            Route(f"{a}/settings", self._page(self.save_settings), methods=["POST"]),
            Route(f"{a}/deliveries/{{day}}/replace", self._page(self.replace),
                  methods=["POST"]),
            *DashboardPages(self).routes(),
        ])
        self.router.default = self._not_found

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.router(scope, receive, send)

    # --- plumbing ---------------------------------------------------------------------------

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    async def _not_found(self, scope: Any, receive: Any, send: Any) -> None:
        response = self.render("error.html", 404, title="Not found",
                               message=f"There is no page at {scope['path']}.", principal=None)
        await response(scope, receive, send)

    def session(self, request: Request) -> tuple[Principal, str]:
        """The logged-in admin and the session id, or a redirect to the login page."""
        session_id = request.cookies.get(COOKIE)
        if session_id:
            with self.admin.conn() as conn:
                p = sessions.session_principal(conn, session_id, now=self.admin.clock())
            if p is not None:
                return p, session_id
        raise Redirect("/admin/login?next=" + quote(request.url.path, safe="/"))

    async def checked_form(self, request: Request, session_id: str) -> FormData:
        """The POSTed form, once its origin and CSRF token are right."""
        _check_origin(request)
        form = await read_form(request, max_fields=100)
        sent = form.get("csrf")
        if not isinstance(sent, str) or not hmac.compare_digest(sent, csrf_token(session_id)):
            raise ForbiddenError("the form's CSRF token is missing or wrong; reload the page "
                                 "and try again")
        return form

    def _page(self, handler: Callable[..., Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            principal: Principal | None = None
            session_id: str | None = None
            try:
                principal, session_id = await run_in_threadpool(self.session, request)
                response: Response = await handler(request, principal, session_id,
                                                   **request.path_params)
                return response
            except Redirect as r:
                return RedirectResponse(r.location, 303, headers=SECURITY_HEADERS)
            except SettingsConflict as exc:
                return self._error(409, "Conflict", str(exc), principal, session_id)
            except AdminError as exc:
                return self._error(exc.status, exc.type_name, exc.message, principal,
                                   session_id)
            except KiroActivityError as exc:
                return self._error(400, "Bad request", str(exc), principal, session_id)
            except Exception:
                log.exception("unexpected error on %s %s", request.method, request.url.path)
                return self._error(500, "Internal error",
                                   "Something went wrong on our side; the service log has the "
                                   "details.", principal, session_id)
        return endpoint

    def _error(self, status: int, title: str, message: str, principal: Principal | None,
               session_id: str | None) -> HTMLResponse:
        csrf = csrf_token(session_id) if principal is not None and session_id else ""
        return self.render("error.html", status, title=title, message=message,
                           principal=principal, csrf=csrf)

    # --- pages ------------------------------------------------------------------------------

    async def stylesheet(self, request: Request) -> Response:
        return Response(self.css, media_type="text/css",
                        headers={"cache-control": "max-age=3600",
                                 "x-content-type-options": "nosniff"})

    async def login_form(self, request: Request) -> Response:
        return self.render("login.html", next=_safe_next(request.query_params.get("next")),
                           error=None, principal=None)

    async def login(self, request: Request) -> Response:
        try:
            _check_origin(request)
            form = await read_form(request, max_fields=10)
        except AdminError as exc:
            return self.render("error.html", exc.status, title=exc.type_name,
                               message=exc.message, principal=None)
        token = str(form.get("token") or "").strip()
        target = _safe_next(str(form.get("next") or ""))
        source = request.client.host if request.client else ""
        refused = self.failures.blocked(source)
        if refused is not None:
            return self.render("login.html", 429, next=target, error=f"Refused: {refused}.",
                               principal=None)
        _, session_id = await run_in_threadpool(self._open_session, token)
        if session_id is None:
            self.failures.failed(source)
            error = ("That is not a valid admin token (unknown, revoked or expired, or not an"
                     " admin token).")  # the same for every refused token: nothing leaks
            return self.render("login.html", 401, next=target, error=error, principal=None)
        response = RedirectResponse(target, 303, headers=SECURITY_HEADERS)
        response.set_cookie(COOKIE, session_id, max_age=sessions.SESSION_SECONDS, path="/admin",
                            httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    def _open_session(self, token: str) -> tuple[Principal | None, str | None]:
        """(the token's principal, a new session id when it is an admin's)."""
        if not token:
            return None, None
        with self.admin.conn() as conn:
            p = store.lookup_token(conn, token, now=self.admin.clock())
            if p is None or p.kind != "admin":
                return p, None
            return p, sessions.open_session(conn, p, now=self.admin.clock())

    async def logout(self, request: Request) -> Response:
        session_id = request.cookies.get(COOKIE)
        if session_id:
            try:
                await self.checked_form(request, session_id)
            except AdminError as exc:
                return self.render("error.html", exc.status, title=exc.type_name,
                                   message=exc.message, principal=None)
            await run_in_threadpool(self._close_session, session_id)
        response = RedirectResponse("/admin/login", 303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path="/admin")
        return response

    def _close_session(self, session_id: str) -> None:
        with self.admin.conn() as conn:
            sessions.close_session(conn, session_id)

    async def index(self, request: Request, p: Principal, session_id: str) -> Response:
        rows = await run_in_threadpool(self._overview, p)
        return self.render("index.html", principal=p, csrf=csrf_token(session_id), rows=rows)

    def _overview(self, p: Principal) -> list[dict[str, Any]]:
        rows = []
        for account in self.admin.accounts(p):
            status = self.admin.deliveries(p, account.account_id)
            days: list[dict[str, Any]] = status["days"]  # type: ignore[assignment]
            delivered = [d["day"] for d in days if d["state"] == "delivered"]
            rows.append({"account": account,
                         "settings": self.admin.settings(p, account.account_id),
                         "last_delivered": delivered[-1] if delivered else None,
                         "last_error": status["last_error"]})
        return rows

    async def account(self, request: Request, p: Principal, session_id: str,
                      account_id: str) -> Response:
        return await run_in_threadpool(self._account_page, request, p, session_id, account_id)

    def _account_page(self, request: Request, p: Principal, session_id: str, account_id: str,
                      *, status: int = 200, values: dict[str, Any] | None = None,
                      policy: str = "", findings: dict[str, Any] | None = None,
                      notice: str | None = None) -> Response:
        account = self.admin.account(p, account_id)
        current = self.admin.settings(p, account_id)
        params = request.query_params
        if notice is None and params.get("saved"):
            notice = "Settings saved."
        elif notice is None and daily.DAY_RE.fullmatch(params.get("replaced", "")):
            notice = f"The report of {params['replaced']} was produced and delivered again."
        return self.render(
            "account.html", status, principal=p, csrf=csrf_token(session_id), account=account,
            current=current, values=values or current.values(), policy=policy,
            findings=findings, notice=notice,
            deliveries=self.admin.deliveries(p, account_id),
            audit=[e.as_dict() for e in self.admin.audit(p, account_id, limit=20)],
            writer=self.admin.config.writer_principal)

    async def save_settings(self, request: Request, p: Principal, session_id: str,
                            account_id: str) -> Response:
        self.admin.authorise(p, account_id)
        form = await self.checked_form(request, session_id)
        values = _form_values(form)
        policy = str(form.get("policy") or "").strip()
        action = form.get("action")
        return await run_in_threadpool(self._apply, request, p, session_id, account_id, values,
                                       policy, action == "save")

    def _apply(self, request: Request, p: Principal, session_id: str, account_id: str,
               values: dict[str, Any], policy: str, save: bool) -> Response:
        if not save:
            try:
                report = self.admin.validate(p, account_id, values, policy or None)
            except SettingsRejected as exc:
                return self._account_page(request, p, session_id, account_id, status=400,
                                          values=values, policy=policy,
                                          findings=_findings(exc.problems, exc.warnings))
            found = _findings([(f.check, f.message) for f in report.problems],
                              [(f.check, f.message) for f in report.warnings])
            notice = ("This location passes every check (not saved yet)." if report.valid
                      else None)
            return self._account_page(request, p, session_id, account_id, values=values,
                                      policy=policy, findings=found, notice=notice)
        try:
            self.admin.change(p, account_id, values, policy or None)
        except SettingsRejected as exc:
            return self._account_page(request, p, session_id, account_id, status=400,
                                      values=values, policy=policy,
                                      findings=_findings(exc.problems, exc.warnings))
        raise Redirect(f"/admin/accounts/{account_id}?saved=1")

    async def replace(self, request: Request, p: Principal, session_id: str, account_id: str,
                      day: str) -> Response:
        self.admin.authorise(p, account_id)
        await self.checked_form(request, session_id)
        outcome = await run_in_threadpool(self.admin.replace, p, account_id, day)
        if outcome.state == "failed":
            message = str(outcome.error) if outcome.error else "delivery failed"
            return await run_in_threadpool(
                lambda: self._account_page(request, p, session_id, account_id, status=502,
                                           notice=f"Delivering {day} again failed: {message}"))
        if outcome.note:  # replicas: the day waits for one, or another one delivers it
            return await run_in_threadpool(
                lambda: self._account_page(request, p, session_id, account_id, status=409,
                                           notice=f"{day} is not delivered again yet: "
                                                  f"{outcome.note}"))
        raise Redirect(f"/admin/accounts/{account_id}?replaced={day}")


def _findings(problems: list[tuple[str, str]],
              warnings: list[tuple[str, str]]) -> dict[str, Any]:
    return {"valid": not problems, "problems": problems, "warnings": warnings}


def _form_values(form: FormData) -> dict[str, Any]:
    """Every setting of the form: a checkbox is on or off, an empty text clears the value."""
    values: dict[str, Any] = {}
    for s in settings_mod.SETTINGS:
        raw = form.get(s.name)
        if s.type == "bool":
            values[s.name] = raw == "on"
        else:
            values[s.name] = str(raw).strip() if isinstance(raw, str) else None
    return values


async def read_form(request: Request, *, max_fields: int) -> FormData:
    """A posted form within bounds, or a 400 that says what is wrong."""
    declared = request.headers.get("content-length")
    if declared is not None and (not re.fullmatch(r"[0-9]{1,19}", declared)
                                 or int(declared) > MAX_FORM):
        raise BadRequestError(f"the form is over {MAX_FORM} bytes")
    try:
        return await request.form(max_files=0, max_fields=max_fields, max_part_size=MAX_FORM)
    except MultiPartException as exc:
        raise BadRequestError(f"the form could not be read: {exc.message}") from None


def _check_origin(request: Request) -> None:
    """Refuse a POST that a browser says comes from another site (Sec-Fetch-Site), or whose
    Origin is another site."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise ForbiddenError(f"a form of another site ({site}) cannot post here")
    origin = request.headers.get("origin")
    if origin is None:
        return
    own = f"{request.url.scheme}://{request.url.netloc}"
    if origin != own:
        raise ForbiddenError(f"a form of {origin} cannot post to {own}")


def _safe_next(target: str | None) -> str:
    """Only a path of these pages: never an open redirect to another site."""
    if target and target.startswith("/admin") and not target.startswith("//") \
            and "\\" not in target and "\n" not in target and "\r" not in target:
        return target
    return "/admin/"
