"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json``.

The request schemas are derived from the member table of :mod:`.events`, so the document cannot
drift from what the validator accepts.
"""

from __future__ import annotations

from typing import Any

from . import __version__, events
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
    components["Error"] = {
        "type": "object", "required": ["__type", "message"],
        "properties": {"__type": {"type": "string"}, "message": {"type": "string"},
                       "reason": {"type": "string"}},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kiro-activity ingestion API", "version": __version__,
            "description": (
                "SendTelemetryEvent as real IDE clients send it (awsJson 1.0 and restJson1), "
                f"bodies up to {config.max_body_bytes} bytes (after gzip decompression), "
                f"rate limit {config.rate_per_token:g} requests/s per token "
                f"(burst {config.burst_per_token:g})."
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
        },
    }
