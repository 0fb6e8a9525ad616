"""Validation of the ``SendTelemetryEvent`` body (the wire protocol: docs/protocol.md).

Strict on structure, lenient on values: an object whose ``telemetryEvent`` holds exactly one of the
25 members; required fields present (JSON ``null`` = absent) with the right JSON type; integers
integral and in range; numbers finite. Enum values and id lengths are not checked; unknown fields
are kept. Every problem is listed in one ``ValidationError``. The members are kept once, as data
(``_TABLE`` -> ``MEMBERS``); both validators and ``openapi_components()`` derive from it:
``validate_request``, in Python, which names every problem, and ``validate_compiled`` (#11),
msgspec types generated from the table that check a body in one call in C, accept only what the
Python validator accepts and leave every other body to it (so a refusal's message is always the
Python validator's). ``parse_request`` runs the compiled one, and the Python one only for a body
the compiled one leaves.

Speed (``python bench/decode.py``: medians of timeit runs, CPython 3.11, a loaded 2-vCPU VM
where ``orjson.loads`` of the example takes ~2 us): ``parse_request`` of a typical body
(userTriggerDecisionEvent + userContext + profileArn) ~7.5 us, 1.7x the speed of the Python path
in the same run (12.8 us; 15-19 us before #11, with TelemetryRequest a frozen dataclass);
``validate_compiled`` of it ~2.6 us, ``validate_request`` ~5.3 us; a chatAddMessageEvent with 50
timeBetweenChunks ~7.8 us (1.3-1.6x); 200 diagnostics (11 KB) ~88 us (1.8x; ``orjson.loads``
takes ~45 us of it); the bodies of a simulated day 1.75-2.2x (bench/RESULTS.md).
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from types import GenericAlias
from typing import Annotated, Any, Final, Literal, TypeGuard, get_args

import msgspec
import orjson

from kiro_activity.errors import ValidationError
from kiro_activity.jsonkeys import duplicate_key
from kiro_activity.metrics import AMOUNT_MAX

Kind = Literal[
    "str", "count", "int_min_neg1", "number", "bool", "lang",
    "str_list", "num_list", "obj_list", "dimensions",
]  # fmt: skip
_KINDS: Final[tuple[Kind, ...]] = get_args(Kind)


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One member field: JSON ``kind``, ``required`` flag and, for lists, ``max_len``."""

    name: str
    kind: Kind
    required: bool = False
    max_len: int | None = None


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """One ``TelemetryEvent`` member and its fields, in the clients' service-model order."""

    name: str
    fields: tuple[FieldSpec, ...]

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.required)


# The 25 members: a line per member (continued by indented lines), then field tokens
# ``name[*][:kind[:max_len]]``; ``*`` = required, kind defaults to ``str``.
# Kind decisions where the clients' service model does not type a field (the typing rules are
# in docs/protocol.md):
# - ``timestamp`` -> number (epoch seconds, may be fractional); ``date`` -> str (YYYY-MM-DD).
# - lengths/counts -> count: ``generatedLine``, ``inputLength``, ``requestLength``,
#   ``responseLength``, ``activeEditorTotalCharacters``, ``numSelectedLines``, ``numSuggestion…``.
# - durations are integers: terminalUserInteractionEvent ``duration`` and ``timeToSuggestion``
#   (ms), ``chatMessageDuration`` -> count.
# - latencies -> number: ``…LatencyMilliseconds``, ``timeToFirstChunkMilliseconds``,
#   ``fullResponselatency``, ``responseStartLatency``, ``responseEndLatency``.
# - ``overageCap``, ``creditsUsed``, ``overageCreditsUsed`` -> number.
# - ``chatAgentMode``/``chatAutonomyMode`` are modes, not ``chat…`` counters -> str;
#   ``chatMessages…``, ``chatConversationsTrusted`` -> count.
# - kiroEnterpriseTelemetryEvent ``codeBlocksGenerated``/``codeBlocksInserted``/``contextFiles``/
#   ``specsImplemented`` read as counters -> count.
# - ``added/removedIdeDiagnostics``: real clients send lists of ``IdeDiagnostic`` objects
#   (``{ideDiagnosticType, severity?, source?, range?}``), not strings -> ``obj_list`` (items must
#   be objects; their contents are values, not checked), max 1024 in both members.
# - metricData ``dimensions`` items: ``name``/``value`` strings when present (both optional in
#   the service model).
# - integer fields (counts, lengths, durations) are capped at 2**31-1 (``AMOUNT_MAX``): a day's
#   sum of them must fit a signed 64-bit counter however many events the day holds (it would
#   take 2**32 events of one user-day to reach 2**63); integers in numbers at 2**63-1.
_TABLE: Final = """
userTriggerDecisionEvent: sessionId* requestId* programmingLanguage*:lang completionType*
    suggestionState* recommendationLatencyMilliseconds*:number timestamp*:number customizationArn
    triggerToResponseLatencyMilliseconds:number suggestionReferenceCount:count generatedLine:count
    numberOfRecommendations:count perceivedLatencyMilliseconds:number acceptedCharacterCount:count
    addedIdeDiagnostics:obj_list:1024 removedIdeDiagnostics:obj_list:1024 addedCharacterCount:count
    deletedCharacterCount:count streakLength:int_min_neg1 suggestionType userDecisionReason
codeCoverageEvent: programmingLanguage*:lang acceptedCharacterCount*:count
    totalCharacterCount*:count timestamp*:number customizationArn
    unmodifiedAcceptedCharacterCount:count totalNewCodeCharacterCount:count
    totalNewCodeLineCount:count userWrittenCodeCharacterCount:count userWrittenCodeLineCount:count
    addedCharacterCount:count
userModificationEvent: sessionId* requestId* programmingLanguage*:lang
    modificationPercentage*:number timestamp*:number acceptedCharacterCount*:count
    unmodifiedAcceptedCharacterCount*:count customizationArn addedCharacterCount:count
    unmodifiedAddedCharacterCount:count
codeScanEvent: programmingLanguage*:lang codeScanJobId* timestamp*:number codeAnalysisScope
codeScanSucceededEvent: programmingLanguage*:lang codeScanJobId* timestamp*:number
    numberOfFindings*:count codeAnalysisScope
codeScanFailedEvent: programmingLanguage*:lang codeScanJobId* timestamp*:number codeAnalysisScope
codeScanRemediationsEvent: programmingLanguage:lang CodeScanRemediationsEventType timestamp:number
    detectorId findingId ruleId component reason result includesFix:bool
codeFixGenerationEvent: jobId* ruleId detectorId findingId programmingLanguage:lang
    linesOfCodeGenerated:count charsOfCodeGenerated:count
codeFixAcceptanceEvent: jobId* ruleId detectorId findingId programmingLanguage:lang
    linesOfCodeAccepted:count charsOfCodeAccepted:count
metricData: metricName* metricValue*:number timestamp*:number product* dimensions:dimensions:30
chatAddMessageEvent: conversationId* messageId* customizationArn userIntent hasCodeSnippet:bool
    programmingLanguage:lang activeEditorTotalCharacters:count timeToFirstChunkMilliseconds:number
    timeBetweenChunks:num_list:100 fullResponselatency:number requestLength:count
    responseLength:count numberOfCodeBlocks:count hasProjectLevelContext:bool result
chatInteractWithMessageEvent: conversationId* messageId* customizationArn interactionType
    interactionTarget acceptedCharacterCount:count acceptedLineCount:count
    acceptedSnippetHasReference:bool hasProjectLevelContext:bool userIntent
    addedIdeDiagnostics:obj_list:1024 removedIdeDiagnostics:obj_list:1024 programmingLanguage:lang
chatUserModificationEvent: conversationId* messageId* modificationPercentage*:number
    customizationArn programmingLanguage:lang hasProjectLevelContext:bool
terminalUserInteractionEvent: terminalUserInteractionEventType terminal terminalVersion shell
    shellVersion duration:count timeToSuggestion:count isCompletionAccepted:bool cliToolCommand
featureDevEvent: conversationId*
featureDevCodeGenerationEvent: conversationId* linesOfCodeGenerated*:count
    charactersOfCodeGenerated*:count programmingLanguage:lang
featureDevCodeAcceptanceEvent: conversationId* linesOfCodeAccepted*:count
    charactersOfCodeAccepted*:count programmingLanguage:lang
inlineChatEvent: requestId* timestamp*:number inputLength:count numSelectedLines:count
    numSuggestionAddChars:count numSuggestionAddLines:count numSuggestionDelChars:count
    numSuggestionDelLines:count codeIntent:bool userDecision responseStartLatency:number
    responseEndLatency:number programmingLanguage:lang
transformEvent: jobId* timestamp:number ideCategory programmingLanguage:lang
    linesOfCodeChanged:count charsOfCodeChanged:count linesOfCodeSubmitted:count
docGenerationEvent: conversationId* numberOfAddChars:count numberOfAddLines:count
    numberOfAddFiles:count userDecision interactionType userIdentity numberOfNavigation:count
    folderLevel
docV2GenerationEvent: conversationId* numberOfGeneratedChars*:count numberOfGeneratedLines*:count
    numberOfGeneratedFiles*:count interactionType numberOfNavigations:count folderLevel
docV2AcceptanceEvent: conversationId* numberOfAddedChars*:count numberOfAddedLines*:count
    numberOfAddedFiles*:count userDecision* interactionType* numberOfNavigations*:count
    folderLevel*
testGenerationEvent: jobId* groupName* timestamp:number ideCategory programmingLanguage:lang
    numberOfUnitTestCasesGenerated:count numberOfUnitTestCasesAccepted:count
    linesOfCodeGenerated:count linesOfCodeAccepted:count charsOfCodeGenerated:count
    charsOfCodeAccepted:count
kiroChatMessageEvent: messageId* conversationId* origin* userId* date* subscriptionTier
    overageEnabled:bool overageCap:number profileId newUser:bool chatAgentMode chatAutonomyMode
    chatMessageDuration:count modelId creditsUsed:number overageCreditsUsed:number
kiroEnterpriseTelemetryEvent: messageId* conversationId* origin* userId* date* subscriptionTier
    overageEnabled:bool overageCap:number profileId newUser:bool chatMessagesVibe:count
    chatMessagesSpec:count chatMessagesOthers:count chatMessages:count chatMessageDuration:count
    chatConversationsTrusted:count codeBlocksGenerated:count codeBlocksInserted:count
    contextFiles:count specsImplemented:count modelId creditsUsed:number overageCreditsUsed:number
"""


def _field(token: str) -> FieldSpec:
    name, _, rest = token.partition(":")
    kind_s, _, max_s = rest.partition(":")
    kind = next(k for k in _KINDS if k == (kind_s or "str"))  # StopIteration on a table typo
    return FieldSpec(name.rstrip("*"), kind, name.endswith("*"), int(max_s) if max_s else None)


def _members(table: str) -> dict[str, MemberSpec]:
    out: dict[str, MemberSpec] = {}
    for chunk in re.split(r"\n(?=\S)", table.strip()):
        name, _, tokens = chunk.partition(":")
        out[name] = MemberSpec(name, tuple(_field(t) for t in tokens.split()))
    return out


MEMBERS: Final[dict[str, MemberSpec]] = _members(_TABLE)

# The hot path, built once: per member, its required names, a kind code per field (the fast path
# accepts only surely valid values; anything else goes to ``_check_value``, which decides and
# explains) and the FieldSpecs by name.
_STR, _BOOL, _COUNT, _NEG1, _NUMBER, _LANG, _LIST = range(7)
_CODES: Final = {"str": _STR, "bool": _BOOL, "count": _COUNT, "int_min_neg1": _NEG1,
                 "number": _NUMBER, "lang": _LANG}  # fmt: skip
_COMPILED: Final[dict[str, tuple[tuple[str, ...], dict[str, int], dict[str, FieldSpec]]]] = {
    m: (
        spec.required,
        {f.name: _CODES.get(f.kind, _LIST) for f in spec.fields},
        {f.name: f for f in spec.fields},
    )
    for m, spec in MEMBERS.items()
}
_INT_MAX: Final = 2**63 - 1
_FLOAT_MAX: Final = sys.float_info.max
_INT_MIN: Final = {"count": 0, "int_min_neg1": -1}
_KIRO_USER: Final = frozenset({"kiroChatMessageEvent", "kiroEnterpriseTelemetryEvent"})
_ARN_RE: Final = re.compile(
    r"arn:aws:(?:codewhisperer|transform):([a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}):([0-9]{12})"
    r":profile/[A-Za-z0-9]{12}"
)
_ARN_HELP: Final = (
    "must be arn:aws:(codewhisperer|transform):<region>:<12 digits>:profile/<12 alphanumerics>"
)
_GOOD_ARNS: Final[set[str]] = set()
_TOP_STRS: Final = ("optOutPreference", "modelId")
_UC_REQUIRED: Final = ("ideCategory", "operatingSystem", "product")
_UC_STRS: Final = (*_UC_REQUIRED, "clientId", "ideVersion", "pluginVersion", "lspVersion")
_MAX_MESSAGE: Final = 1000
_MAX_ITEM_PROBLEMS: Final = 10


class TelemetryRequest(msgspec.Struct, frozen=True):
    """A validated ``SendTelemetryEvent`` body (see the module docstring for the rules).

    A frozen msgspec Struct rather than a frozen dataclass: made in C, 0.15 us instead of
    2.4 us (a frozen dataclass sets each field through ``object.__setattr__``)."""

    member: str
    event: dict[str, Any]
    client_token: str | None
    opt_out: str | None
    profile_arn: str | None
    user_id: str | None
    client_timestamp: float | None
    ide_category: str | None


def _show(v: object) -> str:
    """A short JSON-ish rendering of a bad value, for an error message."""
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    if isinstance(v, str):
        s = orjson.dumps(v[:40]).decode() if v[:40].isprintable() else repr(v[:40])
        return s + ("..." if len(v) > 40 else "")
    if isinstance(v, int):
        return repr(v) if abs(v) < 10**30 else "a huge integer"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return f"a list of {len(v)}"
    return type(v).__name__


def _is_int(v: object, lo: int) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return lo <= v <= AMOUNT_MAX
    return isinstance(v, float) and v.is_integer() and lo <= v <= AMOUNT_MAX


def _is_num(v: object) -> TypeGuard[int | float]:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return -_FLOAT_MAX <= v <= _FLOAT_MAX
    return isinstance(v, float) and math.isfinite(v)


def _check_strs(obj: dict[Any, Any], names: tuple[str, ...], required: bool) -> list[str]:
    """Problems (as path suffixes) of the string fields ``names`` of ``obj``; null = absent."""
    out = []
    for name in names:
        v = obj.get(name)
        if v is None:
            if required:
                out.append(f".{name}: required field is missing")
        elif not isinstance(v, str):
            out.append(f".{name}: must be a string, got {_show(v)}")
    return out


def _list_ok(f: FieldSpec, v: list[Any]) -> bool:
    """Fast acceptance of a surely valid number or object list; False means "look closer"."""
    if f.max_len is not None and len(v) > f.max_len:
        return False
    if f.kind == "num_list":
        for x in v:
            t = type(x)
            if not ((t is float and x - x == 0.0) or (t is int and -_INT_MAX <= x <= _INT_MAX)):
                return False
        return True
    return f.kind == "obj_list" and all(type(x) is dict for x in v)


def _check_list(kind: str, v: object, max_len: int | None) -> list[str]:
    if not isinstance(v, list):
        return [f": must be a list, got {_show(v)}"]
    out = []
    if max_len is not None and len(v) > max_len:
        out.append(f": must have at most {max_len} items, got {len(v)}")
    for i, item in enumerate(v):
        if len(out) >= _MAX_ITEM_PROBLEMS:
            break
        if kind == "str_list" and not isinstance(item, str):
            out.append(f"[{i}]: must be a string, got {_show(item)}")
        elif kind == "num_list" and not _is_num(item):
            out.append(f"[{i}]: must be a finite number, got {_show(item)}")
        elif kind in ("obj_list", "dimensions") and not isinstance(item, dict):
            out.append(f"[{i}]: must be an object, got {_show(item)}")
        elif kind == "dimensions":
            out.extend(f"[{i}]{p}" for p in _check_strs(item, ("name", "value"), False))
    return out


def _check_value(f: FieldSpec, v: object) -> list[str]:
    """Problems of one present, non-null value, as path suffixes (``: msg`` or ``.sub: msg``)."""
    kind = f.kind
    if kind == "str":
        return [] if isinstance(v, str) else [f": must be a string, got {_show(v)}"]
    if kind in _INT_MIN:
        lo = _INT_MIN[kind]
        return [] if _is_int(v, lo) else [
            f": must be an integer from {lo} to {AMOUNT_MAX}, got {_show(v)}"]
    if kind == "number":
        return [] if _is_num(v) else [f": must be a finite number, got {_show(v)}"]
    if kind == "bool":
        return [] if isinstance(v, bool) else [f": must be a boolean, got {_show(v)}"]
    if kind == "lang":
        if not isinstance(v, dict):
            return [f': must be an object {{"languageName": string}}, got {_show(v)}']
        return _check_strs(v, ("languageName",), True)
    return _check_list(kind, v, f.max_len)


def _check_member(member: str, ev: dict[str, Any], problems: list[str]) -> None:
    """Append the problems of member object ``ev``; the fast paths accept only valid values."""
    required, codes, specs = _COMPILED[member]
    for name in required:
        if ev.get(name) is None:
            problems.append(f"telemetryEvent.{member}.{name}: required field is missing")
    for name, v in ev.items():
        c = codes.get(name)
        if c is None or v is None:
            continue  # an unknown field (kept as sent), or null = absent
        t = type(v)
        if c == _STR:
            if t is str:
                continue
        elif c == _NUMBER:
            if (t is float and v - v == 0.0) or (t is int and -_INT_MAX <= v <= _INT_MAX):
                continue
        elif c == _COUNT:
            if t is int and 0 <= v <= AMOUNT_MAX:
                continue
        elif c == _LANG:
            if t is dict and type(v.get("languageName")) is str:
                continue
        elif c == _BOOL:
            if t is bool:
                continue
        elif c == _LIST and t is list and _list_ok(specs[name], v):
            continue
        f = specs[name]
        problems.extend(f"telemetryEvent.{member}.{name}{p}" for p in _check_value(f, v))


def _pick_member(te: object, problems: list[str]) -> str | None:
    """The one member key of ``telemetryEvent`` (a key whose value is null counts as absent)."""
    if te is None:
        problems.append("telemetryEvent: required field is missing")
        return None
    if not isinstance(te, dict):
        problems.append(f"telemetryEvent: must be an object, got {_show(te)}")
        return None
    keys = [k for k, v in te.items() if v is not None]
    if len(keys) != 1:
        found = ", ".join(_show(k) for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
        problems.append(
            "telemetryEvent: must have exactly one member, found "
            + (f"{len(keys)}: {found}" if keys else "none")
        )
        return None
    member = keys[0]
    if member not in MEMBERS:
        problems.append(f"telemetryEvent: unknown member {_show(member)}")
        return None
    if not isinstance(te[member], dict):
        problems.append(f"telemetryEvent.{member}: must be an object, got {_show(te[member])}")
        return None
    return str(member)


def _arn_ok(arn: str) -> bool:
    """Whether ``arn`` is a well-formed profile ARN; good ones are remembered (a bounded set)."""
    if arn in _GOOD_ARNS:
        return True
    if len(arn) > 950 or _ARN_RE.fullmatch(arn) is None:
        return False
    if len(_GOOD_ARNS) >= 4096:
        _GOOD_ARNS.clear()
    _GOOD_ARNS.add(arn)
    return True


def _check_top(doc: dict[str, Any], problems: list[str]) -> None:
    """Append the problems of the top-level fields other than ``telemetryEvent``."""
    token = doc.get("clientToken")
    if token is not None and not (isinstance(token, str) and 1 <= len(token) <= 256):
        problems.append(f"clientToken: must be a string of 1..256 characters, got {_show(token)}")
    arn = doc.get("profileArn")
    if arn is not None and not (isinstance(arn, str) and _arn_ok(arn)):
        problems.append(f"profileArn: {_ARN_HELP}, got {_show(arn)}")
    for name in _TOP_STRS:
        v = doc.get(name)
        if v is not None and not isinstance(v, str):
            problems.append(f"{name}: must be a string, got {_show(v)}")
    uc = doc.get("userContext")
    if uc is None:
        return
    if not isinstance(uc, dict):
        problems.append(f"userContext: must be an object, got {_show(uc)}")
        return
    for name in _UC_STRS:
        v = uc.get(name)
        if v is None:
            if name in _UC_REQUIRED:
                problems.append(f"userContext.{name}: required field is missing")
        elif not isinstance(v, str):
            problems.append(f"userContext.{name}: must be a string, got {_show(v)}")


def _fail(problems: list[str]) -> ValidationError:
    """One ValidationError listing ``problems``, its message kept to about 1 KB."""
    head = "invalid SendTelemetryEvent request: "
    shown: list[str] = []
    size = len(head)
    for p in problems:
        item = p if len(p) <= 300 else p[:297] + "..."
        if shown and size + len(item) > _MAX_MESSAGE:
            break
        shown.append(item)
        size += len(item) + 2
    more = len(problems) - len(shown)
    return ValidationError(head + "; ".join(shown) + (f"; and {more} more" if more else ""))


def validate_request(doc: object) -> TelemetryRequest:
    """Validate a parsed ``SendTelemetryEvent`` body; a ValidationError lists every problem."""
    if not isinstance(doc, dict):
        raise _fail([f"request body must be a JSON object, got {_show(doc)}"])
    problems: list[str] = []
    member = _pick_member(doc.get("telemetryEvent"), problems)
    if member is not None:
        ev: dict[str, Any] = doc["telemetryEvent"][member]
        _check_member(member, ev, problems)
    _check_top(doc, problems)
    if problems or member is None:
        raise _fail(problems)
    return _request(member, ev, doc)


def _request(member: str, ev: dict[str, Any], doc: dict[str, Any]) -> TelemetryRequest:
    """The TelemetryRequest of a valid body ``doc`` whose member ``member`` is ``ev`` (both
    validators end here, so they give equal requests)."""
    ts = ev.get("timestamp")
    ide = ev.get("ideCategory")
    if not (type(ide) is str and ide):
        uc = doc.get("userContext")
        ide = uc.get("ideCategory") if uc is not None else None
    return TelemetryRequest(  # positional: member, event, client_token, opt_out, profile_arn,
        member,  # user_id, client_timestamp, ide_category
        ev,
        doc.get("clientToken"),
        doc.get("optOutPreference"),
        doc.get("profileArn"),
        ev.get("userId") if member in _KIRO_USER else None,
        float(ts) if (type(ts) is float and ts - ts == 0.0) or _is_num(ts) else None,
        ide or None,
    )


# --- the compiled validator (#11): msgspec types derived from MEMBERS ---------------------------
# One msgspec type per member, for the whole body: ``msgspec.convert`` checks the parsed body
# against it in one call in C (the structs it builds are thrown away: the request keeps orjson's
# dicts, so both validators give the same event). It accepts only bodies the Python validator
# accepts, and leaves the rest undecided (None) for ``validate_request`` to decide and explain:
# - any body msgspec refuses (the Python validator lists every problem, in its own words);
# - a ``telemetryEvent`` with other keys than the member (null ones, which Python accepts);
# - integral floats in integer fields (``3.0``: Python accepts it, msgspec's ``int`` does not).
# The kinds as msgspec types: str -> ``str``; count/int_min_neg1 -> ``int`` within the range
# (not bool, not float); number -> ``float`` from -max to +max (ints too, not bool, not NaN);
# bool -> ``bool``; lang and dimensions -> structs of their string fields; lists -> ``list``
# with ``max_length``; null -> absent (an optional field's type is ``T | None``, a required
# one's is ``T``). Unknown fields are ignored (kept in the event), as in the Python validator.
# Two rules are checked next to it in Python, both cheaper that way (measured): the profileArn
# pattern (``_arn_ok`` remembers good ARNs; msgspec's ``pattern`` runs the regex every time,
# ~1 us) and that ``obj_list`` items are objects (200 diagnostics: 15 us as structs, 35 us as
# dicts, 7 us as ``list[Any]`` and a count of their types).
# Field names go through ``rename`` (``f0``, ``f1``... -> the wire names), so that any name of
# the table works, keywords included. ``gc=False``: the structs hold no cycles and live briefly.
_FINITE: Final = Annotated[float, msgspec.Meta(ge=-_FLOAT_MAX, le=_FLOAT_MAX)]  # ints pass too
_STRUCT: Final[dict[str, Any]] = {"kw_only": True, "gc": False}
_MS_LANG: Final = msgspec.defstruct("ProgrammingLanguage", [("languageName", str)], **_STRUCT)
_MS_DIMENSION: Final = msgspec.defstruct(
    "Dimension", [("name", str | None, None), ("value", str | None, None)], **_STRUCT)
_MS_USER_CONTEXT: Final = msgspec.defstruct(
    "UserContext",
    [(n, str) if n in _UC_REQUIRED else (n, str | None, None) for n in _UC_STRS],
    **_STRUCT,
)
_MS_SCALAR: Final[dict[str, Any]] = {
    "str": str, "number": _FINITE, "bool": bool, "lang": _MS_LANG,
    **{k: Annotated[int, msgspec.Meta(ge=lo, le=AMOUNT_MAX)] for k, lo in _INT_MIN.items()},
}  # fmt: skip
_MS_ITEM: Final[dict[str, Any]] = {
    "str_list": str, "num_list": _FINITE, "obj_list": Any, "dimensions": _MS_DIMENSION,
}  # fmt: skip
_ANNOTATED: Final[Any] = Annotated  # subscripted with types made at run time (mypy: no types)


def _ms_type(f: FieldSpec) -> Any:
    """The msgspec type of field ``f``'s non-null values."""
    if f.kind in _MS_SCALAR:
        return _MS_SCALAR[f.kind]
    return _ANNOTATED[GenericAlias(list, _MS_ITEM[f.kind]), msgspec.Meta(max_length=f.max_len)]


def _ms_request_type(spec: MemberSpec) -> Any:
    """The msgspec type of a whole body whose ``telemetryEvent`` holds only ``spec``'s member;
    null is absent: an optional field takes null, a required one does not."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        (f"f{i}", _ms_type(f)) if f.required else (f"f{i}", _ms_type(f) | None, None)
        for i, f in enumerate(spec.fields)
    ]
    rename = {f"f{i}": f.name for i, f in enumerate(spec.fields)}
    member = msgspec.defstruct(spec.name, fields, rename=rename, **_STRUCT)
    union = msgspec.defstruct(f"TelemetryEvent_{spec.name}", [("m", member)],  # only the member
                              rename={"m": spec.name}, forbid_unknown_fields=True, **_STRUCT)
    token = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    top: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        ("telemetryEvent", union), ("clientToken", token | None, None),
        ("profileArn", str | None, None), ("userContext", _MS_USER_CONTEXT | None, None),
        *[(n, str | None, None) for n in _TOP_STRS],
    ]  # fmt: skip
    return msgspec.defstruct(f"Request_{spec.name}", top, **_STRUCT)


# per member: its body's msgspec type and its obj_list fields (checked in Python)
_MS_REQUESTS: Final[dict[str, tuple[Any, tuple[str, ...]]]] = {
    m: (_ms_request_type(spec), tuple(f.name for f in spec.fields if f.kind == "obj_list"))
    for m, spec in MEMBERS.items()
}
_convert: Final = msgspec.convert


def validate_compiled(doc: object) -> TelemetryRequest | None:
    """The TelemetryRequest of a body ``doc`` (as orjson parses it) that is surely valid, equal
    to what ``validate_request`` gives; None when undecided: invalid, or beyond the compiled
    rules (see the comment above). For orjson's output only: msgspec takes a tuple for a list,
    which orjson never makes and the Python validator refuses."""
    if type(doc) is not dict:
        return None
    te = doc.get("telemetryEvent")
    if type(te) is not dict or len(te) != 1:
        return None
    (member,) = te
    compiled = _MS_REQUESTS.get(member)
    if compiled is None:
        return None
    request_type, obj_lists = compiled
    try:
        _convert(doc, request_type)
    except msgspec.ValidationError:
        return None
    arn = doc.get("profileArn")
    if arn is not None and arn not in _GOOD_ARNS and not _arn_ok(arn):
        return None
    ev: dict[str, Any] = te[member]
    for name in obj_lists:
        items = ev.get(name)
        if items is not None and [*map(type, items)].count(dict) != len(items):
            return None
    return _request(member, ev, doc)


def parse_request(body: bytes) -> TelemetryRequest:
    """Parse JSON ``body`` with orjson and validate it (:func:`validate_compiled`, and
    :func:`validate_request` for a body it leaves undecided); malformed JSON, or JSON with a key
    repeated in an object (:mod:`.jsonkeys`), is a ValidationError."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ValidationError(f"request body is not valid JSON: {e}") from None
    try:
        repeated = duplicate_key(body, doc)
    except RecursionError:
        raise ValidationError("request body is nested too deeply") from None
    if repeated is not None:
        key, where = repeated
        raise ValidationError(
            f"request body has the key {_show(key)} twice in {where}: each key may appear once"
            " in an object (JSON readers disagree on which value counts)")
    request = validate_compiled(doc)
    return request if request is not None else validate_request(doc)


def parse_profile_arn(arn: str) -> tuple[str, str]:
    """``(region, account_id)`` of a well-formed profile ARN, else ValidationError."""
    m = _ARN_RE.fullmatch(arn) if isinstance(arn, str) and len(arn) <= 950 else None
    if m is None:
        raise ValidationError(f"profileArn: {_ARN_HELP}, got {_show(arn)}")
    return m.group(1), m.group(2)


# --- OpenAPI 3.1 components, derived from MEMBERS -----------------------------------------------
def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _schema_name(member: str) -> str:
    return member[0].upper() + member[1:]


def _field_schema(f: FieldSpec) -> dict[str, Any]:
    if f.kind in _INT_MIN:
        return {"type": "integer", "minimum": _INT_MIN[f.kind], "maximum": AMOUNT_MAX}
    if f.kind == "lang":
        return _ref("ProgrammingLanguage")
    scalar = {"str": "string", "number": "number", "bool": "boolean"}
    if f.kind in scalar:
        return {"type": scalar[f.kind]}
    items = {"str_list": {"type": "string"}, "num_list": {"type": "number"},
             "obj_list": {"type": "object"}, "dimensions": _ref("Dimension")}[f.kind]  # fmt: skip
    return {"type": "array", "items": items, "maxItems": f.max_len}


def _object(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": True}
    if required:
        out["required"] = required
    return out


def openapi_components() -> dict[str, Any]:
    """OpenAPI 3.1 schemas by name (for ``components.schemas``), derived from ``MEMBERS``."""
    s = {"type": "string"}
    schemas: dict[str, Any] = {
        "ProgrammingLanguage": _object({"languageName": s}, ["languageName"]),
        "Dimension": _object({"name": s, "value": s}, []),
        "UserContext": _object({k: s for k in _UC_STRS}, list(_UC_REQUIRED)),
    }
    for name, spec in MEMBERS.items():
        props = {f.name: _field_schema(f) for f in spec.fields}
        schemas[_schema_name(name)] = _object(props, list(spec.required))
    schemas["TelemetryEvent"] = {
        "description": "A union: an object with exactly one member key.",
        "oneOf": [
            {"type": "object", "properties": {m: _ref(_schema_name(m))}, "required": [m],
             "minProperties": 1, "maxProperties": 1}
            for m in MEMBERS
        ],
    }  # fmt: skip
    top = {
        "telemetryEvent": _ref("TelemetryEvent"),
        "clientToken": {"type": "string", "minLength": 1, "maxLength": 256},
        "optOutPreference": {"type": "string", "examples": ["OPTIN", "OPTOUT"]},
        "userContext": _ref("UserContext"),
        "profileArn": {"type": "string", "maxLength": 950, "pattern": f"^{_ARN_RE.pattern}$"},
        "modelId": s,
    }
    schemas["SendTelemetryEventRequest"] = _object(top, ["telemetryEvent"])
    return schemas
