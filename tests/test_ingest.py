"""SendTelemetryEvent over real HTTP against a real server process: every member, both
protocols, every error of the spec, spoofing, dedupe, size limits and gzip."""

from __future__ import annotations

import gzip
import random
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from conftest import ACCOUNT, OTHER_PROFILE, PROFILE, TARGET, Server, make_server
from kiro_activity import events, landing
from kiro_activity.simulate import request_body

AWS_JSON = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": TARGET}
REST_JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module", params=["fast", "asgi"])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Every test runs against both paths of a single event: straight from the HTTP parser
    (fastpath.py) and through ASGI."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KIRO_ACTIVITY_FAST_PATH", "1" if request.param == "fast" else "0")
        s = make_server(tmp_path_factory.mktemp(request.param))
    yield s
    health = httpx.get(f"{s.url}/health").json()
    s.stop()
    assert (health["fast_path_requests"] > 0) == (request.param == "fast")


def post(client: httpx.Client, body: Any, protocol: str = "aws", **headers: str) -> httpx.Response:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    if protocol == "aws":
        return client.post("/", content=raw, headers={**AWS_JSON, **headers})
    return client.post("/SendTelemetryEvent", content=raw, headers={**REST_JSON, **headers})


def stored(server: Server, client_token: str) -> list[dict[str, Any]]:
    return landing.read_events(server.config.landing_db, "WHERE client_token = ?", [client_token])


def assert_error(r: httpx.Response, status: int, type_name: str, *needles: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["__type"] == type_name
    assert r.headers["x-amzn-errortype"] == type_name
    for needle in needles:
        assert needle in body["message"], body["message"]


@pytest.mark.parametrize("protocol", ["aws", "rest"])
@pytest.mark.parametrize("member", sorted(events.MEMBERS))
def test_every_member_is_stored_as_sent(server: Server, member: str, protocol: str) -> None:
    body = request_body(member, random.Random(member + protocol), user_id="alice",
                        ts=1764547200.123, profile_arn=PROFILE)
    raw = orjson.dumps(body)
    with server.client("alice") as client:
        r = post(client, raw, protocol)
    assert r.status_code == 200, r.text
    assert r.content == b"{}"
    [row] = stored(server, body["clientToken"])
    assert row["body"] == raw
    assert (row["account_id"], row["user_id"], row["member"]) == (ACCOUNT, "alice", member)
    assert row["protocol"] == ("awsJson1_0" if protocol == "aws" else "restJson1")
    assert row["opt_out"] == "OPTIN"
    assert row["received_us"] > 0


def test_spec_example_body_is_accepted(server: Server) -> None:
    body = {
        "clientToken": str(uuid.uuid4()),
        "telemetryEvent": {"userTriggerDecisionEvent": {
            "sessionId": "6f1c2a64-0d0e-4a57-9a0e-3f5b9e1c7d21",
            "requestId": "9a2b8c3d-1e4f-4a5b-8c6d-7e8f9a0b1c2d",
            "programmingLanguage": {"languageName": "python"}, "completionType": "LINE",
            "suggestionState": "ACCEPT", "recommendationLatencyMilliseconds": 312.5,
            "timestamp": 1764547200.123, "generatedLine": 3, "acceptedCharacterCount": 87,
            "suggestionType": "COMPLETIONS"}},
        "optOutPreference": "OPTIN",
        "userContext": {"ideCategory": "VSCODE", "operatingSystem": "MAC",
                        "product": "CodeWhisperer"},
        "profileArn": PROFILE,
    }
    with server.client() as client:
        assert post(client, body).status_code == 200
    [row] = stored(server, body["clientToken"])
    assert row["client_ts"] == 1764547200.123
    assert row["ide_category"] == "VSCODE"


def test_optout_header_is_stored_when_body_has_none(server: Server) -> None:
    body = request_body("featureDevEvent", random.Random(1))
    del body["optOutPreference"]
    with server.client() as client:
        assert post(client, body, "rest", **{"x-amzn-codewhisperer-optout": "true"}).is_success
    assert stored(server, body["clientToken"])[0]["opt_out"] == "OPTOUT"


def test_unknown_fields_and_values_are_accepted(server: Server) -> None:
    body = request_body("chatInteractWithMessageEvent", random.Random(2))
    body["newTopLevelField"] = {"x": 1}
    event = body["telemetryEvent"]["chatInteractWithMessageEvent"]
    event.update(interactionType="ACCEPT_DIFF", conversationId="DummyConversationId",
                 someNewField=True)
    with server.client() as client:
        assert post(client, body).status_code == 200
    assert orjson.loads(stored(server, body["clientToken"])[0]["body"]) == body


def test_duplicate_client_token_is_stored_once(server: Server) -> None:
    body = request_body("inlineChatEvent", random.Random(3))
    with server.client() as client:
        assert post(client, body).status_code == 200
        assert post(client, body, "rest").status_code == 200
    assert len(stored(server, body["clientToken"])) == 1
    with server.client("bob") as other:  # the same clientToken from another user is its own send
        assert post(other, body).status_code == 200
    assert sorted(r["user_id"] for r in stored(server, body["clientToken"])) == ["alice", "bob"]


def test_requests_without_client_token_are_each_stored(server: Server) -> None:
    body = request_body("featureDevEvent", random.Random(4), client_token=False)
    marker = str(uuid.uuid4())
    body["telemetryEvent"]["featureDevEvent"]["conversationId"] = marker
    with server.client("carol") as client:
        for _ in range(3):
            assert post(client, body).status_code == 200
    rows = landing.read_events(server.config.landing_db, "WHERE user_id = 'carol'")
    assert sum(marker.encode() in r["body"] for r in rows) == 3


def test_kiro_user_id_of_another_user_is_refused(server: Server) -> None:
    body = request_body("kiroChatMessageEvent", random.Random(5), user_id="mallory-target")
    with server.client("mallory") as client:
        r = post(client, body)
    assert_error(r, 403, "AccessDeniedException", "userId")
    assert stored(server, body["clientToken"]) == []
    body["telemetryEvent"]["kiroChatMessageEvent"]["userId"] = "mallory"
    with server.client("mallory") as client:
        assert post(client, body, "rest").status_code == 200


@pytest.mark.parametrize(("arn", "status", "type_name"), [
    (OTHER_PROFILE, 403, "AccessDeniedException"),
    (f"arn:aws:codewhisperer:eu-west-1:{ACCOUNT}:profile/ABCDEFGHIJKL", 403,
     "AccessDeniedException"),
    ("arn:aws:codewhisperer:us-east-1:1111:profile/X", 400, "ValidationException"),
])
def test_profile_arn_of_another_account_or_region(server: Server, arn: str, status: int,
                                                  type_name: str) -> None:
    body = request_body("featureDevEvent", random.Random(6), profile_arn=arn)
    with server.client() as client:
        assert_error(post(client, body), status, type_name, "profileArn")
    assert stored(server, body["clientToken"]) == []


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Basic abc", "Bearer kat_nope"])
def test_missing_or_unknown_token_is_refused_and_stores_nothing(server: Server,
                                                               authorization: str | None) -> None:
    body = request_body("featureDevEvent", random.Random(7))
    headers = {} if authorization is None else {"Authorization": authorization}
    with httpx.Client(base_url=server.url, headers=headers) as client:
        assert_error(post(client, body), 403, "AccessDeniedException")
    assert stored(server, body["clientToken"]) == []


def test_every_validation_problem_is_listed(server: Server) -> None:
    body = request_body("userTriggerDecisionEvent", random.Random(8))
    event = body["telemetryEvent"]["userTriggerDecisionEvent"]
    del event["sessionId"]
    event["acceptedCharacterCount"] = 3.5
    with server.client() as client:
        r = post(client, body)
    assert_error(r, 400, "ValidationException", "sessionId", "acceptedCharacterCount")
    assert stored(server, body["clientToken"]) == []


@pytest.mark.parametrize(("raw", "needle"), [
    (b"{not json", "JSON"),
    (b"[]", "object"),
    (b'{"telemetryEvent": {}}', "telemetryEvent"),
    (b'{"telemetryEvent": {"featureDevEvent": {"conversationId": "a"},'
     b' "transformEvent": {"jobId": "b"}}}', "telemetryEvent"),
    (b'{"telemetryEvent": {"noSuchEvent": {}}}', "noSuchEvent"),
    (b'{"telemetryEvent": {"featureDevEvent": {"conversationId": "a"}}, "clientToken": ""}',
     "clientToken"),
])
def test_structure_errors(server: Server, raw: bytes, needle: str) -> None:
    with server.client() as client:
        for protocol in ("aws", "rest"):
            assert_error(post(client, raw, protocol), 400, "ValidationException", needle)


@pytest.mark.parametrize(("headers", "needle"), [
    ({}, "missing X-Amz-Target"),
    ({"X-Amz-Target": "AmazonCodeWhispererService.GenerateCompletions"}, "GenerateCompletions"),
])
def test_unknown_operation(server: Server, headers: dict[str, str], needle: str) -> None:
    with server.client() as client:
        r = client.post("/", content=b"{}", headers={"Content-Type": AWS_JSON["Content-Type"],
                                                     **headers})
    assert_error(r, 400, "UnknownOperationException", needle)


def test_unknown_path_and_wrong_content_type(server: Server) -> None:
    with server.client() as client:
        assert_error(client.post("/nope", content=b"{}"), 404, "UnknownOperationException")
        body = request_body("featureDevEvent", random.Random(9))
        r = post(client, body, "rest", **{"Content-Type": "text/plain"})
        assert_error(r, 400, "ValidationException", "text/plain")


def test_body_over_the_limit(server: Server) -> None:
    body = request_body("chatAddMessageEvent", random.Random(10))
    body["padding"] = "x" * (1024 * 1024)
    with server.client() as client:
        r = post(client, body)
        assert_error(r, 400, "ValidationException", "limit")
        assert r.json()["reason"] == "CONTENT_LENGTH_EXCEEDS_THRESHOLD"

        def chunks() -> Any:  # no Content-Length: refused while streaming
            for _ in range(40):
                yield b"x" * 65536
        r = client.post("/SendTelemetryEvent", content=chunks(), headers=REST_JSON)
        assert_error(r, 400, "ValidationException", "limit")
    assert stored(server, body["clientToken"]) == []


def test_gzip_body_and_gzip_bomb(server: Server) -> None:
    body = request_body("codeCoverageEvent", random.Random(11))
    with server.client() as client:
        r = post(client, gzip.compress(orjson.dumps(body)), "rest", **{"Content-Encoding": "gzip"})
        assert r.status_code == 200, r.text
        assert stored(server, body["clientToken"])[0]["body"] == orjson.dumps(body)
        bomb = gzip.compress(b" " * (200 * 1024 * 1024), compresslevel=9)
        assert len(bomb) < 1024 * 1024
        r = post(client, bomb, "aws", **{"Content-Encoding": "gzip"})
        assert_error(r, 400, "ValidationException", "decompressed")
        assert r.json()["reason"] == "CONTENT_LENGTH_EXCEEDS_THRESHOLD"
        r = post(client, b"\x1f\x8b garbage", "aws", **{"Content-Encoding": "gzip"})
        assert_error(r, 400, "ValidationException", "gzip")
        r = post(client, orjson.dumps(body), "aws", **{"Content-Encoding": "br"})
        assert_error(r, 400, "ValidationException", "br")
    # the server is still fine after all that
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_health_and_openapi(server: Server) -> None:
    assert httpx.get(f"{server.url}/health").status_code == 200
    doc = httpx.get(f"{server.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert {"/", "/SendTelemetryEvent", "/v1/batch/SendTelemetryEvent"} <= set(doc["paths"])
    one_of = doc["components"]["schemas"]["TelemetryEvent"]["oneOf"]
    assert len(one_of) == 25
