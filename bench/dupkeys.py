"""Micro-benchmark of the duplicate-key check of events.parse_request (#13).

``python bench/dupkeys.py``: per body, the best of 9 timeit runs of orjson.loads +
validate_request (before #13) and of parse_request (with the check), in microseconds.
"""

from __future__ import annotations

import timeit

import orjson

from kiro_activity import events, jsonkeys

EXAMPLE = (b'{"clientToken":"5d0c1c1e-4a53-4c4f-9a53-3d1f5f8f8d11","telemetryEvent":'
           b'{"userTriggerDecisionEvent":{"sessionId":"6f1c2a64-0d0e-4a57-9a0e-3f5b9e1c7d21",'
           b'"requestId":"9a2b8c3d-1e4f-4a5b-8c6d-7e8f9a0b1c2d","programmingLanguage":'
           b'{"languageName":"python"},"completionType":"LINE","suggestionState":"ACCEPT",'
           b'"recommendationLatencyMilliseconds":312.5,"timestamp":1764547200.123,'
           b'"generatedLine":3,"acceptedCharacterCount":87,"suggestionType":"COMPLETIONS"}},'
           b'"optOutPreference":"OPTIN","userContext":{"ideCategory":"VSCODE",'
           b'"operatingSystem":"MAC","product":"CodeWhisperer"},"profileArn":'
           b'"arn:aws:codewhisperer:us-east-1:111122223333:profile/ABCDEFGHIJKL"}')
CHAT = orjson.dumps({"telemetryEvent": {"chatAddMessageEvent": {
    "conversationId": "c", "messageId": "m", "timeBetweenChunks": [1.5] * 50}}})
DIAGS = orjson.dumps({"telemetryEvent": {"chatInteractWithMessageEvent": {
    "conversationId": "c", "messageId": "m", "addedIdeDiagnostics": [
        {"ideDiagnosticType": "SYNTAX_ERROR", "severity": "ERROR"}] * 200}}})
SPACED = EXAMPLE.replace(b'":', b'" :')  # the slow path: a full scan


def best(fn: object, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=9)) / number * 1e6  # type: ignore[arg-type]


def main() -> None:
    print(f"{'body':<30} {'bytes':>6} {'before us':>10} {'after us':>9} {'check us':>9}")
    for name, body in (("spec example", EXAMPLE), ("chat, 50 chunks", CHAT),
                       ("200 diagnostics", DIAGS), ("spec example, ' :' (scan)", SPACED)):
        doc = orjson.loads(body)
        before = best(lambda b=body: events.validate_request(orjson.loads(b)), 20_000)
        after = best(lambda b=body: events.parse_request(b), 20_000)
        check = best(lambda b=body, d=doc: jsonkeys.duplicate_key(b, d), 20_000)
        print(f"{name:<30} {len(body):>6} {before:>10.2f} {after:>9.2f} {check:>9.2f}")


if __name__ == "__main__":
    main()
