"""The compiled validator (#11) against the Python one: the same bodies accepted and refused,
with the same message, and equal requests (event values and their types included).

``parse_request`` (orjson, the duplicate-key check, ``validate_compiled`` and the Python
validator for what it leaves undecided) is compared with the Python path as it was before #11
(orjson, the #13 duplicate-key check, ``validate_request``), over bodies generated from the
member table: valid ones (``simulate.request_body`` and every field of the table) and mutated
ones (wrong types, nulls, missing fields, integers out of range, floats for integers, huge
numbers, lists over their length, unknown and extra members, duplicate keys, invalid UTF-8,
deep nesting, ``\\u`` escapes...), and, exhaustively, every field of the table at each edge
value of its kind. ``KIRO_ACTIVITY_DECODE_EXAMPLES`` (default 300) sets the examples of each
property.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kiro_activity import events, jsonkeys, simulate
from kiro_activity.errors import ValidationError
from kiro_activity.events import (
    MEMBERS,
    FieldSpec,
    TelemetryRequest,
    parse_request,
    validate_compiled,
    validate_request,
)
from kiro_activity.metrics import AMOUNT_MAX

EXAMPLES = int(os.environ.get("KIRO_ACTIVITY_DECODE_EXAMPLES", "300"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ARN = "arn:aws:codewhisperer:us-east-1:111122223333:profile/ABCDEFGHIJKL"
USER_CONTEXT = {"ideCategory": "VSCODE", "operatingSystem": "MAC", "product": "CodeWhisperer"}


# --- the Python path, as before #11 -------------------------------------------------------------


def duplicate_key_13(body: bytes, doc: Any) -> tuple[str, str] | None:
    """The duplicate-key check of #13 (quoted keys against the parsed tree, else a full scan)."""
    if type(doc) is not dict:
        return None
    quoted = body.count(b'":')
    if quoted == jsonkeys.key_count(doc) and (
            body.count(b":") == quoted or b" :" not in body.translate(jsonkeys._WHITESPACE)):
        return None
    return jsonkeys._scan(body)


def python_path(body: bytes) -> TelemetryRequest:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ValidationError(f"request body is not valid JSON: {e}") from None
    try:
        repeated = duplicate_key_13(body, doc)
    except RecursionError:
        raise ValidationError("request body is nested too deeply") from None
    if repeated is not None:
        key, where = repeated
        raise ValidationError(
            f"request body has the key {events._show(key)} twice in {where}: each key may appear"
            " once in an object (JSON readers disagree on which value counts)")
    return validate_request(doc)


def typed(value: Any) -> tuple[Any, ...]:
    """``value`` as a flat sequence of tokens with the type of every scalar, so that 1, 1.0 and
    True compare unequal; the order of keys does not count. Flat, so that comparing two deep
    values does not recurse."""
    out: list[Any] = []
    _tokens(value, out)
    return tuple(out)


def _tokens(value: Any, out: list[Any]) -> None:
    if isinstance(value, dict):
        out.append("{")
        for k in sorted(value):
            out.append(("key", k))
            _tokens(value[k], out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for v in value:
            _tokens(v, out)
        out.append("]")
    elif isinstance(value, float) and math.isnan(value):
        out.append(("nan",))
    else:
        out.append((type(value).__name__, value))


def outcome(parse: Any, arg: Any) -> tuple[str, Any]:
    """``("accepted", the request's fields, typed)`` or ``("refused", the message)``."""
    try:
        req = parse(arg)
    except ValidationError as e:
        return ("refused", e.message)
    return accepted(req)


def accepted(req: TelemetryRequest) -> tuple[str, Any]:
    assert isinstance(req, TelemetryRequest)
    return ("accepted", {name: typed(getattr(req, name)) for name in req.__struct_fields__})


# --- bodies -------------------------------------------------------------------------------------


class Raw(bytes):
    """A token written into the body as is (NaN, 1e400, a huge integer, invalid UTF-8...)."""


class Pairs(list[tuple[str, Any]]):
    """An object written pair by pair: a key may repeat."""


def render(value: Any, style: dict[str, Any]) -> bytes:
    """``value`` as JSON text in ``style`` (separator after keys, ``\\u`` escapes or not)."""
    if isinstance(value, Raw):
        return bytes(value)
    if isinstance(value, Pairs | dict):
        pairs = value if isinstance(value, Pairs) else list(value.items())
        return b"{" + b",".join(render(k, style) + style["colon"] + render(v, style)
                                for k, v in pairs) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(render(v, style) for v in value) + b"]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=style["ascii"]).encode("utf-8", "surrogatepass")
    return json.dumps(value).encode()  # floats as repr(): 3.0 stays a float through orjson


STYLES = st.fixed_dictionaries({
    "colon": st.sampled_from([b":", b":", b":", b" : ", b": ", b"\n:"]),
    "ascii": st.booleans(),
})
ODD_STRINGS = ["", "x", 'a":b', 'k" :v', "é", "\u2028", "x\\y", "\x00", "😀", "a:b:c", " ", "3"]
NASTY: list[Any] = [
    None, True, False, 0, 1, -1, -2, 1.0, 3.0, -1.0, 0.5, -0.0, 2147483647.0, 2147483648.0,
    AMOUNT_MAX, AMOUNT_MAX + 1, 2**53, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), 1e308, -1e308,
    5e-324, Raw(b"18446744073709551616"), Raw(b"-9223372036854775809"), Raw(b"-0"), Raw(b"1E2"),
    Raw(b"1e-400"), Raw(b"2.0e0"), Raw(b"-1.0E0"), Raw(b'"\\u003a\\""'), Raw(b'"\\u00e9"'),
    *ODD_STRINGS, [], [1], [1.5, 2], ["a"], [None], [{}], [True], [[1]], {}, {"k": 1},
    {"languageName": "python"}, {"languageName": None}, {"languageName": 1},
    {"languageName": "python", "other": [1]}, {"name": "n", "value": "v"}, {"name": 1},
    [{"name": "n"}], [{"name": None, "value": "v"}], [{"value": 2}],
    Pairs([("languageName", "a"), ("languageName", "b")]),
]
BROKEN = [  # what orjson refuses: not JSON, infinity, invalid UTF-8, a lone surrogate
    Raw(b"1e400"), Raw(b"-1e400"), Raw(b"NaN"), Raw(b"Infinity"), Raw(b'"\xff\xfe"'),
    Raw(b'"\xed\xa0\x80"'), Raw(b'"\\ud800"'), Raw(b"01"), Raw(b"1."), Raw(b"tru"),
]
COMMON = [None, True, False, 0, 1, -1, 1.0, 0.5, "", "3", [], [1], {}, {"k": 1}]
HUGE = [2**63 - 1, 2**63, 2**64 - 1, -(2**63), Raw(b"18446744073709551616"),
        Raw(b"-9223372036854775809"), 1e308, -1e308]
#: per kind: the values at and around the edges of what it accepts
EDGES: dict[str, list[Any]] = {
    "str": ["x", *ODD_STRINGS, 1.5, ["a"]],
    "count": [AMOUNT_MAX, AMOUNT_MAX + 1, -2, 0.0, -0.0, 3.0, -1.0, 3.5, float(AMOUNT_MAX),
              float(AMOUNT_MAX + 1), Raw(b"1E2"), Raw(b"2.0e0"), 5e-324, *HUGE],
    "int_min_neg1": [-2, AMOUNT_MAX, AMOUNT_MAX + 1, -1.0, -2.0, -1.5, 0.0, 7.0, *HUGE],
    "number": [-3, 2.5, -0.0, 5e-324, Raw(b"1e-400"), Raw(b"-0"), 2**53 + 1, *HUGE],
    "bool": ["true", "false", 0.0],
    "lang": [{"languageName": "python"}, {"languageName": ""}, {"languageName": None},
             {"languageName": 1}, {"languageName": True}, {"languageName": ["p"]},
             {"languageName": "p", "other": [1]}, {"other": "p"}, "python", ["python"],
             Pairs([("languageName", "a"), ("languageName", 1)])],
}
#: per list kind: items it accepts, then items it refuses
ITEMS: dict[str, tuple[list[Any], list[Any]]] = {
    "str_list": (["a", ""], [1, None, True, [], {}]),
    "num_list": ([1, 1.5, -0.0, 5e-324, *HUGE],
                 [True, False, None, "1", [], {}, [1.5], Raw(b'"1"')]),
    "obj_list": ([{}, {"ideDiagnosticType": "SYNTAX_ERROR", "range": {"start": [1, 2]}}],
                 [1, "a", None, True, [], [{}], 1.5]),
    "dimensions": ([{"name": "n", "value": "v"}, {}, {"name": None}, {"value": ""},
                    {"name": "n", "other": 1}],
                   [{"name": 1}, {"value": True}, {"name": ["n"]}, {"value": {}}, 1, None, []]),
}
for _kind, (_good, _bad) in ITEMS.items():
    EDGES[_kind] = [[x] for x in _good + _bad] + [_good, [*_good, _bad[0]], [_bad[-1], *_good]]


def edges(f: FieldSpec) -> list[Any]:
    """The edge values of field ``f``: its kind's, its list lengths, and the common ones."""
    out = [*EDGES[f.kind], *COMMON]
    if f.max_len is not None:
        good = ITEMS[f.kind][0][0]
        out += [[good] * f.max_len, [good] * (f.max_len + 1), [good] * (f.max_len - 1)]
    return out


finite = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | finite
                | st.sampled_from(ODD_STRINGS) | st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
    st.sampled_from(ODD_STRINGS) | st.text(max_size=5), kids, max_size=3), max_leaves=10)


def deep(depth: int, kind: str) -> Raw:
    if kind == "list":
        return Raw(b"[" * depth + b"1" + b"]" * depth)
    return Raw(b'{"a":' * depth + b"1" + b"}" * depth)


deep_values = st.builds(deep, st.sampled_from([3, 253, 254, 255, 600, 1023, 1024, 1025, 3000]),
                        st.sampled_from(["list", "object"]))


def good_item(f: FieldSpec) -> st.SearchStrategy[Any]:
    return {
        "str_list": st.text(max_size=5),
        "num_list": finite | st.integers(-(2**63), 2**63 - 1),
        "obj_list": st.dictionaries(st.text(max_size=5), json_values, max_size=3),
        "dimensions": st.fixed_dictionaries({}, optional={"name": st.text(max_size=5) | st.none(),
                                                          "value": st.text(max_size=5)}),
    }[f.kind]


def good_value(f: FieldSpec) -> st.SearchStrategy[Any]:
    """A value of field ``f`` that the Python validator accepts."""
    if f.kind in ("str_list", "num_list", "obj_list", "dimensions"):
        item = good_item(f)
        short = st.lists(item, max_size=min(f.max_len or 4, 4))
        if f.max_len is None:
            return short
        full = st.tuples(item, st.sampled_from([f.max_len - 1, f.max_len])).map(
            lambda t: [t[0]] * t[1])
        return short | full
    return {
        "str": st.text(max_size=20) | st.sampled_from(ODD_STRINGS),
        "count": st.integers(0, AMOUNT_MAX) | st.sampled_from([0, AMOUNT_MAX, 3.0, 0.0]),
        "int_min_neg1": st.integers(-1, AMOUNT_MAX) | st.sampled_from([-1, -1.0]),
        "number": finite | st.integers(-(2**63), 2**64 - 1),
        "bool": st.booleans(),
        "lang": st.fixed_dictionaries({"languageName": st.text(max_size=10)},
                                      optional={"other": json_values}),
    }[f.kind]


def bad_value(f: FieldSpec) -> st.SearchStrategy[Any]:
    """A value of field ``f`` that may be refused: wrong types, out of range, too long..."""
    out: st.SearchStrategy[Any] = st.one_of(
        st.sampled_from(edges(f)), st.sampled_from(edges(f)), st.sampled_from(NASTY), json_values,
        st.sampled_from(BROKEN) | deep_values)
    if f.max_len is not None:
        n = f.max_len + 1
        over = good_item(f).map(lambda item: [item] * n)
        out = out | over | st.lists(st.sampled_from(NASTY), min_size=1, max_size=4)
    return out


TOP_VALUES: dict[str, list[Any]] = {
    "clientToken": ["", "t", "t" * 256, "t" * 257, "😀" * 256, "😀" * 257, 5, ["t"], None],
    "profileArn": [ARN, ARN + "\n", " " + ARN, ARN + "x", "", 111122223333, None,
                   "arn:aws:transform:eu-central-1:444455556666:profile/Z9Y8X7W6V5U4",
                   "arn:aws:codewhisperer:" + "us-" * 320 + "east-1:111122223333:profile/A"],
    "userContext": [None, USER_CONTEXT, "VSCODE", [], {},
                    {k: v for k, v in USER_CONTEXT.items() if k != "product"},
                    USER_CONTEXT | {"ideCategory": 1}, USER_CONTEXT | {"clientId": None},
                    USER_CONTEXT | {"lspVersion": 1}, USER_CONTEXT | {"future": {"x": [1]}},
                    USER_CONTEXT | {"product": None}, USER_CONTEXT | {"ideCategory": ""}],
    "optOutPreference": ["OPTIN", "OPTOUT", "", None, True, 3],
    "modelId": ["m", "", None, 3, []],
}


@st.composite
def valid_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body: ``simulate.request_body`` of any member, more of the table's fields, unknown
    fields."""
    member = draw(st.sampled_from(sorted(MEMBERS)))
    rng = random.Random(draw(st.integers(0, 2**32)))
    doc = simulate.request_body(member, rng, user_id=draw(st.text(min_size=1, max_size=8)),
                                ts=draw(finite | st.integers(0, 2**40)),
                                profile_arn=draw(st.sampled_from([None, ARN])),
                                client_token=draw(st.booleans()))
    event = doc["telemetryEvent"][member]
    for f in MEMBERS[member].fields:
        if draw(st.integers(0, 3)) == 0:
            event[f.name] = draw(good_value(f) | st.none()) if not f.required else draw(
                good_value(f))
    names = {f.name for f in MEMBERS[member].fields}
    extra = draw(st.dictionaries(st.text(max_size=8).filter(lambda k: k not in names),
                                 json_values, max_size=3))
    event.update(extra)
    if draw(st.booleans()):
        doc["futureTopLevel"] = draw(json_values)
    return doc


def mutate(doc: dict[str, Any], draw: st.DrawFn) -> Any:
    """``doc`` changed in one way (the caller may apply several)."""
    te = doc.get("telemetryEvent")
    if isinstance(te, dict) and len(te) == 1 and next(iter(te)) in MEMBERS:
        member = next(iter(te))
    else:
        member = draw(st.sampled_from(sorted(MEMBERS)))
    event = te.get(member) if isinstance(te, dict) else None
    how = draw(st.sampled_from([
        "field", "field", "field", "field", "drop", "null", "unknown", "deep", "top", "top",
        "sibling", "union", "member_value", "not_object", "dup", "dup_top",
    ]))
    fields = MEMBERS[member].fields
    if how in ("field", "drop", "null") and isinstance(event, dict):
        f = draw(st.sampled_from(fields))
        if how == "field":
            event[f.name] = draw(bad_value(f) | good_value(f))
        elif how == "drop":
            event.pop(f.name, None)
        else:
            event[f.name] = None
    elif how == "unknown" and isinstance(event, dict):
        event[draw(st.text(max_size=8))] = draw(json_values | st.sampled_from(NASTY))
    elif how == "deep":
        target = event if isinstance(event, dict) and draw(st.booleans()) else doc
        target["nested"] = draw(deep_values)
    elif how == "top":
        name = draw(st.sampled_from([*TOP_VALUES, "futureTopLevel"]))
        doc[name] = draw(st.sampled_from(TOP_VALUES.get(name, NASTY)))
    elif how == "sibling" and isinstance(te, dict):
        other = draw(st.sampled_from([*sorted(MEMBERS), "unknownMember", ""]))
        te[other] = draw(st.sampled_from([None, None, {}, {"conversationId": "c"}, [], "x"]))
    elif how == "union":
        doc["telemetryEvent"] = draw(st.sampled_from([None, [], "x", {}, {"unknownMember": {}},
                                                      {member: None}, 1]))
    elif how == "member_value" and isinstance(te, dict):
        te[member] = draw(st.sampled_from([None, [], "x", 1, True, Raw(b"1e400")]))
    elif how == "not_object":
        return draw(st.sampled_from([[], [doc], "x", 1, None, True, 2.5, Raw(b"NaN")]))
    elif how == "dup" and isinstance(event, dict) and event:
        key = draw(st.sampled_from(sorted(event)))
        pairs = Pairs(event.items())
        pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(bad_value(fields[0]))))
        te[member] = pairs
    elif how == "dup_top":
        pairs = Pairs(doc.items())
        pairs.append((draw(st.sampled_from(sorted(doc))), draw(json_values)))
        return pairs
    return doc


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    doc: Any = draw(valid_docs())
    for _ in range(draw(st.integers(0, 3))):
        if not isinstance(doc, dict):
            break
        doc = mutate(doc, draw)
    text = render(doc, draw(STYLES))
    if draw(st.sampled_from(range(25))) == 1:  # cut short, or a stray byte (1 body in 25)
        at = draw(st.integers(1, len(text)))
        text = text[:at] + draw(st.sampled_from([b"", b"\xff", b" ", b"}"]))
    return text


# --- the properties -----------------------------------------------------------------------------


@PROPERTY
@given(valid_docs(), STYLES)
def test_valid_bodies_are_decided_by_the_compiled_path(doc: dict[str, Any],
                                                       style: dict[str, Any]) -> None:
    raw = render(doc, style)
    parsed = orjson.loads(raw)
    expected = outcome(python_path, raw)
    assert expected[0] == "accepted", expected
    assert outcome(parse_request, raw) == expected
    ((member, event),) = parsed["telemetryEvent"].items()
    integral_floats = any(  # the one valid shape it leaves to Python: 3.0 as a count
        type(event.get(f.name)) is float
        for f in MEMBERS[member].fields if f.kind in ("count", "int_min_neg1"))
    compiled = validate_compiled(parsed)
    assert (compiled is None) == integral_floats
    if compiled is not None:
        assert accepted(compiled) == expected


@PROPERTY
@given(bodies())
def test_the_compiled_path_accepts_and_refuses_what_the_python_path_does(raw: bytes) -> None:
    result = outcome(parse_request, raw)
    assert result == outcome(python_path, raw)
    with contextlib.suppress(orjson.JSONDecodeError):  # for --hypothesis-show-statistics
        decided = validate_compiled(orjson.loads(raw)) is not None
        event(f"{result[0]}, {'compiled' if decided else 'Python'}")
    if result[0] == "refused" and "not valid JSON" in result[1]:
        event("not JSON")


@PROPERTY
@given(valid_docs(), st.data())
def test_on_parsed_documents_too(doc: dict[str, Any], data: st.DataObject) -> None:
    """The validators themselves, on documents orjson cannot produce too (NaN, infinities,
    integers of any size)."""
    member = next(iter(doc["telemetryEvent"]))
    event = doc["telemetryEvent"][member]
    for _ in range(data.draw(st.integers(0, 3))):
        f = data.draw(st.sampled_from(MEMBERS[member].fields))
        event[f.name] = data.draw(st.sampled_from([
            math.nan, math.inf, -math.inf, 10**400, -(10**400), 2**64, 2**70, [math.nan],
            [10**400], {"languageName": math.nan}, [{"name": math.inf}], float(AMOUNT_MAX),
            float(AMOUNT_MAX + 1), -1.0, -0.0,
        ]) | bad_value(f) | good_value(f))
    if data.draw(st.booleans()):
        name = data.draw(st.sampled_from(list(TOP_VALUES)))
        doc[name] = data.draw(st.sampled_from(TOP_VALUES[name]))
    before = copy.deepcopy(doc)
    expected = outcome(validate_request, doc)
    compiled = validate_compiled(doc)
    if compiled is not None:
        assert accepted(compiled) == expected
    assert typed(doc) == typed(before)  # neither changes the document


DOC_ONLY = [math.nan, math.inf, -math.inf, 10**400, -(10**400), 2**70, [math.nan], [math.inf],
            [10**400], {"languageName": math.nan}, [{"name": math.inf}], [{"k": math.nan}]]


ABSENT = object()


def base_events(member: str) -> list[dict[str, Any]]:
    """The member's simulated event, and every field of the table at a good value."""
    full = {f.name: (ITEMS[f.kind][0][:1] if f.kind in ITEMS else EDGES[f.kind][0])
            for f in MEMBERS[member].fields}
    full = {k: v for k, v in full.items() if v is not None}
    for f in MEMBERS[member].fields:
        if f.kind == "str":
            full[f.name] = "x"
        elif f.kind in ("count", "int_min_neg1", "number"):
            full[f.name] = 7
        elif f.kind == "bool":
            full[f.name] = False
    return [simulate.member_event(member, random.Random(0), user_id="u", ts=1.5), full]


def test_every_field_at_every_edge() -> None:
    """Each field of the table at each edge value of its kind, as bytes and as a document."""
    checked = {"accepted": 0, "refused": 0}
    for member, spec in MEMBERS.items():
        for base in base_events(member):
            for f in spec.fields:
                for value in [*edges(f), ABSENT]:
                    event = copy.deepcopy(base)
                    if value is ABSENT:
                        event.pop(f.name, None)
                    else:
                        event[f.name] = value
                    doc = {"telemetryEvent": {member: event}, "userContext": USER_CONTEXT}
                    raw = render(doc, {"colon": b":", "ascii": False})
                    result = outcome(parse_request, raw)
                    assert result == outcome(python_path, raw), (member, f.name, value)
                    checked[result[0]] += 1
                for value in DOC_ONLY:
                    doc = {"telemetryEvent": {member: copy.deepcopy(base) | {f.name: value}}}
                    compiled = validate_compiled(doc)
                    assert compiled is None or outcome(validate_request, doc) == accepted(
                        compiled), (member, f.name, value)
    assert min(checked.values()) > 1000, checked


def test_every_top_level_field_at_every_edge() -> None:
    for name, values in TOP_VALUES.items():
        for value in [*values, *COMMON]:
            for member in ("featureDevEvent", "kiroChatMessageEvent"):
                doc = simulate.request_body(member, random.Random(0), profile_arn=ARN)
                doc[name] = value
                raw = render(doc, {"colon": b":", "ascii": True})
                assert outcome(parse_request, raw) == outcome(python_path, raw), (name, value)
                if isinstance(value, dict):  # and each field of the user context at its edges
                    for key in USER_CONTEXT.keys() | {"clientId", "lspVersion"}:
                        for v in COMMON:
                            doc[name] = value | {key: v}
                            raw = render(doc, {"colon": b":", "ascii": True})
                            assert outcome(parse_request, raw) == outcome(python_path, raw)


@pytest.mark.parametrize("depth", [253, 254, 255, 600, 1023, 1024, 1025])
@pytest.mark.parametrize("where", ["event", "top"])
def test_deep_nesting(depth: int, where: str) -> None:
    doc = simulate.request_body("featureDevEvent", random.Random(depth))
    (doc["telemetryEvent"]["featureDevEvent"] if where == "event" else doc)["n"] = deep(
        depth, "list")
    raw = render(doc, {"colon": b":", "ascii": False})
    assert outcome(parse_request, raw) == outcome(python_path, raw)


def test_what_the_compiled_path_leaves_to_python_is_still_accepted() -> None:
    member = "userTriggerDecisionEvent"
    doc = simulate.request_body(member, random.Random(1))
    doc["telemetryEvent"][member]["generatedLine"] = 3.0  # an integral float as a count
    assert validate_compiled(doc) is None
    assert parse_request(orjson.dumps(doc)).event["generatedLine"] == 3.0
    doc = simulate.request_body(member, random.Random(2))
    doc["telemetryEvent"]["codeScanEvent"] = None  # a null member next to the real one
    assert validate_compiled(doc) is None
    assert parse_request(orjson.dumps(doc)).member == member


def test_parse_request_uses_the_compiled_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(doc: object) -> TelemetryRequest:
        raise AssertionError("the Python validator ran")

    monkeypatch.setattr(events, "validate_request", refuse)
    raw = orjson.dumps(simulate.request_body("chatAddMessageEvent", random.Random(3),
                                             profile_arn=ARN))
    assert parse_request(raw).member == "chatAddMessageEvent"
    with pytest.raises(AssertionError):
        parse_request(raw.replace(b'"messageId"', b'"messageID"'))  # invalid: Python explains
