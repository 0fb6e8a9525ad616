"""Tests of kiro_activity.events: the SendTelemetryEvent body validator (spec: telemetry.md)."""

from __future__ import annotations

import contextlib
import copy
import math
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiro_activity.errors import ValidationError
from kiro_activity.events import (
    MEMBERS,
    FieldSpec,
    TelemetryRequest,
    _check_value,
    openapi_components,
    parse_profile_arn,
    parse_request,
    validate_request,
)

ARN = "arn:aws:codewhisperer:us-east-1:111122223333:profile/ABCDEFGHIJKL"
USER_CONTEXT = {"ideCategory": "VSCODE", "operatingSystem": "MAC", "product": "CodeWhisperer"}

# The required fields of each member, written out from the spec's table (independent of MEMBERS).
SPEC_REQUIRED: dict[str, set[str]] = {
    "userTriggerDecisionEvent": {
        "sessionId", "requestId", "programmingLanguage", "completionType", "suggestionState",
        "recommendationLatencyMilliseconds", "timestamp",
    },
    "codeCoverageEvent": {
        "programmingLanguage", "acceptedCharacterCount", "totalCharacterCount", "timestamp",
    },
    "userModificationEvent": {
        "sessionId", "requestId", "programmingLanguage", "modificationPercentage", "timestamp",
        "acceptedCharacterCount", "unmodifiedAcceptedCharacterCount",
    },
    "codeScanEvent": {"programmingLanguage", "codeScanJobId", "timestamp"},
    "codeScanSucceededEvent": {
        "programmingLanguage", "codeScanJobId", "timestamp", "numberOfFindings",
    },
    "codeScanFailedEvent": {"programmingLanguage", "codeScanJobId", "timestamp"},
    "codeScanRemediationsEvent": set(),
    "codeFixGenerationEvent": {"jobId"},
    "codeFixAcceptanceEvent": {"jobId"},
    "metricData": {"metricName", "metricValue", "timestamp", "product"},
    "chatAddMessageEvent": {"conversationId", "messageId"},
    "chatInteractWithMessageEvent": {"conversationId", "messageId"},
    "chatUserModificationEvent": {"conversationId", "messageId", "modificationPercentage"},
    "terminalUserInteractionEvent": set(),
    "featureDevEvent": {"conversationId"},
    "featureDevCodeGenerationEvent": {
        "conversationId", "linesOfCodeGenerated", "charactersOfCodeGenerated",
    },
    "featureDevCodeAcceptanceEvent": {
        "conversationId", "linesOfCodeAccepted", "charactersOfCodeAccepted",
    },
    "inlineChatEvent": {"requestId", "timestamp"},
    "transformEvent": {"jobId"},
    "docGenerationEvent": {"conversationId"},
    "docV2GenerationEvent": {
        "conversationId", "numberOfGeneratedChars", "numberOfGeneratedLines",
        "numberOfGeneratedFiles",
    },
    "docV2AcceptanceEvent": {
        "conversationId", "numberOfAddedChars", "numberOfAddedLines", "numberOfAddedFiles",
        "userDecision", "interactionType", "numberOfNavigations", "folderLevel",
    },
    "testGenerationEvent": {"jobId", "groupName"},
    "kiroChatMessageEvent": {"messageId", "conversationId", "origin", "userId", "date"},
    "kiroEnterpriseTelemetryEvent": {"messageId", "conversationId", "origin", "userId", "date"},
}  # fmt: skip

# A good value and wrong-typed values for each kind.
GOOD: dict[str, Any] = {
    "str": "some-value",
    "count": 3,
    "int_min_neg1": 2,
    "number": 12.5,
    "bool": True,
    "lang": {"languageName": "python"},
    "str_list": ["a", "b"],
    "num_list": [12.5, 3],
    "obj_list": [{"ideDiagnosticType": "SYNTAX_ERROR", "severity": "ERROR", "source": "pyright"}],
    "dimensions": [{"name": "os", "value": "linux"}],
}
BAD: dict[str, list[Any]] = {
    "str": [1, 1.5, True, {}, ["a"]],
    "count": ["3", 3.5, True, -1, math.inf, math.nan, 2**31, 2**63, {}, [3]],
    "int_min_neg1": [-2, "1", 0.5, False, -math.inf],
    "number": ["1.5", True, math.inf, -math.inf, math.nan, {}, [1.0]],
    "bool": ["true", 1, 0, {}, []],
    "lang": ["python", {}, {"languageName": 1}, {"languageName": None}, ["python"], 1],
    "str_list": ["a", [1], {}],
    "num_list": [1.0, ["1"], [True], [math.nan], [None]],
    "obj_list": [{}, ["x"], [1], [None]],
    "dimensions": [{}, ["x"], [{"name": 1, "value": "v"}], [{"name": "n", "value": True}]],
}
ALL_FIELDS = [(m, f) for m, spec in MEMBERS.items() for f in spec.fields]
REQUIRED_FIELDS = [(m, f) for m, f in ALL_FIELDS if f.required]
LIST_FIELDS = [(m, f) for m, f in ALL_FIELDS if f.max_len is not None]


def path(member: str, field: str) -> str:
    return f"telemetryEvent.{member}.{field}"


def minimal_event(member: str) -> dict[str, Any]:
    return {f.name: copy.deepcopy(GOOD[f.kind]) for f in MEMBERS[member].fields if f.required}


def full_event(member: str) -> dict[str, Any]:
    return {f.name: copy.deepcopy(GOOD[f.kind]) for f in MEMBERS[member].fields}


def body(member: str, event: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"telemetryEvent": {member: event}, **top}


def problems_of(doc: object) -> str:
    with pytest.raises(ValidationError) as exc:
        validate_request(doc)
    assert exc.value.status == 400 and exc.value.type_name == "ValidationException"
    return exc.value.message


# --- the table ----------------------------------------------------------------------------------


def test_members_are_the_25_of_the_spec_with_their_required_fields() -> None:
    assert len(MEMBERS) == 25
    assert set(MEMBERS) == set(SPEC_REQUIRED)
    for name, spec in MEMBERS.items():
        assert spec.name == name
        assert set(spec.required) == SPEC_REQUIRED[name], name
        assert len({f.name for f in spec.fields}) == len(spec.fields), f"duplicate in {name}"


@pytest.mark.parametrize(
    ("member", "field", "kind", "max_len"),
    [
        ("userTriggerDecisionEvent", "recommendationLatencyMilliseconds", "number", None),
        ("userTriggerDecisionEvent", "timestamp", "number", None),
        ("userTriggerDecisionEvent", "generatedLine", "count", None),
        ("userTriggerDecisionEvent", "streakLength", "int_min_neg1", None),
        ("userTriggerDecisionEvent", "addedIdeDiagnostics", "obj_list", 1024),
        ("userTriggerDecisionEvent", "programmingLanguage", "lang", None),
        ("userModificationEvent", "modificationPercentage", "number", None),
        ("codeScanRemediationsEvent", "CodeScanRemediationsEventType", "str", None),
        ("codeScanRemediationsEvent", "includesFix", "bool", None),
        ("metricData", "metricValue", "number", None),
        ("metricData", "dimensions", "dimensions", 30),
        ("chatAddMessageEvent", "timeBetweenChunks", "num_list", 100),
        ("chatAddMessageEvent", "fullResponselatency", "number", None),
        ("chatAddMessageEvent", "requestLength", "count", None),
        ("chatInteractWithMessageEvent", "acceptedSnippetHasReference", "bool", None),
        ("terminalUserInteractionEvent", "duration", "count", None),
        ("terminalUserInteractionEvent", "timeToSuggestion", "count", None),
        ("terminalUserInteractionEvent", "isCompletionAccepted", "bool", None),
        ("inlineChatEvent", "codeIntent", "bool", None),
        ("inlineChatEvent", "responseStartLatency", "number", None),
        ("kiroChatMessageEvent", "date", "str", None),
        ("kiroChatMessageEvent", "overageEnabled", "bool", None),
        ("kiroChatMessageEvent", "overageCap", "number", None),
        ("kiroChatMessageEvent", "newUser", "bool", None),
        ("kiroChatMessageEvent", "chatMessageDuration", "count", None),
        ("kiroChatMessageEvent", "chatAgentMode", "str", None),
        ("kiroChatMessageEvent", "creditsUsed", "number", None),
        ("kiroEnterpriseTelemetryEvent", "chatMessagesVibe", "count", None),
        ("kiroEnterpriseTelemetryEvent", "overageCreditsUsed", "number", None),
        ("testGenerationEvent", "numberOfUnitTestCasesGenerated", "count", None),
        ("transformEvent", "linesOfCodeSubmitted", "count", None),
    ],
)
def test_field_kinds(member: str, field: str, kind: str, max_len: int | None) -> None:
    (spec,) = [f for f in MEMBERS[member].fields if f.name == field]
    assert (spec.kind, spec.max_len) == (kind, max_len)


# --- valid bodies -------------------------------------------------------------------------------


@pytest.mark.parametrize("member", list(MEMBERS))
@pytest.mark.parametrize("make", [minimal_event, full_event])
def test_valid_body_round_trips(member: str, make: Any) -> None:
    event = make(member) | {"someNewField": {"nested": [1, None]}}
    doc = body(member, event, clientToken="tok-1", futureTopLevel=7)
    before = copy.deepcopy(doc)
    req = validate_request(doc)
    assert isinstance(req, TelemetryRequest)
    assert req.member == member
    assert req.event is doc["telemetryEvent"][member]
    assert doc == before  # nothing changed, unknown fields kept
    assert req.event["someNewField"] == {"nested": [1, None]}
    assert req.client_token == "tok-1"
    assert (req.opt_out, req.profile_arn) == (None, None)
    # and the same through the bytes parser
    assert parse_request(orjson.dumps(doc)).event == before["telemetryEvent"][member]


def test_spec_example_body() -> None:
    raw = b"""{"clientToken":"5d0c1c1e-4a53-4c4f-9a53-3d1f5f8f8d11",
     "telemetryEvent":{"userTriggerDecisionEvent":{
       "sessionId":"6f1c2a64-0d0e-4a57-9a0e-3f5b9e1c7d21",
       "requestId":"9a2b8c3d-1e4f-4a5b-8c6d-7e8f9a0b1c2d",
       "programmingLanguage":{"languageName":"python"},"completionType":"LINE",
       "suggestionState":"ACCEPT","recommendationLatencyMilliseconds":312.5,
       "timestamp":1764547200.123,"generatedLine":3,"acceptedCharacterCount":87,
       "suggestionType":"COMPLETIONS"}},
     "optOutPreference":"OPTIN",
     "userContext":{"ideCategory":"VSCODE","operatingSystem":"MAC","product":"CodeWhisperer"},
     "profileArn":"arn:aws:codewhisperer:us-east-1:111122223333:profile/ABCDEFGHIJKL"}"""
    req = parse_request(raw)
    assert req.member == "userTriggerDecisionEvent"
    assert req.client_token == "5d0c1c1e-4a53-4c4f-9a53-3d1f5f8f8d11"
    assert req.opt_out == "OPTIN"
    assert req.profile_arn == ARN
    assert req.user_id is None
    assert req.client_timestamp == 1764547200.123
    assert req.ide_category == "VSCODE"
    assert req.event["acceptedCharacterCount"] == 87


def test_null_fields_count_as_absent() -> None:
    event = minimal_event("userTriggerDecisionEvent") | {"acceptedCharacterCount": None}
    doc = body("userTriggerDecisionEvent", event, clientToken=None, profileArn=None,
               userContext=None, optOutPreference=None, modelId=None)  # fmt: skip
    req = validate_request(doc)
    assert (req.client_token, req.profile_arn, req.opt_out, req.ide_category) == (None,) * 4
    # a null member next to the real one is absent too
    doc = {"telemetryEvent": {"codeScanEvent": None, "featureDevEvent": {"conversationId": "c"}}}
    assert validate_request(doc).member == "featureDevEvent"


# --- required fields and types ------------------------------------------------------------------


@pytest.mark.parametrize(("member", "field"), REQUIRED_FIELDS, ids=lambda x: getattr(x, "name", x))
@pytest.mark.parametrize("how", ["removed", "null"])
def test_missing_required_field(member: str, field: FieldSpec, how: str) -> None:
    event = full_event(member)
    if how == "removed":
        del event[field.name]
    else:
        event[field.name] = None
    message = problems_of(body(member, event))
    assert f"{path(member, field.name)}: required field is missing" in message


@pytest.mark.parametrize(("member", "field"), ALL_FIELDS, ids=lambda x: getattr(x, "name", x))
def test_wrong_type_is_refused_naming_the_field(member: str, field: FieldSpec) -> None:
    for bad in BAD[field.kind]:
        event = full_event(member) | {field.name: bad}
        message = problems_of(body(member, event))
        assert path(member, field.name) in message, (bad, message)


@pytest.mark.parametrize(("member", "field"), LIST_FIELDS, ids=lambda x: getattr(x, "name", x))
def test_list_over_its_max_length_is_refused(member: str, field: FieldSpec) -> None:
    assert field.max_len is not None
    item = GOOD[field.kind][0]
    ok = full_event(member) | {field.name: [item] * field.max_len}
    validate_request(body(member, ok))
    too_long = full_event(member) | {field.name: [item] * (field.max_len + 1)}
    message = problems_of(body(member, too_long))
    assert f"{path(member, field.name)}: must have at most {field.max_len} items" in message


def test_str_list_kind() -> None:
    spec = FieldSpec("tags", "str_list", max_len=2)
    assert _check_value(spec, ["a", "b"]) == []
    assert _check_value(spec, ["a", 1]) == ["[1]: must be a string, got 1"]
    assert _check_value(spec, ["a", "b", "c"]) == [": must have at most 2 items, got 3"]
    assert _check_value(spec, "a") == [': must be a list, got "a"']


def test_integer_rules() -> None:
    member = "userTriggerDecisionEvent"

    def with_count(value: Any) -> dict[str, Any]:
        return body(member, minimal_event(member) | {"acceptedCharacterCount": value})

    assert validate_request(with_count(3.0)).event["acceptedCharacterCount"] == 3.0
    assert validate_request(with_count(0)).event["acceptedCharacterCount"] == 0
    for bad, shown in [(3.5, "3.5"), ("3", '"3"'), (True, "true"), (-1, "-1"), (math.inf, "inf")]:
        message = problems_of(with_count(bad))
        expected = (f"{path(member, 'acceptedCharacterCount')}: must be an integer from 0 to"
                    f" 2147483647, got {shown}")
        assert expected in message
    raw = orjson.dumps(with_count(12345)).replace(b"12345", b"1e400")
    assert b'"acceptedCharacterCount":1e400' in raw
    with pytest.raises(ValidationError):  # 1e400 is +infinity as a double
        parse_request(raw)

    def with_streak(value: Any) -> dict[str, Any]:
        return body(member, minimal_event(member) | {"streakLength": value})

    assert validate_request(with_streak(-1)).event["streakLength"] == -1
    assert validate_request(with_streak(-1.0)).event["streakLength"] == -1.0
    assert "streakLength: must be an integer from -1 to 2147483647, got -2" in problems_of(
        with_streak(-2))


def test_numbers_accept_ints_and_floats_only_finite() -> None:
    member = "metricData"
    for good in (0, -3, 2.5, 1e300, -1e-9):
        validate_request(body(member, minimal_event(member) | {"metricValue": good}))
    for bad in (math.nan, math.inf, True, "1"):
        message = problems_of(body(member, minimal_event(member) | {"metricValue": bad}))
        assert f"{path(member, 'metricValue')}: must be a finite number" in message


# --- the union ----------------------------------------------------------------------------------


def test_zero_members() -> None:
    assert "telemetryEvent: must have exactly one member, found none" in problems_of(
        {"telemetryEvent": {}}
    )


def test_two_members_are_listed() -> None:
    doc = {"telemetryEvent": {"featureDevEvent": {"conversationId": "c"},
                              "codeScanEvent": minimal_event("codeScanEvent")}}  # fmt: skip
    message = problems_of(doc)
    assert "must have exactly one member, found 2" in message
    assert '"featureDevEvent"' in message and '"codeScanEvent"' in message


def test_unknown_member_is_named() -> None:
    message = problems_of({"telemetryEvent": {"someFutureEvent": {"a": 1}}})
    assert 'telemetryEvent: unknown member "someFutureEvent"' in message


@pytest.mark.parametrize("value", ["x", 1, [], True])
def test_member_value_not_an_object(value: Any) -> None:
    message = problems_of({"telemetryEvent": {"featureDevEvent": value}})
    assert "telemetryEvent.featureDevEvent: must be an object" in message


@pytest.mark.parametrize("value", [None, "x", [], 3])
def test_telemetry_event_missing_or_not_an_object(value: Any) -> None:
    doc = {} if value is None else {"telemetryEvent": value}
    assert "telemetryEvent: " in problems_of(doc)


# --- top level ----------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", [[], "x", 1, None, True, 2.5])
def test_body_not_an_object(doc: object) -> None:
    assert "request body must be a JSON object" in problems_of(doc)


@pytest.mark.parametrize("raw", [b"", b"{", b'{"telemetryEvent": }', b"\xff", b"{} x", b"NaN"])
def test_malformed_json(raw: bytes) -> None:
    with pytest.raises(ValidationError) as exc:
        parse_request(raw)
    assert "not valid JSON" in exc.value.message
    assert "line 1 column" in exc.value.message  # the position


def test_client_token_length() -> None:
    event = minimal_event("featureDevEvent")
    assert validate_request(body("featureDevEvent", event, clientToken="t" * 256)).client_token
    assert validate_request(body("featureDevEvent", event, clientToken="t")).client_token == "t"
    for bad in ("", "t" * 257, 5, ["t"]):
        message = problems_of(body("featureDevEvent", event, clientToken=bad))
        assert "clientToken: must be a string of 1..256 characters" in message


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:codewhisperer:us-east-1:11112222333:profile/ABCDEFGHIJKL",
        "arn:aws:codewhisperer:us-east-1:111122223333:profile/ABCDEFGHIJK",
        "arn:aws:codewhisperer:us-east-1:111122223333:profile/ABCDEFGHIJK!",
        "arn:aws:s3:us-east-1:111122223333:profile/ABCDEFGHIJKL",
        "arn:aws:codewhisperer::111122223333:profile/ABCDEFGHIJKL",
        "arn:aws:codewhisperer:us-east-1:111122223333:customization/ABCDEFGHIJKL",
        ARN + "x",
        " " + ARN,
        "",
        "arn:aws:codewhisperer:" + "us-" * 320 + "east-1:111122223333:profile/ABCDEFGHIJKL",
    ],
)
def test_malformed_profile_arn(arn: str) -> None:
    assert "profileArn: must be arn:aws:" in problems_of(
        body("featureDevEvent", {"conversationId": "c"}, profileArn=arn)
    )
    with pytest.raises(ValidationError):
        parse_profile_arn(arn)


def test_profile_arn_not_a_string() -> None:
    assert "profileArn: " in problems_of(body("featureDevEvent", {"conversationId": "c"},
                                              profileArn=111122223333))  # fmt: skip


def test_well_formed_profile_arn() -> None:
    assert parse_profile_arn(ARN) == ("us-east-1", "111122223333")
    other = "arn:aws:transform:eu-central-1:444455556666:profile/Z9Y8X7W6V5U4"
    assert parse_profile_arn(other) == ("eu-central-1", "444455556666")
    req = validate_request(body("featureDevEvent", {"conversationId": "c"}, profileArn=other))
    assert req.profile_arn == other
    assert parse_profile_arn(
        "arn:aws:codewhisperer:us-gov-west-1:000000000000:profile/abcdefABCDEF"
    )


def test_user_context() -> None:
    event = minimal_event("featureDevEvent")
    full = USER_CONTEXT | {"clientId": "c" * 36, "ideVersion": "1.99", "pluginVersion": "1.2.3",
                           "lspVersion": "1.0.0", "futureField": 1}  # fmt: skip
    assert validate_request(body("featureDevEvent", event, userContext=full)).ide_category
    no_product = {k: v for k, v in USER_CONTEXT.items() if k != "product"}
    message = problems_of(body("featureDevEvent", event, userContext=no_product))
    assert "userContext.product: required field is missing" in message
    message = problems_of(
        body("featureDevEvent", event, userContext=USER_CONTEXT | {"lspVersion": 1})
    )
    assert "userContext.lspVersion: must be a string, got 1" in message
    assert "userContext: must be an object" in problems_of(
        body("featureDevEvent", event, userContext="VSCODE")
    )


def test_opt_out_and_model_id_are_strings_of_any_value() -> None:
    event = minimal_event("featureDevEvent")
    req = validate_request(body("featureDevEvent", event, optOutPreference="MAYBE", modelId=""))
    assert req.opt_out == "MAYBE"
    message = problems_of(body("featureDevEvent", event, optOutPreference=True, modelId=3))
    assert "optOutPreference: must be a string, got true" in message
    assert "modelId: must be a string, got 3" in message


# --- leniency -----------------------------------------------------------------------------------


def test_unknown_enum_values_and_odd_ids_are_stored_as_sent() -> None:
    utde = minimal_event("userTriggerDecisionEvent") | {
        "suggestionState": "WHATEVER", "requestId": "", "sessionId": "not_set",
        "completionType": "PARAGRAPH",
    }  # fmt: skip
    req = validate_request(body("userTriggerDecisionEvent", utde, optOutPreference="SOMETIMES"))
    assert req.event["suggestionState"] == "WHATEVER" and req.event["requestId"] == ""
    chat = {
        "conversationId": "DummyConversationId",
        "messageId": "",
        "interactionType": "ACCEPT_DIFF",
    }
    req = validate_request(body("chatInteractWithMessageEvent", chat))
    assert req.event == chat
    doc = {"conversationId": "DummyConversationId", "userDecision": "ACCEPTED",
           "interactionType": "VIEW_DIFF"}  # fmt: skip
    assert validate_request(body("docGenerationEvent", doc)).event["userDecision"] == "ACCEPTED"


# --- reporting ----------------------------------------------------------------------------------


def test_every_problem_is_listed_in_one_message() -> None:
    event = minimal_event("userTriggerDecisionEvent") | {"acceptedCharacterCount": 3.5}
    del event["sessionId"]
    event["programmingLanguage"] = {}
    doc = body("userTriggerDecisionEvent", event, clientToken="", userContext={"ideCategory": 1})
    message = problems_of(doc)
    for expected in [
        "telemetryEvent.userTriggerDecisionEvent.sessionId: required field is missing",
        "telemetryEvent.userTriggerDecisionEvent.acceptedCharacterCount: "
        "must be an integer from 0 to 2147483647, got 3.5",
        "telemetryEvent.userTriggerDecisionEvent.programmingLanguage.languageName: "
        "required field is missing",
        "clientToken: must be a string of 1..256 characters",
        "userContext.ideCategory: must be a string, got 1",
        "userContext.operatingSystem: required field is missing",
        "userContext.product: required field is missing",
    ]:
        assert expected in message


def test_long_problem_lists_are_truncated() -> None:
    event = {f.name: ["x"] for f in MEMBERS["kiroEnterpriseTelemetryEvent"].fields}
    assert len(event) > 20  # each one a problem: far more than fits in 1 KB
    message = problems_of(body("kiroEnterpriseTelemetryEvent", event))
    assert len(message) <= 1100
    assert message.rstrip().split("; ")[-1].startswith("and ")
    assert message.endswith("more")
    huge = problems_of({"telemetryEvent": {"x" * 100_000: {}}})
    assert len(huge) <= 1100


def test_problem_in_list_items_names_the_index() -> None:
    event = {"conversationId": "c", "messageId": "m", "timeBetweenChunks": [1, 2.5, "3"]}
    message = problems_of(body("chatAddMessageEvent", event))
    assert 'chatAddMessageEvent.timeBetweenChunks[2]: must be a finite number, got "3"' in message


# --- derived attributes -------------------------------------------------------------------------


def test_ide_category_resolution() -> None:
    event = minimal_event("transformEvent") | {"ideCategory": "JETBRAINS"}
    req = validate_request(body("transformEvent", event, userContext=USER_CONTEXT))
    assert req.ide_category == "JETBRAINS"
    event["ideCategory"] = ""
    assert validate_request(body("transformEvent", event, userContext=USER_CONTEXT)).ide_category
    assert (
        validate_request(body("transformEvent", event, userContext=USER_CONTEXT)).ide_category
        == "VSCODE"
    )
    assert validate_request(body("transformEvent", event)).ide_category is None
    utde = minimal_event("userTriggerDecisionEvent")
    assert validate_request(body("userTriggerDecisionEvent", utde)).ide_category is None
    req = validate_request(body("userTriggerDecisionEvent", utde, userContext=USER_CONTEXT))
    assert req.ide_category == "VSCODE"


def test_user_id_only_from_the_kiro_members() -> None:
    for member in ("kiroChatMessageEvent", "kiroEnterpriseTelemetryEvent"):
        event = minimal_event(member) | {"userId": "user-42"}
        assert validate_request(body(member, event)).user_id == "user-42"
    event = minimal_event("featureDevEvent") | {"userId": "user-42"}
    assert validate_request(body("featureDevEvent", event)).user_id is None


def test_client_timestamp() -> None:
    utde = minimal_event("userTriggerDecisionEvent") | {"timestamp": 1764547200}
    req = validate_request(body("userTriggerDecisionEvent", utde))
    assert req.client_timestamp == 1764547200.0 and isinstance(req.client_timestamp, float)
    assert (
        validate_request(body("featureDevEvent", {"conversationId": "c"})).client_timestamp is None
    )
    odd = {"conversationId": "c", "timestamp": "yesterday"}  # not a field of this member: kept
    assert validate_request(body("featureDevEvent", odd)).client_timestamp is None


# --- OpenAPI ------------------------------------------------------------------------------------


def test_openapi_components() -> None:
    schemas = openapi_components()  # the schemas by name, for components.schemas
    orjson.dumps(schemas)  # JSON-serialisable
    for name in ("SendTelemetryEventRequest", "TelemetryEvent", "UserContext",
                 "ProgrammingLanguage"):  # fmt: skip
        assert name in schemas
    one_of = schemas["TelemetryEvent"]["oneOf"]
    assert len(one_of) == 25
    assert {alt["required"][0] for alt in one_of} == set(MEMBERS)
    for alt in one_of:
        (member,) = alt["required"]
        ref = alt["properties"][member]["$ref"]
        assert ref.startswith("#/components/schemas/")
        member_schema = schemas[ref.rsplit("/", 1)[1]]
        assert set(member_schema.get("required", [])) == SPEC_REQUIRED[member]
        assert set(member_schema["properties"]) == {f.name for f in MEMBERS[member].fields}
    assert schemas["SendTelemetryEventRequest"]["required"] == ["telemetryEvent"]
    assert set(schemas["UserContext"]["required"]) == {"ideCategory", "operatingSystem", "product"}
    refs = re.findall(rb'"\$ref":"#/components/schemas/(\w+)"', orjson.dumps(schemas))
    assert refs and {r.decode() for r in refs} <= set(schemas)  # every $ref resolves
    utde = schemas["UserTriggerDecisionEvent"]["properties"]
    assert utde["streakLength"]["minimum"] == -1
    assert utde["acceptedCharacterCount"]["type"] == "integer"
    assert utde["addedIdeDiagnostics"]["maxItems"] == 1024


# --- properties ---------------------------------------------------------------------------------

KNOWN_KEYS = sorted(
    {"telemetryEvent", "clientToken", "userContext", "profileArn", "optOutPreference",
     "modelId", "languageName", "name", "value", "ideCategory", "operatingSystem", "product"}
    | set(MEMBERS)
    | {f.name for _, f in ALL_FIELDS}
)  # fmt: skip
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from([ARN, "", "x" * 257, 3.0, -1, 2**63]),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=40,
)


@settings(max_examples=400, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_any_json_value_gives_a_request_or_a_validation_error(doc: Any) -> None:
    try:
        req = validate_request(doc)
    except ValidationError as e:
        assert e.message and len(e.message) <= 1100
    else:
        assert req.member in MEMBERS


@settings(max_examples=200, database=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_request_or_a_validation_error(raw: bytes) -> None:
    with contextlib.suppress(ValidationError):
        assert parse_request(raw).member in MEMBERS


finite = st.floats(allow_nan=False, allow_infinity=False)
wire_values = st.recursive(  # what orjson can write: 64-bit integers, finite floats
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | finite | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)
KIND_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "str": st.text(max_size=40),
    "count": st.integers(0, 2**31 - 1) | st.integers(0, 2**31 - 1).map(float),
    "int_min_neg1": st.integers(-1, 2**31 - 1),
    "number": finite | st.integers(-(2**62), 2**62),
    "bool": st.booleans(),
    "lang": st.fixed_dictionaries({"languageName": st.text(max_size=20)}),
    "str_list": st.lists(st.text(max_size=5), max_size=4),
    "num_list": st.lists(finite | st.integers(-5, 5), max_size=100),
    "obj_list": st.lists(st.dictionaries(st.text(max_size=5), st.text(max_size=5)), max_size=3),
    "dimensions": st.lists(
        st.fixed_dictionaries({"name": st.text(max_size=5), "value": st.text(max_size=5)}),
        max_size=30,
    ),
}


@st.composite
def valid_bodies(draw: st.DrawFn) -> dict[str, Any]:
    member = draw(st.sampled_from(sorted(MEMBERS)))
    event: dict[str, Any] = {}
    for f in MEMBERS[member].fields:
        if f.required or draw(st.booleans()):
            event[f.name] = draw(KIND_VALUES[f.kind])
    names = {f.name for f in MEMBERS[member].fields}
    extra = draw(st.dictionaries(st.text(max_size=10).filter(lambda k: k not in names),
                                 wire_values, max_size=3))  # fmt: skip
    doc: dict[str, Any] = {"telemetryEvent": {member: event | extra}}
    if draw(st.booleans()):
        doc["clientToken"] = draw(st.text(min_size=1, max_size=256))
    if draw(st.booleans()):
        doc["userContext"] = USER_CONTEXT
    if draw(st.booleans()):
        doc["profileArn"] = ARN
    return doc


@settings(max_examples=300, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_bodies())
def test_valid_generated_bodies_pass_and_keep_their_fields(doc: dict[str, Any]) -> None:
    ((member, event),) = doc["telemetryEvent"].items()
    before = copy.deepcopy(event)
    req = validate_request(doc)
    assert req.member == member
    assert req.event is event and event == before
    assert req.client_token == doc.get("clientToken")
    assert req.profile_arn == doc.get("profileArn")
    # and through JSON bytes too
    assert parse_request(orjson.dumps(doc)).event == orjson.loads(orjson.dumps(event))
