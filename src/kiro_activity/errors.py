"""The one error tree of kiro-activity.

::

    KiroActivityError                   anything this package raises on purpose
    ├── ApiError                        answered over HTTP in the AWS JSON error shape
    │   ├── ValidationError             400  the request is malformed or too large
    │   ├── UnknownOperationError       400  POST / without our X-Amz-Target operation
    │   ├── AccessDeniedError           403  no/unknown/revoked token, or another account/user
    │   ├── ThrottlingError             429  over the per-token rate limit
    │   ├── RequestTimeoutError         408  a request not received in time (slow client)
    │   ├── OverloadedError             503  too many open connections
    │   └── InternalServerError         500  our fault (503 when the store cannot commit)
    │       └── StoreUnavailableError   503  the landing log could not commit (disk full, I/O)
    ├── AdminError                      answered by the admin API as {"error": {type, message,
    │   │                                   problems, warnings}}
    │   ├── UnauthorizedError           401  no, unknown, revoked or expired admin token/session
    │   ├── ForbiddenError              403  a telemetry token, or an account the admin lacks
    │   ├── BadRequestError             400  malformed body, bad value, invalid settings
    │   ├── NotFoundError               404  no such admin endpoint
    │   ├── MethodNotAllowedError       405  the endpoint does not take this method
    │   ├── ConflictError               409  a day not closed yet, or a change saved meanwhile
    │   ├── TooManyFailuresError        429  too many failed authentications from this source
    │   └── AdminServerError            500  our fault
    ├── DamagedDatabaseError            a database file that SQLite cannot read (named)
    ├── UsageError                      a CLI/library caller asked for something impossible
    │   ├── SettingsRejected            settings that fail validation, with every problem
    │   └── SettingsConflict            another change was saved while these were checked
    └── DeliveryError                   a report object could not be put at its destination
        ├── TransientDeliveryError      throttling, 5xx, connection: retry with backoff
        └── ConfigurationDeliveryError  403, no bucket, wrong owner, KMS denied, wrong Region:
                                        retried too, and shown to the admin at once

Every message names the bad value or field and, where it helps, what to do instead.
"""

from __future__ import annotations

import math


class KiroActivityError(Exception):
    """Base of every error this package raises on purpose."""


class ApiError(KiroActivityError):
    """An error answered over HTTP: ``status``, AWS error ``type_name`` and optional ``reason``."""

    status = 500
    type_name = "InternalServerException"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason

    def body(self) -> dict[str, str]:
        """The AWS JSON error body: ``{"__type", "message", "reason"?}``."""
        out = {"__type": self.type_name, "message": self.message}
        if self.reason:
            out["reason"] = self.reason
        return out


class ValidationError(ApiError):
    """400: malformed JSON, missing field, wrong type, not one union member, or too large."""

    status = 400
    type_name = "ValidationException"


class UnknownOperationError(ApiError):
    """400: ``POST /`` without ``X-Amz-Target: AmazonCodeWhispererService.SendTelemetryEvent``."""

    status = 400
    type_name = "UnknownOperationException"


class AccessDeniedError(ApiError):
    """403: missing, unknown, revoked or expired token, or another account's/user's data."""

    status = 403
    type_name = "AccessDeniedException"


def retry_seconds(wait: float) -> int:
    """The whole seconds of a ``Retry-After`` header for a wait (at least 1): the same figure
    is given in the message, so that the two never disagree."""
    return max(1, math.ceil(wait - 1e-9))


class ThrottlingError(ApiError):
    """429: the token is over its rate limit; ``retry_after`` seconds tells when to try again."""

    status = 429
    type_name = "ThrottlingException"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeoutError(ApiError):
    """408: the request's headers or body did not arrive in time; the connection is closed."""

    status = 408
    type_name = "RequestTimeoutException"


class OverloadedError(ApiError):
    """503: the server holds as many connections as it allows; try again shortly."""

    status = 503
    type_name = "ServiceUnavailableException"


class InternalServerError(ApiError):
    """500: our fault; the client may retry (with the same clientToken)."""

    status = 500
    type_name = "InternalServerException"


class StoreUnavailableError(InternalServerError):
    """503: the landing log could not commit (disk full, I/O error); nothing was stored."""

    status = 503


class AdminError(KiroActivityError):
    """An admin API error: ``status``, ``type_name``, and the problems/warnings it lists."""

    status = 400
    type_name = "BadRequest"

    def __init__(self, message: str, *, problems: list[tuple[str, str]] | None = None,
                 warnings: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems or []
        self.warnings = warnings or []

    def body(self) -> dict[str, object]:
        return {"error": {
            "type": self.type_name, "message": self.message,
            "problems": [{"check": c, "message": m} for c, m in self.problems],
            "warnings": [{"check": c, "message": m} for c, m in self.warnings],
        }}


class UnauthorizedError(AdminError):
    """401: no, unknown, revoked or expired admin token (or web session)."""

    status = 401
    type_name = "Unauthorized"


class ForbiddenError(AdminError):
    """403: a telemetry token, or an account this admin does not administer."""

    status = 403
    type_name = "Forbidden"


class BadRequestError(AdminError):
    """400: a malformed body, a bad value, or settings that fail validation."""


class NotFoundError(AdminError):
    """404: no such admin endpoint."""

    status = 404
    type_name = "NotFound"


class MethodNotAllowedError(AdminError):
    """405: the endpoint exists but not with this method."""

    status = 405
    type_name = "MethodNotAllowed"


class AdminServerError(AdminError):
    """500: our fault; the service log has the details."""

    status = 500
    type_name = "InternalError"


class ConflictError(AdminError):
    """409: the request is valid but not now (a day that is not closed yet)."""

    status = 409
    type_name = "Conflict"


class TooManyFailuresError(AdminError):
    """429: this source address failed to authenticate too often; it must wait
    ``retry_after`` seconds (the Retry-After header, the figure of the message)."""

    status = 429
    type_name = "TooManyRequests"

    def __init__(self, message: str, *, retry_after: float = 60.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DamagedDatabaseError(KiroActivityError):
    """A database file of the data folder is damaged or is not a database; the message names
    the file."""


class UsageError(KiroActivityError):
    """A caller asked for something impossible (unknown account, bad id); exit 1 in the CLI."""


class SettingsRejected(UsageError):
    """Settings that fail validation: every problem (and warning) as (check, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]],
                 warnings: list[tuple[str, str]] | None = None) -> None:
        self.problems = problems
        self.warnings = warnings or []
        super().__init__("settings not saved:\n" + "\n".join(f"- {m}" for _, m in problems))


class SettingsConflict(UsageError):
    """Another change of the same settings was saved while these were being checked."""


class DeliveryError(KiroActivityError):
    """A put failed; ``code`` is the destination's error code (S3's, or ours)."""

    transient = True

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class TransientDeliveryError(DeliveryError):
    """Throttling, a 5xx or a lost connection: retried quietly with backoff and jitter."""

    transient = True


class ConfigurationDeliveryError(DeliveryError):
    """The destination refuses us (access, bucket, owner, KMS, Region): the admin must act."""

    transient = False
