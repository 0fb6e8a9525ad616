"""Reading a request body within a size limit, gzip included, without reading or inflating past it.

The limit applies to the bytes on the wire and, for ``Content-Encoding: gzip``, to the inflated
bytes as well: a body over the limit, or a gzip bomb, is refused as soon as the limit is crossed
(``ValidationException``, reason ``CONTENT_LENGTH_EXCEEDS_THRESHOLD``).
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .errors import ValidationError

TOO_LARGE = "CONTENT_LENGTH_EXCEEDS_THRESHOLD"
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class ClientDisconnected(Exception):
    """The client went away before sending its whole body; there is no one to answer."""


def too_large(limit: int, what: str = "request body") -> ValidationError:
    return ValidationError(
        f"{what} is larger than the limit of {limit} bytes; send smaller requests", reason=TOO_LARGE
    )


async def read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    """The whole (decompressed) body, or ValidationError as soon as it passes ``limit``."""
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ValidationError(f"Content-Length {declared!r} is not a number of bytes")
        if int(declared) > limit:
            raise too_large(limit)
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        inflater = None
    elif encoding in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    else:
        raise ValidationError(
            f"Content-Encoding {encoding!r} is not supported; send gzip or no encoding"
        )
    wire = 0
    out = bytearray()
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        wire += len(chunk)
        if wire > limit:
            raise too_large(limit)
        if inflater is None:
            out += chunk
        else:
            _inflate(inflater, chunk, out, limit)
    if inflater is not None and not inflater.eof:
        raise ValidationError("the gzip body is truncated; send the whole compressed stream")
    return bytes(out)


def _inflate(inflater: Any, chunk: bytes, out: bytearray, limit: int) -> None:
    if inflater.eof:
        if chunk:
            raise ValidationError("data after the end of the gzip stream")
        return
    try:
        out += inflater.decompress(chunk, limit + 1 - len(out))
    except zlib.error as exc:
        raise ValidationError(f"the body is not valid gzip data ({exc})") from None
    if len(out) > limit:
        raise too_large(limit, "decompressed request body")

