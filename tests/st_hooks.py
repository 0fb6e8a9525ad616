"""schemathesis hooks (``SCHEMATHESIS_HOOKS=st_hooks``): serializers for the two media types
of the telemetry API that schemathesis has none for, so that it can send them too.

awsJson 1.0 bodies are JSON under ``application/x-amz-json-1.0``; the bulk endpoint takes
NDJSON, declared as a string (the lines), sent as it was generated.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis


@schemathesis.serializer("application/x-amz-json-1.0")
def aws_json(ctx: Any, value: Any) -> bytes:
    return json.dumps(value).encode()


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx: Any, value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return b"".join(json.dumps(line).encode() + b"\n" for line in
                    (value if isinstance(value, list) else [value]))


@schemathesis.deserializer("application/x-amz-json-1.0")
def aws_json_answer(ctx: Any, response: Any) -> Any:
    return json.loads(response.content)
