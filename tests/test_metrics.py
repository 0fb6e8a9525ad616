"""The 44 metrics: the header of both layouts, every rule of metrics.md, and DuckDB held to the
plain-Python evaluator of the same rule table."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiro_activity import metrics
from kiro_activity.aggregate import aggregate_table
from kiro_activity.metrics import METRICS, evaluate

ROOT = Path(__file__).parent.parent
SPEC_HEADER = (
    "UserId,Date,Chat_AICodeLines,Chat_MessagesInteracted,Chat_MessagesSent,"
    "CodeFix_AcceptanceEventCount,CodeFix_AcceptedLines,CodeFix_GeneratedLines,"
    "CodeFix_GenerationEventCount,CodeReview_FailedEventCount,CodeReview_FindingsCount,"
    "CodeReview_SucceededEventCount,Dev_AcceptanceEventCount,Dev_AcceptedLines,"
    "Dev_GeneratedLines,Dev_GenerationEventCount,DocGeneration_AcceptedFileUpdates,"
    "DocGeneration_AcceptedFilesCreations,DocGeneration_AcceptedLineAdditions,"
    "DocGeneration_AcceptedLineUpdates,DocGeneration_EventCount,"
    "DocGeneration_RejectedFileCreations,DocGeneration_RejectedFileUpdates,"
    "DocGeneration_RejectedLineAdditions,DocGeneration_RejectedLineUpdates,"
    "InlineChat_AcceptanceEventCount,InlineChat_AcceptedLineAdditions,"
    "InlineChat_AcceptedLineDeletions,InlineChat_DismissalEventCount,"
    "InlineChat_DismissedLineAdditions,InlineChat_DismissedLineDeletions,InlineChat_EventCount,"
    "InlineChat_RejectedLineAdditions,InlineChat_RejectedLineDeletions,"
    "InlineChat_RejectionEventCount,Inline_AICodeLines,Inline_AcceptanceCount,"
    "Inline_SuggestionsCount,TestGeneration_AcceptedLines,TestGeneration_AcceptedTests,"
    "TestGeneration_EventCount,TestGeneration_GeneratedLines,TestGeneration_GeneratedTests,"
    "Transformation_EventCount,Transformation_LinesGenerated,Transformation_LinesIngested"
)


def test_header_is_exactly_the_documented_one() -> None:
    assert ",".join(metrics.header("documented")) == SPEC_HEADER
    assert len(METRICS) == 44


def test_delivered_layout_renames_and_resorts_one_column() -> None:
    cols = metrics.header("delivered")
    assert "InlineChat_EventCount" not in cols
    i = cols.index("InlineChat_TotalEventCount")
    assert cols[i - 1:i + 2] == ["InlineChat_RejectionEventCount", "InlineChat_TotalEventCount",
                                 "Inline_AICodeLines"]
    assert cols[2:] == sorted(cols[2:])


def test_metrics_json_and_docs_are_derived_from_the_table() -> None:
    assert (ROOT / "docs" / "metrics.md").read_text() == metrics.docs_markdown()
    shipped = ROOT / "src" / "kiro_activity" / "metrics.json"
    assert shipped.read_bytes() == metrics.definitions_json()
    for m in METRICS:
        assert f"`{m.name}`" in metrics.docs_markdown()


def one(member: str, ide: str | None = None, **fields: Any) -> tuple[str, dict[str, Any],
                                                                     str | None]:
    return (member, fields, ide)


# (events, expected non-zero metrics): every rule of metrics.md, with what it must not count
CASES: list[tuple[list[Any], dict[str, int]]] = [
    ([one("chatInteractWithMessageEvent", interactionType="INSERT_AT_CURSOR", acceptedLineCount=4,
          conversationId="c", messageId="m"),
      one("chatInteractWithMessageEvent", interactionType="AGENTIC_CODE_ACCEPTED",
          acceptedLineCount=3, conversationId="c", messageId="m"),
      one("chatInteractWithMessageEvent", interactionType="COPY_SNIPPET", acceptedLineCount=9,
          conversationId="c", messageId="m2"),
      one("chatInteractWithMessageEvent", interactionType="DOWNVOTE", acceptedLineCount=9,
          conversationId="c", messageId="m3"),
      one("chatInteractWithMessageEvent", interactionType="ACCEPT_DIFF", acceptedLineCount=9,
          conversationId="c", messageId="m4")],
     {"Chat_AICodeLines": 7, "Chat_MessagesInteracted": 2}),
    ([one("chatAddMessageEvent", conversationId="c", messageId="m")] * 3,
     {"Chat_MessagesSent": 3}),
    ([one("codeFixAcceptanceEvent", jobId="j", linesOfCodeAccepted=5),
      one("codeFixAcceptanceEvent", jobId="j"),
      one("codeFixGenerationEvent", jobId="j", linesOfCodeGenerated=8)],
     {"CodeFix_AcceptanceEventCount": 2, "CodeFix_AcceptedLines": 5,
      "CodeFix_GenerationEventCount": 1, "CodeFix_GeneratedLines": 8}),
    ([one("codeScanFailedEvent"), one("codeScanSucceededEvent", numberOfFindings=6),
      one("codeScanSucceededEvent", numberOfFindings=1), one("codeScanEvent")],
     {"CodeReview_FailedEventCount": 1, "CodeReview_SucceededEventCount": 2,
      "CodeReview_FindingsCount": 7}),
    ([one("featureDevCodeAcceptanceEvent", linesOfCodeAccepted=10),
      one("featureDevCodeGenerationEvent", linesOfCodeGenerated=30),
      one("featureDevCodeGenerationEvent", linesOfCodeGenerated=2), one("featureDevEvent")],
     {"Dev_AcceptanceEventCount": 1, "Dev_AcceptedLines": 10, "Dev_GenerationEventCount": 2,
      "Dev_GeneratedLines": 32}),
    ([one("docV2AcceptanceEvent", userDecision="ACCEPT", interactionType="GENERATE_README",
          numberOfAddedFiles=1, numberOfAddedLines=40),
      one("docV2AcceptanceEvent", userDecision="ACCEPT", interactionType="UPDATE_README",
          numberOfAddedFiles=2, numberOfAddedLines=7),
      one("docV2AcceptanceEvent", userDecision="ACCEPT", interactionType="EDIT_README",
          numberOfAddedFiles=1, numberOfAddedLines=1),
      one("docV2AcceptanceEvent", userDecision="REJECT", interactionType="GENERATE_README",
          numberOfAddedFiles=3, numberOfAddedLines=50),
      one("docV2AcceptanceEvent", userDecision="REJECT", interactionType="EDIT_README",
          numberOfAddedFiles=4, numberOfAddedLines=60),
      one("docV2AcceptanceEvent", userDecision="ACCEPTED", interactionType="GENERATE_README",
          numberOfAddedFiles=100, numberOfAddedLines=100),
      one("docV2GenerationEvent"), one("docGenerationEvent", userDecision="ACCEPT",
                                       interactionType="GENERATE_README", numberOfAddLines=5)],
     {"DocGeneration_AcceptedFilesCreations": 1, "DocGeneration_AcceptedLineAdditions": 40,
      "DocGeneration_AcceptedFileUpdates": 3, "DocGeneration_AcceptedLineUpdates": 8,
      "DocGeneration_RejectedFileCreations": 3, "DocGeneration_RejectedLineAdditions": 50,
      "DocGeneration_RejectedFileUpdates": 4, "DocGeneration_RejectedLineUpdates": 60,
      "DocGeneration_EventCount": 2}),
    ([one("inlineChatEvent", userDecision="ACCEPT", numSuggestionAddLines=3,
          numSuggestionDelLines=1),
      one("inlineChatEvent", userDecision="REJECT", numSuggestionAddLines=5,
          numSuggestionDelLines=2),
      one("inlineChatEvent", userDecision="DISMISS", numSuggestionAddLines=7,
          numSuggestionDelLines=4),
      one("inlineChatEvent", userDecision="WHATEVER", numSuggestionAddLines=70),
      one("inlineChatEvent")],
     {"InlineChat_AcceptanceEventCount": 1, "InlineChat_AcceptedLineAdditions": 3,
      "InlineChat_AcceptedLineDeletions": 1, "InlineChat_RejectionEventCount": 1,
      "InlineChat_RejectedLineAdditions": 5, "InlineChat_RejectedLineDeletions": 2,
      "InlineChat_DismissalEventCount": 1, "InlineChat_DismissedLineAdditions": 7,
      "InlineChat_DismissedLineDeletions": 4, "InlineChat_EventCount": 5}),
    ([one("userTriggerDecisionEvent", suggestionState="ACCEPT", generatedLine=3),
      one("userTriggerDecisionEvent", suggestionState="ACCEPT", generatedLine=2.0),
      one("userTriggerDecisionEvent", suggestionState="REJECT", generatedLine=9),
      one("userTriggerDecisionEvent", suggestionState="DISCARD", generatedLine=9),
      one("userTriggerDecisionEvent", suggestionState="EMPTY"),
      one("userTriggerDecisionEvent", suggestionState="MERGE", generatedLine=9)],
     {"Inline_AcceptanceCount": 2, "Inline_AICodeLines": 5, "Inline_SuggestionsCount": 3}),
    ([one("testGenerationEvent", linesOfCodeAccepted=4, numberOfUnitTestCasesAccepted=2,
          linesOfCodeGenerated=10, numberOfUnitTestCasesGenerated=5),
      one("testGenerationEvent")],
     {"TestGeneration_EventCount": 2, "TestGeneration_AcceptedLines": 4,
      "TestGeneration_AcceptedTests": 2, "TestGeneration_GeneratedLines": 10,
      "TestGeneration_GeneratedTests": 5}),
    ([one("transformEvent", "VSCODE", linesOfCodeChanged=100, linesOfCodeSubmitted=900),
      one("transformEvent", None, linesOfCodeChanged=1, linesOfCodeSubmitted=2),
      one("transformEvent", "CLI", linesOfCodeChanged=5000, linesOfCodeSubmitted=5000)],
     {"Transformation_EventCount": 2, "Transformation_LinesGenerated": 101,
      "Transformation_LinesIngested": 902}),
    ([one(m) for m in ("codeCoverageEvent", "userModificationEvent", "chatUserModificationEvent",
                       "codeScanRemediationsEvent", "terminalUserInteractionEvent",
                       "metricData", "kiroChatMessageEvent", "kiroEnterpriseTelemetryEvent")],
     {}),
]


def table(events: list[tuple[str, dict[str, Any], str | None]], user: str = "u") -> pa.Table:
    import orjson
    return pa.table({
        "user_id": [user] * len(events), "member": [m for m, _, _ in events],
        "ide_category": [ide for _, _, ide in events],
        "body": [orjson.dumps({"telemetryEvent": {m: e}}).decode() for m, e, _ in events]},
        schema=pa.schema([(n, pa.string()) for n in ("user_id", "member", "ide_category",
                                                     "body")]))


@pytest.mark.parametrize(("events", "expected"), CASES)
def test_every_rule(events: list[Any], expected: dict[str, int]) -> None:
    want = {m.name: expected.get(m.name, 0) for m in METRICS}
    assert evaluate(events) == want
    rows, n = aggregate_table(table(events))
    assert n == len(events)
    assert rows == [("u", [want[m.name] for m in METRICS])]


def test_no_events_no_rows() -> None:
    assert aggregate_table(table([])) == ([], 0)


FIELDS = {
    "interactionType": st.sampled_from(["INSERT_AT_CURSOR", "AGENTIC_CODE_ACCEPTED", "COPY",
                                        "DOWNVOTE", "ACCEPT_DIFF", "UPVOTE"]),
    "userDecision": st.sampled_from(["ACCEPT", "REJECT", "DISMISS", "ACCEPTED"]),
    "suggestionState": st.sampled_from(["ACCEPT", "REJECT", "DISCARD", "EMPTY", "MERGE"]),
    "conversationId": st.sampled_from(["c1", "c2"]),
    "messageId": st.sampled_from(["m1", "m2", ""]),
}
COUNT = st.one_of(st.integers(0, 10**6), st.integers(0, 1000).map(float),
                  st.just(2**63 - 1))


@st.composite
def events(draw: st.DrawFn) -> tuple[str, dict[str, Any], str | None]:
    member = draw(st.sampled_from(sorted({mem for m in METRICS for mem in m.rule.members}
                                         | {"codeCoverageEvent"})))
    fields: dict[str, Any] = {}
    for name in metrics.fields_used():
        if draw(st.booleans()):
            fields[name] = draw(FIELDS.get(name, COUNT))
    if member == "docV2AcceptanceEvent" and draw(st.booleans()):
        fields["interactionType"] = draw(st.sampled_from(["GENERATE_README", "UPDATE_README",
                                                          "EDIT_README"]))
    ide = draw(st.sampled_from([None, "CLI", "VSCODE"]))
    return member, fields, ide


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "=c", "é"]), events()), max_size=40))
def test_duckdb_equals_the_reference_evaluator(sample: list[Any]) -> None:
    by_user: dict[str, list[Any]] = {}
    for user, event in sample:
        by_user.setdefault(user, []).append(event)
    raw = pa.concat_tables([table(evs, user) for user, evs in by_user.items()] or [table([])])
    rows, n = aggregate_table(raw)
    assert n == len(sample)
    expected = [(u, [evaluate(by_user[u])[m.name] for m in METRICS]) for u in sorted(by_user)]
    assert rows == expected


def test_a_realistic_day_matches_the_reference() -> None:
    from kiro_activity.simulate import user_day
    rng = random.Random(5)
    by_user = {f"user{i}": [(m, e, None) for b in user_day(rng, user_id=f"user{i}", day_start=0,
                                                            n_events=80)
                            for m, e in b["telemetryEvent"].items()] for i in range(20)}
    raw = pa.concat_tables([table(evs, u) for u, evs in by_user.items()])
    rows, _ = aggregate_table(raw)
    assert rows == [(u, [evaluate(by_user[u])[m.name] for m in METRICS]) for u in sorted(by_user)]
    assert sum(sum(v) for _, v in rows) > 0


ODD_VALUES = st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.integers(-5, 2**40),
                       st.floats(allow_nan=False, allow_infinity=False),  # what JSON can carry
                       st.lists(st.integers(), max_size=2))


@settings(max_examples=400, deadline=None)
@given(events(), st.dictionaries(st.sampled_from(metrics.fields_used()), ODD_VALUES,
                                 max_size=3))
def test_compiled_deltas_equal_the_rules_applied_one_by_one(
        event: tuple[str, dict[str, Any], str | None], odd: dict[str, Any]) -> None:
    """metrics.deltas (one generated function per member) gives exactly what the rules give
    one by one, for typical values and for any JSON value in the fields the rules read."""
    member, fields, ide = event
    for ev in (fields, {**fields, **odd}):
        try:
            expected: Any = metrics.deltas_reference(member, ev, ide)
        except TypeError as exc:  # an unhashable value compared with a set: both refuse it
            with pytest.raises(TypeError):
                metrics.deltas(member, ev, ide)
            assert "unhashable" in str(exc)
            continue
        assert metrics.deltas(member, ev, ide) == expected


def test_compiled_deltas_cover_every_member_of_a_rule() -> None:
    members = {mem for m in (*METRICS, *metrics.EXTRA) for mem in m.rule.members}
    assert members <= set(metrics._COMPILED)
    assert metrics.deltas("noSuchEvent", {"suggestionState": "ACCEPT"}, None) == ((), None)
