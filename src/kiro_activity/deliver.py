"""Put report objects at their destination: an S3 bucket, or a local folder mirroring its keys.

Both destinations keep one contract (:class:`Destination`): a put is conditional (S3
``If-None-Match: *``; a hard link locally), so a retried delivery never overwrites what an earlier
attempt delivered, unless ``replace=True`` (the admin's ``--replace``). Every failure is a
:class:`~kiro_activity.errors.DeliveryError`, classified in one place (:func:`classify`) as
transient or configuration; :func:`put_with_retries` retries both with full-jitter backoff.
"""

from __future__ import annotations

import base64
import enum
import errno
import hashlib
import os
import random
import re
import secrets
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from .errors import ConfigurationDeliveryError, DeliveryError, TransientDeliveryError


class PutResult(enum.Enum):
    """What a put did."""

    CREATED = "created"  # the object did not exist and now does
    ALREADY_THERE = "already_there"  # the conditional put was refused: an earlier attempt put it
    REPLACED = "replaced"  # replace=True overwrote (or created) it


class Destination(Protocol):
    """Where a report object goes; the same contract for every kind of destination."""

    def put(self, key: str, data: bytes, *, replace: bool = False,
            content_type: str = "text/csv") -> PutResult: ...

    def describe(self) -> str: ...


# --- the local folder -------------------------------------------------------------------------

_TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EAGAIN, errno.EINTR,
                               errno.EBUSY, errno.ENOMEM, errno.ETIMEDOUT, errno.ESTALE})


def classify_os_error(error: OSError, where: str) -> DeliveryError:
    """A full disk or an I/O error is transient; anything else (EACCES, EROFS, ENOTDIR…) is not."""
    code = errno.errorcode.get(error.errno or 0, type(error).__name__)
    message = f"cannot write {where}: {code}: {error.strerror or error}"
    if error.errno in _TRANSIENT_ERRNOS:
        return TransientDeliveryError(message + " (will retry)", code=code)
    return ConfigurationDeliveryError(message + " (check the folder and its permissions)",
                                      code=code)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> None:
    """Create ``path`` and missing parents, making each new entry durable in its parent."""
    if path.is_dir():
        return
    _make_dirs(path.parent)
    with suppress(FileExistsError):
        path.mkdir()
    _fsync_dir(path.parent)


class LocalDestination:
    """The embedded default: a folder whose files mirror the S3 keys."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    def describe(self) -> str:
        return f"folder {self.root}"

    def path_of(self, key: str) -> Path:
        """The file for ``key``; ValueError for a key that is not a plain relative path."""
        segments = key.split("/")
        if key.startswith("/") or any(s in ("", ".", "..") for s in segments) or "\0" in key:
            raise ValueError(f"refusing object key {key!r}: it must be a relative path with no "
                             "empty, '.' or '..' segments")
        path = self.root.joinpath(*segments)
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise ValueError(f"refusing object key {key!r}: it leads outside {self.root}")
        return path

    def put(self, key: str, data: bytes, *, replace: bool = False,
            content_type: str = "text/csv") -> PutResult:
        final = self.path_of(key)
        try:
            _make_dirs(final.parent)
            tmp = final.parent / f".{final.name}.{secrets.token_hex(8)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                result = _publish(tmp, final, replace)
            finally:
                with suppress(FileNotFoundError):
                    os.unlink(tmp)
        except OSError as e:
            raise classify_os_error(e, f"{key!r} under {self.root}") from e
        return result


def _publish(tmp: Path, final: Path, replace: bool) -> PutResult:
    """Give the written temp file its final name: atomically, and only if new unless ``replace``."""
    if replace:
        os.replace(tmp, final)
        result = PutResult.REPLACED
    else:
        try:
            os.link(tmp, final)
        except FileExistsError:
            return PutResult.ALREADY_THERE
        result = PutResult.CREATED
    _fsync_dir(final.parent)
    return result


# --- S3 -----------------------------------------------------------------------------------------

_TRANSIENT_CODES = frozenset({  # plus any code containing "Throttl", any 429 and any 5xx
    "SlowDown", "RequestLimitExceeded", "TooManyRequestsException", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable", "OperationAborted",
    "ConditionalRequestConflict",  # 409: a concurrent write was in flight; S3 says retry
})
# botocore puts the bare HTTP status in Code when the reply has no error body (moto's bare Deny).
_BARE_STATUS_CODES = {"400": "BadRequest", "403": "AccessDenied", "404": "NotFound",
                      "412": "PreconditionFailed", "503": "ServiceUnavailable"}
# Known configuration errors and what the admin should do; any other 4xx is one too.
_ACCESS = "the bucket policy must let the report writer PutObject under the prefix, and the " \
          "bucket must be owned by the account"
_REGION = "the bucket must be in the account's Region"
_CREDENTIALS = "check the service's AWS credentials"
_KMS = "the KMS key must exist, be enabled and let the report writer use it"
_CONFIGURATION_HINTS = {
    "AccessDenied": _ACCESS, "AllAccessDisabled": _ACCESS, "InvalidBucketOwner": _ACCESS,
    "NoSuchBucket": "create the bucket or fix the S3 location in the settings",
    "InvalidArgument": "check the server-side encryption settings (sse, kms_key_arn)",
    **dict.fromkeys(["PermanentRedirect", "AuthorizationHeaderMalformed",
                     "IllegalLocationConstraintException"], _REGION),
    **dict.fromkeys(["InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                     "NoCredentialsError", "PartialCredentialsError"], _CREDENTIALS),
}
_ACCESS_KEY = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b")


def _error_code(error: ClientError) -> tuple[str, int]:
    code = str(error.response.get("Error", {}).get("Code") or "")
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return _BARE_STATUS_CODES.get(code, code or f"HTTP{status}"), status


def _is_transient(error: Exception, code: str, status: int) -> bool:
    if isinstance(error, ClientError):
        return code in _TRANSIENT_CODES or "Throttl" in code or status == 429 or status >= 500
    return isinstance(error, (BotoConnectionError, HTTPClientError, OSError))


def classify(error: Exception, *, bucket: str = "?", key: str = "?") -> DeliveryError:
    """The one place that decides: throttling, timeouts, 5xx, lost connections are transient;
    anything else (403, no bucket, owner, KMS, Region, credentials, any 4xx) needs the admin.
    The message names bucket, key, HTTP status and S3 error code, never credentials."""
    if isinstance(error, DeliveryError):
        return error
    if isinstance(error, ClientError):
        code, status = _error_code(error)
        detail = str(error.response.get("Error", {}).get("Message") or "")
        what = f"HTTP {status} {code}" + (f": {detail}" if detail else "")
    else:
        code, status, what = type(error).__name__, 0, f"{type(error).__name__}: {error}"
    message = _ACCESS_KEY.sub("[redacted]", f"put s3://{bucket}/{key} failed: {what}")
    if _is_transient(error, code, status):
        return TransientDeliveryError(message + " (will retry)", code=code)
    hint = _KMS if code.startswith("KMS") else _CONFIGURATION_HINTS.get(code)
    return ConfigurationDeliveryError(message + (f"; {hint}" if hint else ""), code=code)


def default_s3_client(region: str | None = None) -> Any:
    """A boto3 S3 client making one attempt per call (we retry), with bounded timeouts; boto3
    itself honours ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` and the credential chain."""
    import boto3
    from botocore.config import Config

    # botocore's ``max_attempts`` counts *retries*: total_max_attempts=1 is one attempt per put.
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"},
                    connect_timeout=10, read_timeout=60)
    return boto3.session.Session().client("s3", region_name=region, config=config)


class S3Destination:
    """An S3 bucket reached through boto3 (any endpoint that speaks S3); PutObject only."""

    def __init__(self, bucket: str, *, expected_owner: str, region: str | None = None,
                 sse: str = "AES256", kms_key_arn: str | None = None,
                 client: Any | None = None) -> None:
        if sse not in ("AES256", "aws:kms"):
            raise ValueError(f"sse must be 'AES256' or 'aws:kms', not {sse!r}")
        if sse == "aws:kms" and not (kms_key_arn or "").startswith("arn:"):
            raise ValueError(f"sse 'aws:kms' needs the full KMS key ARN, not {kms_key_arn!r}")
        if not re.fullmatch(r"\d{12}", expected_owner):
            raise ValueError(f"expected_owner {expected_owner!r} is not a 12-digit account id")
        self.bucket, self.expected_owner, self.sse = bucket, expected_owner, sse
        self.kms_key_arn = kms_key_arn if sse == "aws:kms" else None
        self._owns_client = client is None
        self.client: Any = default_s3_client(region) if client is None else client

    def describe(self) -> str:
        return f"s3://{self.bucket}"

    def close(self) -> None:
        """Close the HTTP connections of the client this destination made itself."""
        if self._owns_client:
            self.client.close()

    def put(self, key: str, data: bytes, *, replace: bool = False,
            content_type: str = "text/csv") -> PutResult:
        params: dict[str, Any] = {
            "Bucket": self.bucket, "Key": key, "Body": data, "ContentType": content_type,
            "ExpectedBucketOwner": self.expected_owner, "ServerSideEncryption": self.sse,
            "ChecksumSHA256": base64.b64encode(hashlib.sha256(data).digest()).decode("ascii"),
        }
        if self.kms_key_arn:
            params["SSEKMSKeyId"] = self.kms_key_arn
        if not replace:
            params["IfNoneMatch"] = "*"
        try:
            self.client.put_object(**params)
        except ClientError as e:
            if _error_code(e) == ("PreconditionFailed", 412):
                return PutResult.ALREADY_THERE
            raise classify(e, bucket=self.bucket, key=key) from e
        except BotoCoreError as e:
            raise classify(e, bucket=self.bucket, key=key) from e
        return PutResult.REPLACED if replace else PutResult.CREATED


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> ``("bucket", "some/prefix")`` (full checks: settings)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"S3 location {uri!r} must start with 's3://'")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"S3 location {uri!r} names no bucket: use s3://bucket/prefix/")
    return bucket, prefix.strip("/")


# --- retrying -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base·factorⁿ))."""

    base: float = 1.0
    cap: float = 900.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not (self.base >= 0 and self.cap >= 0 and self.factor >= 1):  # NaN fails too
            raise ValueError(f"invalid backoff {self!r}: base, cap >= 0 and factor >= 1")

    def ceiling(self, attempt: int) -> float:
        """The longest wait after failed attempt ``attempt`` (0-based)."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, not {attempt}")
        try:
            return min(self.cap, self.base * self.factor**attempt)
        except OverflowError:
            return self.cap if self.base > 0 else 0.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, self.ceiling(attempt))


def put_with_retries(dest: Destination, key: str, data: bytes, *, replace: bool = False,
                     content_type: str = "text/csv", attempts: int, backoff: Backoff,
                     sleep: Callable[[float], None], rng: random.Random,
                     on_error: Callable[[DeliveryError], None] | None = None) -> PutResult:
    """Put, retrying transient *and* configuration errors; re-raise after ``attempts`` failures.

    ``on_error`` sees every failure (the caller shows configuration errors to the admin at once);
    between attempts it sleeps ``backoff.delay(i)`` through the injected ``sleep``.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, not {attempts}")
    for attempt in range(attempts):
        try:
            return dest.put(key, data, replace=replace, content_type=content_type)
        except DeliveryError as err:
            if on_error is not None:
                on_error(err)
            if attempt + 1 == attempts:
                raise
            sleep(backoff.delay(attempt, rng))
    raise AssertionError("unreachable")
