"""The usage dashboard's pages under ``/admin/accounts/{id}/usage``, behind the admin login.

Rendered on the server from the same functions as the admin API's ``usage`` endpoints
(:mod:`.dashboard`): every figure, table and definition is in the HTML, so the pages work with
scripts off. With scripts on, ``static/dashboard.js`` draws the charts with uPlot (vendored in
``static/vendor/uplot/``, served by the service itself) from the page's own data, embedded as a
JSON block; the Content-Security-Policy allows scripts from this service only.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from . import dashboard
from .admin import csv_response
from .breakdown import NOT_RECORDED
from .errors import BadRequestError
from .metrics import AI_LINES, RATES
from .store import Principal

if TYPE_CHECKING:
    from .web import WebPages

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
STATIC = {  # path under /admin/static/ -> (package file, media type)
    "dashboard.js": ("static/dashboard.js", "text/javascript"),
    "vendor/uplot/uPlot.iife.min.js": ("static/vendor/uplot/uPlot.iife.min.js",
                                       "text/javascript"),
    "vendor/uplot/uPlot.min.css": ("static/vendor/uplot/uPlot.min.css", "text/css"),
}
#: the users table's columns: (sort key, heading)
USER_COLUMNS = [
    ("active_days", "Active days"), ("events", "Events"),
    ("Inline_SuggestionsCount", "Inline suggestions shown"),
    ("Inline_AcceptanceCount", "Inline suggestions accepted"),
    ("inline_acceptance_rate", "Acceptance rate"),
    ("Inline_AICodeLines", "Inline lines accepted"), ("Chat_AICodeLines", "Chat lines accepted"),
    ("Chat_MessagesSent", "Chat messages sent"),
    ("CodeReview_FindingsCount", "Code review findings"),
]


def _json_block(data: Any) -> str:
    """JSON that is safe inside a ``<script type="application/json">`` element."""
    text = orjson.dumps(data).decode()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"[0-9]{1,9}", raw):
        raise BadRequestError(f"{name}={raw!r} must be a whole number below 10^9")
    return int(raw)


class DashboardPages:
    """The dashboard's routes; ``pages`` gives the session, rendering and error handling."""

    def __init__(self, pages: WebPages) -> None:
        self.pages, self.admin = pages, pages.admin
        self.static = {path: (resources.files("kiro_activity").joinpath(f).read_bytes(), media)
                       for path, (f, media) in STATIC.items()}
        env = pages.env
        env.filters["num"] = lambda v: f"{v:,}"
        env.filters["pct"] = lambda v: "-" if v is None else f"{v * 100:.1f}%"
        env.filters["json_block"] = _json_block
        env.globals.update(dash_rates=RATES, dash_ai_lines=AI_LINES, dash_users=USER_COLUMNS,
                           not_recorded=NOT_RECORDED, definitions=dashboard.definitions())

    def routes(self) -> list[Route]:
        a = "/admin/accounts/{account_id}/usage"
        page = self.pages._page
        return [
            Route(a, page(self.overview)),
            Route(f"{a}/users", page(self.users)),
            Route(f"{a}/user", page(self.user)),
            Route(f"{a}.csv", page(self.export)),
            Route("/admin/static/{path:path}", self.asset),
        ]

    async def asset(self, request: Request) -> Response:
        found = self.static.get(request.path_params["path"])
        if found is None:
            return Response("not found", 404, media_type="text/plain")
        return Response(found[0], media_type=found[1], headers={
            "cache-control": "max-age=3600", "x-content-type-options": "nosniff"})

    def render(self, template: str, **context: Any) -> HTMLResponse:
        response = self.pages.render(template, **context)
        response.headers["content-security-policy"] = CSP
        return response

    def _range(self, request: Request) -> dashboard.Range:
        q = request.query_params
        preset = q.get("preset")
        if preset:
            return dashboard.parse_range(*dashboard.preset_range(preset, self.admin.clock()),
                                         self.admin.clock())
        return dashboard.parse_range(q.get("from") or None, q.get("to") or None,
                                     self.admin.clock())

    def _context(self, request: Request, p: Principal, session_id: str, account_id: str,
                 r: dashboard.Range) -> dict[str, Any]:
        from .web import csrf_token
        span = {"from": r.first.isoformat(), "to": r.last.isoformat()}
        return {"principal": p, "csrf": csrf_token(session_id), "account_id": account_id,
                "range": r, "span": span, "span_query": urlencode(span),
                "preset": request.query_params.get("preset", ""), "path": request.url.path}

    async def overview(self, request: Request, p: Principal, session_id: str,
                       account_id: str) -> Response:
        self.admin.authorise(p, account_id)
        r = self._range(request)
        data = await run_in_threadpool(self.admin.usage_page, p, account_id, r)
        return self.render("usage.html", **self._context(request, p, session_id, account_id, r),
                           data=data, user=None)

    async def user(self, request: Request, p: Principal, session_id: str,
                   account_id: str) -> Response:
        self.admin.authorise(p, account_id)
        user = request.query_params.get("id")
        if not user:
            raise BadRequestError("which user? add ?id=USER_ID")
        r = self._range(request)
        data = await run_in_threadpool(self.admin.usage_page, p, account_id, r, user)
        ctx = self._context(request, p, session_id, account_id, r)
        return self.render("usage.html", **ctx, data=data, user=user,
                           user_query=urlencode({"id": user, **ctx["span"]}))

    async def users(self, request: Request, p: Principal, session_id: str,
                    account_id: str) -> Response:
        self.admin.authorise(p, account_id)
        r = self._range(request)
        q = request.query_params
        sort = q.get("sort") or "events"
        descending = q.get("dir", "desc") != "asc"
        search = (q.get("q") or "").strip()[:256]
        table = await run_in_threadpool(
            self.admin.usage_users, p, account_id, r, search=search, sort=sort,
            descending=descending, page=_int(request, "page", 1))
        ctx = self._context(request, p, session_id, account_id, r)

        def link(**changes: Any) -> str:
            params = {**ctx["span"], "q": search, "sort": sort,
                      "dir": "desc" if descending else "asc", **changes}
            return f"{request.url.path}?{urlencode({k: v for k, v in params.items() if v})}"

        return self.render("usage_users.html", **ctx, table=table, link=link, search=search)

    async def export(self, request: Request, p: Principal, session_id: str,
                     account_id: str) -> Response:
        self.admin.authorise(p, account_id)
        r = self._range(request)
        data, name = await run_in_threadpool(self.admin.usage_csv, p, account_id,
                                             r.first.isoformat(), r.last.isoformat())
        return csv_response(data, name)

