"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json``.

The request schemas are derived from the member table of :mod:`.events`, so the document cannot
drift from what the validator accepts.
"""

from __future__ import annotations

from typing import Any

from . import __version__, events, settings
from .config import Config

ERRORS = {
    "400": "ValidationException (malformed, missing field, wrong type, too large: reason "
           "CONTENT_LENGTH_EXCEEDS_THRESHOLD) or UnknownOperationException",
    "403": "AccessDeniedException: missing/unknown/revoked/expired token, profileArn of another "
           "account or Region, or a Kiro userId that is not the token's user",
    "429": "ThrottlingException: over the per-token rate limit (Retry-After header)",
    "500": "InternalServerException: our fault, retry with the same clientToken",
    "503": "InternalServerException: the landing log cannot commit (disk full, I/O); nothing "
           "was stored, retry later",
}


def _error_responses() -> dict[str, Any]:
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {code: {"description": text, **ref} for code, text in ERRORS.items()}


def _operation(summary: str, content_type: str, extra: dict[str, Any]) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/SendTelemetryEventRequest"}
    ok = {"description": "stored durably (fsync'd) exactly once; body `{}`",
          "content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "summary": summary,
        "security": [{"bearer": []}],
        "parameters": [
            {"name": "x-amzn-codewhisperer-optout", "in": "header", "required": False,
             "schema": {"type": "string", "enum": ["true", "false"]}},
            {"name": "Content-Encoding", "in": "header", "required": False,
             "schema": {"type": "string", "enum": ["gzip", "identity"]}},
            *extra.get("parameters", []),
        ],
        "requestBody": {"required": True, "content": {content_type: {"schema": schema}}},
        "responses": {"200": ok, **_error_responses()},
    }


def document(config: Config) -> dict[str, Any]:
    """The whole OpenAPI document for this service's configuration."""
    operation = "AmazonCodeWhispererService.SendTelemetryEvent"
    target = {"name": "X-Amz-Target", "in": "header", "required": True,
              "schema": {"type": "string", "const": operation}}
    batch_ok = {"description": "per-line results: `{lines, accepted, stored, duplicates, rejected,"
                " results: [{line, status, __type?, message?}]}`",
                "content": {"application/json": {"schema": {"type": "object"}}}}
    components = events.openapi_components()
    components["AdminError"] = {"type": "object", "properties": {"error": {
        "type": "object", "required": ["type", "message", "problems", "warnings"],
        "properties": {"type": {"type": "string"}, "message": {"type": "string"},
                       "problems": {"type": "array", "items": {"$ref": "#/components/schemas/"
                                                                       "Finding"}},
                       "warnings": {"type": "array", "items": {"$ref": "#/components/schemas/"
                                                                       "Finding"}}}}}}
    components["Finding"] = {"type": "object", "properties": {
        "check": {"type": "string"}, "message": {"type": "string"}}}
    components["Error"] = {
        "type": "object", "required": ["__type", "message"],
        "properties": {"__type": {"type": "string"}, "message": {"type": "string"},
                       "reason": {"type": "string"}},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kiro-activity API", "version": __version__,
            "description": (
                "SendTelemetryEvent as real IDE clients send it (awsJson 1.0 and restJson1), "
                f"bodies up to {config.max_body_bytes} bytes (after gzip decompression), "
                f"rate limit {config.rate_per_token:g} requests/s per token "
                f"(burst {config.burst_per_token:g}) and {config.events_per_token:g} events/s "
                f"per token (burst {config.events_burst_per_token:g}; a bulk line is an event)."
            ),
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/": {"post": _operation("SendTelemetryEvent (awsJson 1.0)",
                                     "application/x-amz-json-1.0", {"parameters": [target]})},
            "/SendTelemetryEvent": {"post": _operation("SendTelemetryEvent (restJson1)",
                                                       "application/json", {})},
            "/v1/batch/SendTelemetryEvent": {"post": {
                "summary": "Bulk import: one SendTelemetryEvent request body per line (NDJSON), "
                           "all as the token's user, validated like single requests; "
                           f"at most {config.max_batch_bytes} bytes and "
                           f"{config.max_batch_lines} lines per call",
                "security": [{"bearer": []}],
                "requestBody": {"required": True, "content": {"application/x-ndjson": {
                    "schema": {"type": "string"}}}},
                "responses": {"200": batch_ok, **_error_responses()},
            }},
            "/health": {"get": {"summary": "Liveness and landing-log health", "responses": {
                "200": {"description": "ok"}, "503": {"description": "cannot commit"}}}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            **admin_paths(),
        },
    }


ADMIN_ERRORS = {
    "400": "BadRequest: malformed body or a bad value; invalid settings list every problem",
    "401": "Unauthorized: no, unknown, revoked or expired admin token",
    "403": "Forbidden: a telemetry token, or an account this admin token does not administer "
           "(the same answer whether or not the account exists)",
}


RANGE = [{"name": name, "in": "query", "required": False, "description": text,
          "schema": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}}
         for name, text in (("from", "first UTC day (default: 30 days before `to`)"),
                            ("to", "last UTC day, today at the latest (default: yesterday)"))]


ACCOUNT_ID = {"name": "account_id", "in": "path", "required": True,
              "description": "the 12-digit AWS account id",
              "schema": {"type": "string", "pattern": "^[0-9]{12}$"}}
DAY = {"name": "day", "in": "path", "required": True, "description": "a UTC day, YYYY-MM-DD",
       "schema": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}}


def _admin(summary: str, body: dict[str, Any] | None = None,
           extra: dict[str, str] | None = None,
           media: str = "application/json") -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/AdminError"}}}}
    op: dict[str, Any] = {
        "summary": summary, "security": [{"bearer": []}],
        "responses": {"200": {"description": "ok", "content": {media: {
            "schema": {"type": "object"} if media == "application/json" else
            {"type": "string"}}}},
            **{code: {"description": text, **error}
               for code, text in {**ADMIN_ERRORS, **(extra or {})}.items()}},
    }
    if body is not None:
        op["requestBody"] = {"required": False, "content": {"application/json": {
            "schema": body}}}
    return op


def admin_paths() -> dict[str, Any]:
    """The admin API (bearer admin token); the settings schema comes from the settings table."""
    change = {**settings.json_schema()}
    change["properties"] = {**change["properties"], "policy": {
        "description": "A bucket policy (object or JSON text) to check instead of reading it "
                       "from the bucket"}}
    trial = {"type": "object", "additionalProperties": False, "properties": {
        "settings": settings.json_schema(), "policy": change["properties"]["policy"]}}
    a = "/admin/v1/accounts/{account_id}"
    paths: dict[str, Any] = {
        "/admin/v1/accounts": {"get": _admin("The accounts this admin token administers")},
        a: {"get": _admin("An account and its settings")},
        f"{a}/settings": {
            "get": _admin("The account's settings and their JSON schema"),
            "patch": _admin("Validate and save settings (S3 location checks 1-4 of the "
                            "docs/location-checks.md); refused with every problem, nothing saved",
                            change),
        },
        f"{a}/settings/validate": {"post": _admin(
            "Run the checks on the saved settings, or on the saved settings with `settings` "
            "applied (a dry run)", trial)},
        f"{a}/deliveries": {"get": _admin("Each day's delivery state and the last delivery "
                                          "error")},
        f"{a}/deliveries/{{day}}/replace": {"post": _admin(
            "Produce a closed day again and overwrite it (audited)", None,
            {"409": "Conflict: the day is not closed yet",
             "502": "the delivery failed (the error is in the body)"})},
        f"{a}/audit": {"get": _admin("Settings changes, token issues and revokes, report "
                                     "replacements: newest first (?limit, ?before=id)")},
        f"{a}/tokens": {"get": _admin("The account's tokens: ids, kinds, users, states "
                                      "(never the tokens)")},
        f"{a}/usage": {"get": {**_admin(
            "Usage of a range of UTC days (the dashboard's data): `days` (one entry per day: "
            "`day`, `active_users`, the 44 metrics by the names of the account's CSV layout, "
            "`events`, `Inline_SuggestedLines`, `rates`), `users` (one per active user: "
            "`user_id` and the 44 metrics summed), `totals`, `rates`, `ai_lines`, `by_ide`, "
            "`by_language`, `idle_seats`, `freshness`"), "parameters": RANGE}},
        f"{a}/usage.csv": {"get": {**_admin(
            "The users of a range as CSV: `UserId` then the 44 metric columns of the "
            "account's layout, summed; quoted and neutralised like the report, so for "
            "delivered days it equals the sum of their report rows", None, {}, "text/csv"),
            "parameters": RANGE}},
    }
    for path, item in paths.items():  # the path's own parameters, declared once per path
        params = [ACCOUNT_ID] if "{account_id}" in path else []
        if "{day}" in path:
            params.append(DAY)
        if params:
            item["parameters"] = params
    audit_get = paths[f"{a}/audit"]["get"]
    audit_get["parameters"] = [
        {"name": "limit", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
        {"name": "before", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": 2**62}}]
    return paths
