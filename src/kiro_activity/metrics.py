"""The 44 metrics of the per-user activity report, kept once, as data.

Each :class:`Metric` has the documented name, the documented meaning and its rule (which events,
which filter, count / sum / distinct). Everything else is derived from :data:`METRICS`: the CSV
header of both layouts, ``metrics.json``, the docs (``docs/metrics.md``), the DuckDB query of
:mod:`.aggregate` and the pure-Python evaluator below that the tests hold it to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Agg = Literal["count", "sum", "distinct"]
#: the largest amount one event adds to a summed metric: the validator refuses larger integers
#: (:mod:`.events`), and events stored before that bound are clamped to it, by the counters and
#: by the DuckDB rebuild alike, so that both give the same numbers
AMOUNT_MAX = 2**31 - 1
#: the largest value of a metric cell (a signed 64-bit integer): sums saturate there instead of
#: overflowing; out of reach with bounded amounts (it takes 2**32 events of one user-day)
SUM_MAX = 2**63 - 1
LAYOUTS = ("documented", "delivered")
#: the layout of a new account: the delivered objects' column names, order and file names, which
#: the importers of these reports read (by name, or by position in that order); `documented`
#: gives them wrong numbers without an error (one column renamed, four read shifted)
DEFAULT_LAYOUT = "delivered"
#: the ``Date`` cell, as in the real objects: month first (``12-02-2026`` is 2 December).
#: Readers that guess the format take it for 12 February when day and month are both <= 12, so
#: the manifest and metrics.json name it, for strptime/DuckDB/pandas and for Athena
DATE_FORMAT = "%m-%d-%Y"
DATE_FORMAT_ATHENA = "MM-dd-yyyy"
#: the only column that differs between the layouts
RENAMED = {"delivered": {"InlineChat_EventCount": "InlineChat_TotalEventCount"}}


@dataclass(frozen=True)
class Rule:
    """Which events count and how: ``agg`` over ``members`` where every ``where`` holds."""

    members: tuple[str, ...]
    agg: Agg = "count"
    field: str | None = None  # the summed field (agg "sum")
    where: tuple[tuple[str, frozenset[str]], ...] = ()  # field IN values, all of them
    distinct_on: tuple[str, ...] = ()  # agg "distinct": count distinct tuples of these fields
    not_cli: bool = False  # only events not from the command line

    def text(self) -> str:
        """The rule in words, for the docs and metrics.json."""
        parts = [" or ".join(f"`{m}`" for m in self.members)]
        parts += [f"`{f}` in {{{', '.join(sorted(v))}}}" for f, v in self.where]
        if self.not_cli:
            parts.append("not from the command line (ideCategory is not CLI)")
        what = {"count": "count",
                "sum": f"sum of `{self.field}`",
                "distinct": f"number of distinct ({', '.join(self.distinct_on)})"}[self.agg]
        return f"{what} of {' where '.join(parts[:1])}" + (
            f" where {' and '.join(parts[1:])}" if parts[1:] else "")


@dataclass(frozen=True)
class Metric:
    name: str
    description: str
    rule: Rule = field(repr=False)


def _in(name: str, *values: str) -> tuple[str, frozenset[str]]:
    return (name, frozenset(values))


CHAT_IWM = ("chatInteractWithMessageEvent",)
POSITIVE = ("INSERT_AT_CURSOR", "COPY_SNIPPET", "COPY", "CLICK_LINK", "CLICK_BODY_LINK",
            "CLICK_FOLLOW_UP", "HOVER_REFERENCE", "UPVOTE", "AGENTIC_CODE_ACCEPTED")
DOC_ACC = ("docV2AcceptanceEvent",)
UPDATES = ("UPDATE_README", "EDIT_README")
INLINE_CHAT = ("inlineChatEvent",)
UTD = ("userTriggerDecisionEvent",)
TESTGEN = ("testGenerationEvent",)
TRANSFORM = ("transformEvent",)


def _doc(decision: str, kinds: tuple[str, ...], fld: str) -> Rule:
    where = (_in("userDecision", decision), _in("interactionType", *kinds))
    return Rule(DOC_ACC, "sum", fld, where)


def _ic(decision: str, agg: Agg = "count", fld: str | None = None) -> Rule:
    return Rule(INLINE_CHAT, agg, fld, (_in("userDecision", decision),))


METRICS: tuple[Metric, ...] = (
    Metric("Chat_AICodeLines", "Lines of code suggested in chat (not inline chat) and accepted "
           "(inserted into the IDE)",
           Rule(CHAT_IWM, "sum", "acceptedLineCount",
                (_in("interactionType", "INSERT_AT_CURSOR", "AGENTIC_CODE_ACCEPTED"),))),
    Metric("Chat_MessagesInteracted", "Chat messages the user interacted with positively "
           "(clicked a link, inserted a suggestion, upvoted…)",
           Rule(CHAT_IWM, "distinct", where=(_in("interactionType", *POSITIVE),),
                distinct_on=("conversationId", "messageId"))),
    Metric("Chat_MessagesSent", "Messages sent to and from the assistant in chat",
           Rule(("chatAddMessageEvent",))),
    Metric("CodeFix_AcceptanceEventCount", "Code fixes (code review feature) accepted",
           Rule(("codeFixAcceptanceEvent",))),
    Metric("CodeFix_AcceptedLines", "Lines of code-fix code accepted",
           Rule(("codeFixAcceptanceEvent",), "sum", "linesOfCodeAccepted")),
    Metric("CodeFix_GeneratedLines", "Lines of code-fix code suggested",
           Rule(("codeFixGenerationEvent",), "sum", "linesOfCodeGenerated")),
    Metric("CodeFix_GenerationEventCount", "Code fixes suggested",
           Rule(("codeFixGenerationEvent",))),
    Metric("CodeReview_FailedEventCount", "Code review runs that found issues it could not fix",
           Rule(("codeScanFailedEvent",))),
    Metric("CodeReview_FindingsCount", "Code issues found by code review",
           Rule(("codeScanSucceededEvent",), "sum", "numberOfFindings")),
    Metric("CodeReview_SucceededEventCount", "Code review runs that completed with suggested fixes",
           Rule(("codeScanSucceededEvent",))),
    Metric("Dev_AcceptanceEventCount", "/dev features accepted",
           Rule(("featureDevCodeAcceptanceEvent",))),
    Metric("Dev_AcceptedLines", "/dev lines accepted",
           Rule(("featureDevCodeAcceptanceEvent",), "sum", "linesOfCodeAccepted")),
    Metric("Dev_GeneratedLines", "/dev lines suggested",
           Rule(("featureDevCodeGenerationEvent",), "sum", "linesOfCodeGenerated")),
    Metric("Dev_GenerationEventCount", "/dev features suggested",
           Rule(("featureDevCodeGenerationEvent",))),
    Metric("DocGeneration_AcceptedFileUpdates", "/doc file updates accepted",
           _doc("ACCEPT", UPDATES, "numberOfAddedFiles")),
    Metric("DocGeneration_AcceptedFilesCreations", "/doc file creations accepted",
           _doc("ACCEPT", ("GENERATE_README",), "numberOfAddedFiles")),
    Metric("DocGeneration_AcceptedLineAdditions", "/doc line additions accepted",
           _doc("ACCEPT", ("GENERATE_README",), "numberOfAddedLines")),
    Metric("DocGeneration_AcceptedLineUpdates", "/doc line updates accepted",
           _doc("ACCEPT", UPDATES, "numberOfAddedLines")),
    Metric("DocGeneration_EventCount", "Times the user used /doc",
           Rule(("docV2GenerationEvent", "docGenerationEvent"))),
    Metric("DocGeneration_RejectedFileCreations", "/doc file creations rejected",
           _doc("REJECT", ("GENERATE_README",), "numberOfAddedFiles")),
    Metric("DocGeneration_RejectedFileUpdates", "/doc file updates rejected",
           _doc("REJECT", UPDATES, "numberOfAddedFiles")),
    Metric("DocGeneration_RejectedLineAdditions", "/doc line additions rejected",
           _doc("REJECT", ("GENERATE_README",), "numberOfAddedLines")),
    Metric("DocGeneration_RejectedLineUpdates", "/doc line updates rejected",
           _doc("REJECT", UPDATES, "numberOfAddedLines")),
    Metric("InlineChat_AcceptanceEventCount", "Inline chat suggestions accepted", _ic("ACCEPT")),
    Metric("InlineChat_AcceptedLineAdditions", "Inline chat line additions accepted",
           _ic("ACCEPT", "sum", "numSuggestionAddLines")),
    Metric("InlineChat_AcceptedLineDeletions", "Inline chat line deletions accepted",
           _ic("ACCEPT", "sum", "numSuggestionDelLines")),
    Metric("InlineChat_DismissalEventCount", "Inline chat suggestions abandoned (shown, neither "
           "accepted nor rejected)", _ic("DISMISS")),
    Metric("InlineChat_DismissedLineAdditions", "Inline chat line additions abandoned",
           _ic("DISMISS", "sum", "numSuggestionAddLines")),
    Metric("InlineChat_DismissedLineDeletions", "Inline chat line deletions abandoned",
           _ic("DISMISS", "sum", "numSuggestionDelLines")),
    Metric("InlineChat_EventCount", "Inline chat sessions", Rule(INLINE_CHAT)),
    Metric("InlineChat_RejectedLineAdditions", "Inline chat line additions rejected",
           _ic("REJECT", "sum", "numSuggestionAddLines")),
    Metric("InlineChat_RejectedLineDeletions", "Inline chat line deletions rejected",
           _ic("REJECT", "sum", "numSuggestionDelLines")),
    Metric("InlineChat_RejectionEventCount", "Inline chat suggestions rejected", _ic("REJECT")),
    Metric("Inline_AICodeLines", "Lines of inline suggestions accepted",
           Rule(UTD, "sum", "generatedLine", (_in("suggestionState", "ACCEPT"),))),
    Metric("Inline_AcceptanceCount", "Inline suggestions accepted",
           Rule(UTD, where=(_in("suggestionState", "ACCEPT"),))),
    Metric("Inline_SuggestionsCount", "Inline suggestions displayed to the user",
           Rule(UTD, where=(_in("suggestionState", "ACCEPT", "REJECT"),))),
    Metric("TestGeneration_AcceptedLines", "/test lines accepted",
           Rule(TESTGEN, "sum", "linesOfCodeAccepted")),
    Metric("TestGeneration_AcceptedTests", "/test unit tests accepted",
           Rule(TESTGEN, "sum", "numberOfUnitTestCasesAccepted")),
    Metric("TestGeneration_EventCount", "Times the user used /test", Rule(TESTGEN)),
    Metric("TestGeneration_GeneratedLines", "/test lines suggested",
           Rule(TESTGEN, "sum", "linesOfCodeGenerated")),
    Metric("TestGeneration_GeneratedTests", "/test unit tests suggested",
           Rule(TESTGEN, "sum", "numberOfUnitTestCasesGenerated")),
    Metric("Transformation_EventCount", "Times the user used /transform, excluding command-line "
           "transformations", Rule(TRANSFORM, not_cli=True)),
    Metric("Transformation_LinesGenerated", "/transform lines suggested, excluding command line",
           Rule(TRANSFORM, "sum", "linesOfCodeChanged", not_cli=True)),
    Metric("Transformation_LinesIngested", "/transform lines provided for transformation, "
           "excluding command line", Rule(TRANSFORM, "sum", "linesOfCodeSubmitted", not_cli=True)),
)
INDEX = {m.name: i for i, m in enumerate(METRICS)}

#: figures the dashboard shows beside the 44 that the report does not carry (same rule form);
#: the counters keep them only in the breakdown table, after the events column
EXTRA: tuple[Metric, ...] = (
    Metric("Inline_SuggestedLines", "Lines of inline suggestions displayed to the user "
           "(accepted or rejected): the denominator of the inline acceptance rate by lines",
           Rule(UTD, "sum", "generatedLine", (_in("suggestionState", "ACCEPT", "REJECT"),))),
)
#: the index of the first EXTRA figure in an amounts tuple: after the 44 and the events count
EXTRA_BASE = len(METRICS) + 1


@dataclass(frozen=True)
class Rate:
    """A derived figure: the sum of ``numerator`` figures over the sum of ``denominator``."""

    name: str
    label: str
    numerator: tuple[str, ...]
    denominator: tuple[str, ...]

    def formula(self) -> str:
        return f"({' + '.join(self.numerator)}) / ({' + '.join(self.denominator)})"

    def of(self, values: Mapping[str, int]) -> float | None:
        """The rate, or None when the denominator is 0 (nothing to rate)."""
        below = sum(values[n] for n in self.denominator)
        return sum(values[n] for n in self.numerator) / below if below else None


RATES: tuple[Rate, ...] = (
    Rate("inline_acceptance_rate", "Inline acceptance rate (suggestions)",
         ("Inline_AcceptanceCount",), ("Inline_SuggestionsCount",)),
    Rate("inline_line_acceptance_rate", "Inline acceptance rate (lines)",
         ("Inline_AICodeLines",), ("Inline_SuggestedLines",)),
    Rate("inline_chat_acceptance_rate", "Inline chat acceptance rate",
         ("InlineChat_AcceptanceEventCount",),
         ("InlineChat_AcceptanceEventCount", "InlineChat_RejectionEventCount",
          "InlineChat_DismissalEventCount")),
    Rate("dev_line_acceptance_rate", "/dev acceptance rate (lines)",
         ("Dev_AcceptedLines",), ("Dev_GeneratedLines",)),
    Rate("test_line_acceptance_rate", "/test acceptance rate (lines)",
         ("TestGeneration_AcceptedLines",), ("TestGeneration_GeneratedLines",)),
    Rate("code_fix_line_acceptance_rate", "Code fix acceptance rate (lines)",
         ("CodeFix_AcceptedLines",), ("CodeFix_GeneratedLines",)),
)
#: the AI-written lines accepted, per feature: (label, the metrics summed)
AI_LINES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Inline", ("Inline_AICodeLines",)),
    ("Chat", ("Chat_AICodeLines",)),
    ("Inline chat", ("InlineChat_AcceptedLineAdditions",)),
    ("/dev", ("Dev_AcceptedLines",)),
    ("/test", ("TestGeneration_AcceptedLines",)),
    ("/doc", ("DocGeneration_AcceptedLineAdditions", "DocGeneration_AcceptedLineUpdates")),
    ("Code fix", ("CodeFix_AcceptedLines",)),
    ("/transform (generated)", ("Transformation_LinesGenerated",)),
)


def metric_columns(layout: str = DEFAULT_LAYOUT) -> list[str]:
    """The metric columns of a layout, each its own name there, sorted by code point."""
    renamed = RENAMED.get(layout, {})
    return sorted(renamed.get(m.name, m.name) for m in METRICS)


def column_metric(layout: str = DEFAULT_LAYOUT) -> list[str]:
    """For each metric column of the layout (in order), the metric's canonical name."""
    back = {v: k for k, v in RENAMED.get(layout, {}).items()}
    return [back.get(c, c) for c in metric_columns(layout)]


def column_order(layout: str = DEFAULT_LAYOUT) -> list[int]:
    """For each metric column of the layout, its index in METRICS."""
    return [INDEX[name] for name in column_metric(layout)]


def header(layout: str = DEFAULT_LAYOUT) -> list[str]:
    return ["UserId", "Date", *metric_columns(layout)]


def numeric_fields() -> list[str]:
    """The event fields some rule sums."""
    return sorted({m.rule.field for m in METRICS if m.rule.field})


def text_fields() -> list[str]:
    """The event fields some rule filters on or counts distinct values of."""
    return sorted({f for m in METRICS for f, _ in m.rule.where}
                  | {f for m in METRICS for f in m.rule.distinct_on})


def fields_used() -> list[str]:
    """Every event field that some rule reads (for the aggregation's projection)."""
    return sorted({*numeric_fields(), *text_fields()})


def definitions() -> dict[str, Any]:
    """The content of ``metrics.json``."""
    return {
        "version": 1,
        "layouts": {layout: header(layout) for layout in LAYOUTS},
        "default_layout": DEFAULT_LAYOUT,
        "date": {"column": "Date", "format": DATE_FORMAT, "athena": DATE_FORMAT_ATHENA},
        "metrics": [{"name": m.name, "description": m.description, "rule": m.rule.text(),
                     "members": list(m.rule.members), "aggregation": m.rule.agg}
                    for m in METRICS],
    }


def definitions_json() -> bytes:
    return orjson.dumps(definitions(), option=orjson.OPT_INDENT_2) + b"\n"


def docs_markdown() -> str:
    """``docs/metrics.md``, generated from the table (a test keeps the file in step)."""
    lines = ["# The 44 metrics", "",
             "Generated from `kiro_activity.metrics.METRICS` by "
             "`kiro-activity metrics --markdown`; do not edit by hand.", "",
             "| metric | meaning | rule |", "|---|---|---|"]
    lines += [f"| `{m.name}` | {m.description} | {m.rule.text()} |" for m in METRICS]
    lines += ["", "## Dashboard figures beside the 44", "",
              "The usage dashboard also counts these (they are not in the report's CSV):", "",
              "| figure | meaning | rule |", "|---|---|---|"]
    lines += [f"| `{m.name}` | {m.description} | {m.rule.text()} |" for m in EXTRA]
    lines += ["", "Its rates (shown as - when the denominator is 0):", "",
              "| rate | formula |", "|---|---|"]
    lines += [f"| {r.label} | `{r.formula()}` |" for r in RATES]
    return "\n".join(lines) + "\n"


# The reference evaluator: the rules applied in plain Python, one user-day at a time. The report
# uses DuckDB (see aggregate.py); tests prove both give the same numbers.

def _matches(rule: Rule, member: str, event: Mapping[str, Any], ide_category: str | None) -> bool:
    if member not in rule.members:
        return False
    if rule.not_cli and ide_category == "CLI":
        return False
    return all(event.get(f) in values for f, values in rule.where)


def evaluate(events: Iterable[tuple[str, Mapping[str, Any], str | None]]) -> dict[str, int]:
    """The 44 metrics of one user-day from (member, member object, ideCategory) triples."""
    events = list(events)
    out: dict[str, int] = {}
    for m in METRICS:
        r = m.rule
        hits = [e for mem, e, ide in events if _matches(r, mem, e, ide)]
        if r.agg == "count":
            out[m.name] = len(hits)
        elif r.agg == "sum":
            out[m.name] = min(sum(_int(e.get(r.field or "")) for e in hits), SUM_MAX)
        else:
            out[m.name] = len({tuple(_key(e.get(f)) for f in r.distinct_on) for e in hits})
    return out


def _int(value: Any) -> int:
    """The amount of a summed field: JSON numbers only, at most :data:`AMOUNT_MAX`."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if value > AMOUNT_MAX:
        return AMOUNT_MAX
    return int(value)


def _key(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# Incremental form of the same rules: what one event adds to its user-day's counters. The landing
# log keeps those counters as events are committed, so a day's report costs in proportion to its
# users, not its events; tests prove it equal to the rebuild from raw events.

DISTINCT = tuple(i for i, m in enumerate(METRICS) if m.rule.agg == "distinct")
_BY_MEMBER: dict[str, list[tuple[int, Rule]]] = {}
for _i, _m in [*enumerate(METRICS), *enumerate(EXTRA, EXTRA_BASE)]:
    if _m.rule.agg != "distinct":
        for _member in _m.rule.members:
            _BY_MEMBER.setdefault(_member, []).append((_i, _m.rule))
_DISTINCT_RULE = METRICS[DISTINCT[0]].rule


def deltas_reference(member: str, event: Mapping[str, Any], ide_category: str | None,
                     ) -> tuple[tuple[tuple[int, int], ...], tuple[str | None, ...] | None]:
    """(metric index, amount) pairs this event adds, and its distinct key if it has one: the
    rules applied one by one, as written. :func:`deltas` is the same, compiled per member."""
    out = []
    for index, rule in _BY_MEMBER.get(member, ()):
        if _matches(rule, member, event, ide_category):
            amount = 1 if rule.agg == "count" else _int(event.get(rule.field or ""))
            if amount:
                out.append((index, amount))
    key = None
    if _matches(_DISTINCT_RULE, member, event, ide_category):
        key = tuple(_key(event.get(f)) for f in _DISTINCT_RULE.distinct_on)
    return tuple(out), key


# Each member's rules as one generated Python function (a chain of plain ifs, each field read
# once), so that an event costs one call and a few lookups instead of a walk over the rules:
# 5.4 -> ~1 us for a userTriggerDecisionEvent (bench/RESULTS.md). tests/test_metrics.py holds
# it equal to deltas_reference on generated events of every member.
Deltas = tuple[tuple[tuple[int, int], ...], tuple[str | None, ...] | None]


def _compile(member: str) -> Any:
    rules = [*_BY_MEMBER.get(member, ())]
    consts: dict[str, Any] = {"_int": _int, "_key": _key}
    names: dict[str, str] = {}

    def read(name: str) -> str:  # the event's field, read once into a local
        if name not in names:
            names[name] = f"v{len(names)}"
            body.append(f"    {names[name]} = get({name!r})")
        return names[name]

    body: list[str] = []
    tests: list[tuple[list[str], str]] = []
    for index, rule in rules:
        conds = ['ide != "CLI"'] if rule.not_cli else []
        for f, values in rule.where:
            consts[f"w{len(consts)}"] = values
            conds.append(f"{read(f)} in w{len(consts) - 1}")
        if rule.agg == "count":
            tests.append((conds, f"out.append(({index}, 1))"))
        else:
            tests.append((conds, f"a = _int({read(rule.field or '')})\n"
                                 f"        if a:\n            out.append(({index}, a))"))
    d = _DISTINCT_RULE
    distinct = member in d.members
    if distinct:
        dconds = ['ide != "CLI"'] if d.not_cli else []
        for f, values in d.where:
            consts[f"w{len(consts)}"] = values
            dconds.append(f"{read(f)} in w{len(consts) - 1}")
        dkeys = [f"_key({read(f)})" for f in d.distinct_on]
    lines = ["def deltas(event, ide):", "    get = event.get", "    out = []", *body]
    for conds, action in tests:
        lines.append(f"    if {' and '.join(conds) or 'True'}:")
        lines.append(f"        {action}")
    if distinct:
        lines.append(f"    if {' and '.join(dconds) or 'True'}:")
        lines.append(f"        return tuple(out), ({', '.join(dkeys)},)")
    lines.append("    return tuple(out), None")
    exec("\n".join(lines), consts)  # the source is built above from METRICS, never from input
    return consts["deltas"]


def _none(event: Mapping[str, Any], ide: str | None) -> Deltas:
    return (), None


_COMPILED: dict[str, Callable[[Mapping[str, Any], str | None], Deltas]] = {
    m: _compile(m) for m in {*_BY_MEMBER, *_DISTINCT_RULE.members}}


def deltas(member: str, event: Mapping[str, Any], ide_category: str | None) -> Deltas:
    """(metric index, amount) pairs this event adds, and its distinct key if it has one."""
    return _COMPILED.get(member, _none)(event, ide_category)
