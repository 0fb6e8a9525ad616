"""The bulk-import endpoint (NDJSON) and the per-token rate limit, against a real server."""

from __future__ import annotations

import random
from collections.abc import Iterator

import orjson
import pytest

from conftest import OTHER_PROFILE, TARGET, Server, make_server
from kiro_activity import batchcheck, landing
from kiro_activity.simulate import request_body

BATCH = "/v1/batch/SendTelemetryEvent"
NDJSON = {"Content-Type": "application/x-ndjson"}


def ndjson(bodies: list[object]) -> bytes:
    return b"".join((b if isinstance(b, bytes) else orjson.dumps(b)) + b"\n" for b in bodies)


def test_batch_reports_every_line_and_stores_the_good_ones(server: Server) -> None:
    rng = random.Random(1)
    good = [request_body("userTriggerDecisionEvent", rng) for _ in range(5)]
    spoof = request_body("kiroEnterpriseTelemetryEvent", rng, user_id="someone-else")
    lines = [good[0], b"{broken", good[1], {"telemetryEvent": {"nope": {}}}, good[2], spoof,
             good[3], good[4], good[0]]
    with server.client("batcher") as client:
        r = client.post(BATCH, content=ndjson(lines) + b"\n\n", headers=NDJSON)
    assert r.status_code == 200, r.text
    out = r.json()
    assert r.content == orjson.dumps(out)  # compact JSON, keys in order, as orjson writes it
    assert (out["lines"], out["accepted"], out["rejected"]) == (9, 6, 3)
    assert (out["stored"], out["duplicates"]) == (5, 1)
    statuses = [(x["line"], x["status"]) for x in out["results"]]
    assert statuses == [(1, 200), (2, 400), (3, 200), (4, 400), (5, 200), (6, 403), (7, 200),
                        (8, 200), (9, 200)]
    assert out["results"][1]["__type"] == "ValidationException"
    assert "nope" in out["results"][3]["message"]
    assert out["results"][5]["__type"] == "AccessDeniedException"
    rows = landing.read_events(server.config.landing_db, "WHERE user_id = 'batcher'")
    assert sorted(r["client_token"] for r in rows) == sorted(b["clientToken"] for b in good)
    assert {r["protocol"] for r in rows} == {"batch"}


def test_a_large_batch_is_checked_in_a_worker_with_the_same_results(server: Server) -> None:
    """From WORKER_MIN_LINES lines on, a worker process checks the lines: the same statuses
    and errors line by line, the same events stored (and one row for all of them)."""
    rng = random.Random(11)
    good = [request_body("chatAddMessageEvent", rng) for _ in range(batchcheck.WORKER_MIN_LINES)]
    foreign = {**request_body("userTriggerDecisionEvent", rng), "profileArn": OTHER_PROFILE}
    spoof = request_body("kiroEnterpriseTelemetryEvent", rng, user_id="someone-else")
    lines = [*good[:100], b"{broken", foreign, *good[100:], spoof, good[0], b"x" * 2_000_000]
    with server.client("big-checker") as client:
        r = client.post(BATCH, content=ndjson(lines), headers=NDJSON)
        health = client.get("/health").json()
    assert r.status_code == 200, r.text
    out = r.json()
    assert health["batches_checked_in_workers"] >= 1
    n = len(good)
    assert (out["lines"], out["accepted"], out["stored"]) == (n + 5, n + 1, n)
    refused = {x["line"]: x for x in out["results"] if x["status"] != 200}
    assert sorted((k, v["status"]) for k, v in refused.items()) == [
        (101, 400), (102, 403), (n + 3, 403), (n + 5, 400)]
    assert "not valid JSON" in refused[101]["message"]
    assert "not a profile of this token's account" in refused[102]["message"]
    assert "someone-else" not in refused[n + 3]["message"]
    assert refused[n + 5]["reason"] == "CONTENT_LENGTH_EXCEEDS_THRESHOLD"
    assert [x["line"] for x in out["results"]] == list(range(1, n + 6))
    rows = landing.read_events(server.config.landing_db, "WHERE user_id = 'big-checker'")
    assert sorted(r["body"] for r in rows) == sorted(orjson.dumps(b) for b in good)


def test_a_batch_of_megabytes_is_stored_whole(server: Server) -> None:
    """Thousands of lines make one group of several megabytes for the writer process."""
    rng = random.Random(7)
    lines = [request_body("userTriggerDecisionEvent", rng) for _ in range(6000)]
    with server.client("big-batcher") as client:
        r = client.post(BATCH, content=ndjson(lines), headers=NDJSON)
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 6000
    rows = landing.read_events(server.config.landing_db, "WHERE user_id = 'big-batcher'")
    assert len(rows) == 6000


def test_batch_needs_a_token_and_keeps_its_limits(server: Server) -> None:
    body = ndjson([request_body("featureDevEvent", random.Random(2))])
    with server.client("batcher2") as client:
        r = client.post(BATCH, content=body, headers={"Authorization": "Bearer nope", **NDJSON})
        assert r.status_code == 403
        r = client.post(BATCH, content=body, headers={"Content-Type": "text/csv"})
        assert r.status_code == 400
        assert "text/csv" in r.json()["message"]


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = make_server(tmp_path_factory.mktemp("tight"), "--rate", "2", "--burst", "5",
                    "--max-body-bytes", "2000")
    yield s
    s.stop()


def test_rate_limit_throttles_per_token(tight: Server) -> None:
    headers = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": TARGET}
    rng = random.Random(3)
    with tight.client("fast") as fast, tight.client("calm") as calm:
        codes = [fast.post("/", content=orjson.dumps(request_body("featureDevEvent", rng)),
                           headers=headers) for _ in range(8)]
        assert [r.status_code for r in codes[:5]] == [200] * 5
        throttled = codes[-1]
        assert throttled.status_code == 429
        assert throttled.json()["__type"] == "ThrottlingException"
        assert throttled.headers["x-amzn-errortype"] == "ThrottlingException"
        assert int(throttled.headers["retry-after"]) >= 1
        # another user's token is not affected
        r = calm.post("/", content=orjson.dumps(request_body("featureDevEvent", rng)),
                      headers=headers)
        assert r.status_code == 200


def test_configured_body_limit(tight: Server) -> None:
    body = request_body("chatAddMessageEvent", random.Random(4))
    body["padding"] = "x" * 3000
    with tight.client("big") as client:
        r = client.post("/SendTelemetryEvent", content=orjson.dumps(body),
                        headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["reason"] == "CONTENT_LENGTH_EXCEEDS_THRESHOLD"
    assert "2000" in r.json()["message"]




@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = make_server(tmp_path_factory.mktemp("metered"), "--events-rate", "5",
                    "--events-burst", "20", "--max-body-bytes", "2000")
    yield s
    s.stop()


def test_a_batch_costs_one_event_per_line(metered: Server) -> None:
    """#13: a bulk call counted as one request, so one token could send 100,000 events at
    each of its 100 requests/s. Now the lines the bucket cannot cover are answered 429, line
    by line, with when to send them again; a call with no line covered is a 429 itself."""
    rng = random.Random(11)
    lines = [request_body("featureDevEvent", rng) for _ in range(30)]
    with metered.client("bulk") as client, metered.client("other") as other:
        r = client.post(BATCH, content=ndjson(lines), headers=NDJSON)
        assert r.status_code == 200, r.text
        out = r.json()
        assert r.content == orjson.dumps(out)
        assert (out["lines"], out["accepted"], out["throttled"], out["rejected"]) == (
            30, 20, 10, 10)
        assert [x["status"] for x in out["results"]] == [200] * 20 + [429] * 10
        late = out["results"][20]
        assert late["__type"] == "ThrottlingException" and late["line"] == 21
        assert "10 of 30 lines are over the rate limit of 5 events/s per token" in (
            late["message"])
        assert int(r.headers["retry-after"]) >= 2
        again = client.post(BATCH, content=ndjson(lines[20:]), headers=NDJSON)
        assert again.status_code == 429
        assert again.json()["__type"] == "ThrottlingException"
        assert int(again.headers["retry-after"]) >= 1
        single = client.post("/SendTelemetryEvent", json=request_body("featureDevEvent", rng))
        assert single.status_code == 429  # single events take from the same bucket
        assert other.post(BATCH, content=ndjson(lines[:3]), headers=NDJSON).json()[
            "accepted"] == 3  # another token is not affected
    rows = landing.read_events(metered.config.landing_db, "WHERE user_id = 'bulk'")
    assert len(rows) == 20


def test_each_batch_line_keeps_the_single_event_limit(metered: Server) -> None:
    rng = random.Random(12)
    big = request_body("chatAddMessageEvent", rng)
    big["padding"] = "x" * 3000
    with metered.client("lines") as client:
        r = client.post(BATCH, content=ndjson([request_body("featureDevEvent", rng), big]),
                        headers=NDJSON)
    results = r.json()["results"]
    assert [x["status"] for x in results] == [200, 400]
    assert results[1]["reason"] == "CONTENT_LENGTH_EXCEEDS_THRESHOLD"
    assert results[1]["message"].startswith("line 2 is ")
    assert "at most 2000 bytes" in results[1]["message"]
