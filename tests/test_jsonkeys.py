"""Duplicate JSON keys (#13): the cheap check and its full scan, and the refusal of such
bodies on every ingest path of a real server (ASGI, fast path, each batch line)."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Server, make_server
from kiro_activity import jsonkeys, landing
from test_fastpath import fast_count

DUP = (b'{"telemetryEvent":{"codeFixGenerationEvent":{"jobId":"j","linesOfCodeGenerated":1,'
       b'"linesOfCodeGenerated":900}}}')
WHERE = "telemetryEvent.codeFixGenerationEvent"


@pytest.mark.parametrize(("text", "expected"), [
    (b'{"a":1,"a":2}', ("a", "the top level")),
    (b'{"a" :1,"a":2}', ("a", "the top level")),
    (b'{"a":1,\n"a"\t:2}', ("a", "the top level")),
    (b'{"x":{"y":[{"k":"v:\\":","k":3}]}}', ("k", "x.y[0]")),
    (b'{"x":[[{"k":1}],{"k":1,"k":1}]}', ("k", "x[1]")),
    (b'{"a":"\\":","b":"\\" :"}', None),
    (b'{"a" : 1, "b" : {"a" : 2}}', None),
    (b'{"arn":"arn:aws:x","b":1}', None),
    (b'[{"a":1,"a":2}]', None),  # not an object: the validator refuses it
])
def test_duplicate_key(text: bytes, expected: tuple[str, str] | None) -> None:
    assert jsonkeys.duplicate_key(text, orjson.loads(text)) == expected


class _Pairs(list[tuple[str, Any]]):
    pass


def has_duplicates(value: Any) -> bool:
    if isinstance(value, _Pairs):
        keys = [k for k, _ in value]
        return len(keys) != len(set(keys)) or any(has_duplicates(v) for _, v in value)
    return isinstance(value, list) and any(has_duplicates(v) for v in value)


keys = st.sampled_from(["a", "b", "a:", '"', '":', "a\" :"])
scalars = st.none() | st.integers(-5, 5) | keys
trees = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3) | st.lists(
    st.tuples(keys, kids), max_size=4).map(_Pairs), max_leaves=12)
separators = st.sampled_from([":", " :", ": ", "\n:", "\t : ", "\r:"])


def render(tree: Any, draw: st.DrawFn) -> str:
    if isinstance(tree, _Pairs):
        return "{" + ",".join(json.dumps(k) + draw(separators) + render(v, draw)
                              for k, v in tree) + "}"
    if isinstance(tree, list):
        return "[" + ",".join(render(v, draw) for v in tree) + "]"
    return json.dumps(tree)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(keys, trees), max_size=4).map(_Pairs), st.data())
def test_the_cheap_check_never_misses_a_duplicate(tree: _Pairs, data: st.DataObject) -> None:
    text = render(tree, data.draw).encode()
    found = jsonkeys.duplicate_key(text, orjson.loads(text))
    assert (found is not None) == has_duplicates(tree)


@pytest.mark.parametrize(("text", "expected"), [
    # the colon count (#11): a colon written \u003a is not a ":" byte; orjson writes it as one
    (b'{"a":"\\u003a","a":1}', ("a", "the top level")),
    (b'{"a":1,"a":"\\u003a"}', ("a", "the top level")),
    (b'{"x":{"k\\u003a":1,"k:":2}}', ("k:", "x")),
    (b'{"a":"\\u003a","b":1}', None),
    (b'{"a":"x\\\\:","a":1}', ("a", "the top level")),  # a backslash, but no \u
    (b'{"a":1,"a" :2}', ("a", "the top level")),
    (b'{"a" :1,"b":{"a":2,"a" :"\\":"}}', ("a", "b")),
    (b'{"a":"p:q","a":"r"}', ("a", "the top level")),  # the kept string has fewer colons
    (b'{"a":' * 300 + b"1" + b"}" * 300, None),  # too deep for orjson.dumps: the #13 test
    (b'{"a":' * 300 + b'{"b":1,"b":2}' + b"}" * 300, ("b", "a" + ".a" * 299)),
])
def test_duplicate_key_by_the_colon_count(text: bytes, expected: tuple[str, str] | None) -> None:
    assert jsonkeys.duplicate_key(text, orjson.loads(text)) == expected


def render_escaped(tree: Any, draw: st.DrawFn) -> str:
    """Like ``render``, strings sometimes with every non-letter as a ``\\u`` escape."""
    if isinstance(tree, _Pairs):
        return "{" + ",".join(render_escaped(k, draw) + draw(separators)
                              + render_escaped(v, draw) for k, v in tree) + "}"
    if isinstance(tree, list):
        return "[" + ",".join(render_escaped(v, draw) for v in tree) + "]"
    if isinstance(tree, str) and draw(st.booleans()):
        return '"' + "".join(c if c.isalnum() else f"\\u{ord(c):04x}" for c in tree) + '"'
    return json.dumps(tree, ensure_ascii=False)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(keys | st.sampled_from(["é", ":", "a\\:"]), trees), max_size=4)
       .map(_Pairs), st.data())
def test_no_test_misses_a_duplicate_with_escapes(tree: _Pairs, data: st.DataObject) -> None:
    text = render_escaped(tree, data.draw).encode()
    found = jsonkeys.duplicate_key(text, orjson.loads(text))
    assert (found is not None) == has_duplicates(tree)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = make_server(tmp_path_factory.mktemp("dupkeys"), "--no-schedule")
    yield s
    s.stop()


def test_every_ingest_path_refuses_a_duplicate_key(server: Server) -> None:
    before = fast_count(server)
    with server.client("dup") as client:
        answers = [
            client.post("/SendTelemetryEvent", content=DUP,  # the fast path
                        headers={"Content-Type": "application/json"}),
            client.post("/SendTelemetryEvent", content=gzip.compress(DUP),  # ASGI
                        headers={"Content-Type": "application/json",
                                 "Content-Encoding": "gzip"}),
        ]
        batch = client.post("/v1/batch/SendTelemetryEvent", headers={
            "Content-Type": "application/x-ndjson"}, content=DUP + b"\n" + orjson.dumps(
                {"telemetryEvent": {"codeFixGenerationEvent": {"jobId": "j"}},
                 "clientToken": str(uuid.uuid4())}))
    assert fast_count(server) == before + 1
    for r in answers:
        assert r.status_code == 400
        assert r.json()["__type"] == "ValidationException"
        assert r.json()["message"] == (
            f'request body has the key "linesOfCodeGenerated" twice in {WHERE}: each key may '
            "appear once in an object (JSON readers disagree on which value counts)")
    results = batch.json()["results"]
    assert [x["status"] for x in results] == [400, 200]
    assert "linesOfCodeGenerated" in results[0]["message"]
    rows = landing.read_events(server.config.landing_db, "WHERE user_id = 'dup'")
    assert len(rows) == 1
