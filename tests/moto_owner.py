"""moto's S3 server plus one thing moto lacks: the bucket-owner condition.

moto ignores ``ExpectedBucketOwner`` (the ``x-amz-expected-bucket-owner`` header), so the check
"the bucket is owned by the account" could never fail against it. This launcher wraps moto's
bucket and key handlers: when the header names an account and the bucket exists under another
account (``s3_backends.bucket_accounts``), it answers 403 ``AccessDenied`` as S3 does (HEAD:
empty body). Everything else is moto unchanged. Buckets of another account are made by sending
``x-moto-account-id``. Usage: ``python tests/moto_owner.py -H 127.0.0.1 -p PORT``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from xml.sax.saxutils import escape

from moto.s3.models import s3_backends
from moto.s3.responses import S3Response
from moto.server import main

Handler = Callable[[S3Response, Any, str, Any], Any]
HEADER = "x-amz-expected-bucket-owner"


def denied(method: str, bucket: str) -> tuple[int, dict[str, str], bytes]:
    """S3's answer when the expected owner is not the bucket's owner."""
    if method == "HEAD":
        return 403, {}, b""
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
            f"<Message>Access Denied</Message><BucketName>{escape(bucket)}</BucketName>"
            "<RequestId>moto-owner</RequestId></Error>")
    return 403, {"content-type": "application/xml"}, body.encode()


def owner_guard(handler: Handler) -> Handler:
    """Wrap a moto handler so a mismatching ``ExpectedBucketOwner`` is refused."""

    def guarded(self: S3Response, request: Any, full_url: str, headers: Any) -> Any:
        expected = request.headers.get(HEADER)
        if expected:
            self.setup_class(request)
            bucket = self.parse_bucket_name_from_url(request, full_url)
            owner = s3_backends.bucket_accounts.get(bucket)
            if owner is not None and owner[1] != expected:
                return denied(request.method, bucket)
        return handler(self, request, full_url, headers)

    return guarded


S3Response.bucket_response = owner_guard(S3Response.bucket_response)  # type: ignore[method-assign,assignment]
S3Response.key_response = owner_guard(S3Response.key_response)  # type: ignore[method-assign,assignment]

if __name__ == "__main__":
    main()
