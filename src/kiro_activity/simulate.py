"""Realistic telemetry, shaped exactly like the bodies real IDE clients send.

Used by the demo, the benchmarks and the tests: ``request_body(member, rng, ...)`` builds one
``SendTelemetryEventRequest`` body for any of the 25 members, and ``user_day(rng, ...)`` a plausible
day of one user's requests (mostly inline suggestions, some chat, a few agent features).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from typing import Any

LANGUAGES = ["python", "typescript", "java", "go", "rust", "javascript", "csharp"]
IDES = [("VSCODE", "CodeWhisperer"), ("JETBRAINS", "CodeWhisperer"), ("CLI", "Kiro")]
OSES = ["MAC", "LINUX", "WINDOWS"]
#: relative frequency of each member in a simulated day
WEIGHTS = {
    "userTriggerDecisionEvent": 40, "codeCoverageEvent": 6, "userModificationEvent": 4,
    "chatAddMessageEvent": 10, "chatInteractWithMessageEvent": 6, "chatUserModificationEvent": 2,
    "inlineChatEvent": 4, "metricData": 3, "codeScanEvent": 1, "codeScanSucceededEvent": 1,
    "codeScanFailedEvent": 1, "codeScanRemediationsEvent": 1, "codeFixGenerationEvent": 1,
    "codeFixAcceptanceEvent": 1, "terminalUserInteractionEvent": 1, "featureDevEvent": 1,
    "featureDevCodeGenerationEvent": 1, "featureDevCodeAcceptanceEvent": 1, "transformEvent": 1,
    "docGenerationEvent": 1, "docV2GenerationEvent": 1, "docV2AcceptanceEvent": 1,
    "testGenerationEvent": 1, "kiroChatMessageEvent": 2, "kiroEnterpriseTelemetryEvent": 1,
}


def _id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def member_event(member: str, rng: random.Random, *, user_id: str, ts: float) -> dict[str, Any]:
    """The member object of one event, with every required field and typical optional ones."""
    lang = {"languageName": rng.choice(LANGUAGES)}
    n = rng.randint
    conv, msg, job = _id(rng), _id(rng), _id(rng)
    makers: dict[str, Callable[[], dict[str, Any]]] = {
        "userTriggerDecisionEvent": lambda: {
            "sessionId": _id(rng), "requestId": _id(rng), "programmingLanguage": lang,
            "completionType": rng.choice(["LINE", "BLOCK"]),
            "suggestionState": rng.choices(["ACCEPT", "REJECT", "DISCARD", "EMPTY"],
                                           [3, 4, 2, 1])[0],
            "recommendationLatencyMilliseconds": round(rng.uniform(80, 900), 1), "timestamp": ts,
            "generatedLine": n(1, 12), "acceptedCharacterCount": n(0, 400),
            "numberOfRecommendations": n(1, 5), "suggestionType": "COMPLETIONS",
            "streakLength": n(-1, 9)},
        "codeCoverageEvent": lambda: {
            "programmingLanguage": lang, "acceptedCharacterCount": n(0, 900),
            "totalCharacterCount": n(900, 9000), "timestamp": ts,
            "totalNewCodeLineCount": n(0, 300)},
        "userModificationEvent": lambda: {
            "sessionId": _id(rng), "requestId": _id(rng), "programmingLanguage": lang,
            "modificationPercentage": round(rng.random(), 3), "timestamp": ts,
            "acceptedCharacterCount": n(0, 300), "unmodifiedAcceptedCharacterCount": n(0, 300)},
        "codeScanEvent": lambda: {"programmingLanguage": lang, "codeScanJobId": job,
                                  "timestamp": ts, "codeAnalysisScope": "PROJECT"},
        "codeScanSucceededEvent": lambda: {"programmingLanguage": lang, "codeScanJobId": job,
                                           "timestamp": ts, "numberOfFindings": n(0, 20),
                                           "codeAnalysisScope": "FILE"},
        "codeScanFailedEvent": lambda: {"programmingLanguage": lang, "codeScanJobId": job,
                                        "timestamp": ts},
        "codeScanRemediationsEvent": lambda: {
            "programmingLanguage": lang, "CodeScanRemediationsEventType": "CODESCAN_ISSUE_HOVER",
            "timestamp": ts, "includesFix": rng.random() < 0.5},
        "codeFixGenerationEvent": lambda: {"jobId": job, "programmingLanguage": lang,
                                           "linesOfCodeGenerated": n(1, 40),
                                           "charsOfCodeGenerated": n(10, 2000)},
        "codeFixAcceptanceEvent": lambda: {"jobId": job, "programmingLanguage": lang,
                                           "linesOfCodeAccepted": n(1, 40),
                                           "charsOfCodeAccepted": n(10, 2000)},
        "metricData": lambda: {"metricName": "Session_Duration", "metricValue": rng.random() * 1e3,
                               "timestamp": ts, "product": "CodeWhisperer",
                               "dimensions": [{"name": "os", "value": "mac"}]},
        "chatAddMessageEvent": lambda: {
            "conversationId": conv, "messageId": msg, "userIntent": "EXPLAIN_CODE_SELECTION",
            "hasCodeSnippet": rng.random() < 0.5, "programmingLanguage": lang,
            "timeToFirstChunkMilliseconds": round(rng.uniform(200, 2000), 1),
            "timeBetweenChunks": [round(rng.uniform(5, 80), 1) for _ in range(n(0, 8))],
            "requestLength": n(10, 4000), "responseLength": n(10, 8000),
            "numberOfCodeBlocks": n(0, 4), "result": "SUCCEEDED"},
        "chatInteractWithMessageEvent": lambda: {
            "conversationId": conv, "messageId": msg,
            "interactionType": rng.choice(["INSERT_AT_CURSOR", "COPY_SNIPPET", "UPVOTE",
                                           "DOWNVOTE", "AGENTIC_CODE_ACCEPTED", "CLICK_LINK"]),
            "acceptedCharacterCount": n(0, 900), "acceptedLineCount": n(0, 40),
            "programmingLanguage": lang},
        "chatUserModificationEvent": lambda: {"conversationId": conv, "messageId": msg,
                                              "modificationPercentage": round(rng.random(), 3)},
        "terminalUserInteractionEvent": lambda: {
            "terminalUserInteractionEventType": "CODEWHISPERER_TERMINAL_COMPLETION_INSERTED",
            "terminal": "iTerm", "shell": "zsh", "duration": n(0, 5000),
            "isCompletionAccepted": True},
        "featureDevEvent": lambda: {"conversationId": conv},
        "featureDevCodeGenerationEvent": lambda: {"conversationId": conv,
                                                  "linesOfCodeGenerated": n(5, 400),
                                                  "charactersOfCodeGenerated": n(100, 9000),
                                                  "programmingLanguage": lang},
        "featureDevCodeAcceptanceEvent": lambda: {"conversationId": conv,
                                                  "linesOfCodeAccepted": n(5, 400),
                                                  "charactersOfCodeAccepted": n(100, 9000)},
        "inlineChatEvent": lambda: {
            "requestId": _id(rng), "timestamp": ts, "inputLength": n(5, 200),
            "numSuggestionAddLines": n(0, 30), "numSuggestionDelLines": n(0, 10),
            "numSuggestionAddChars": n(0, 900), "numSuggestionDelChars": n(0, 300),
            "userDecision": rng.choice(["ACCEPT", "REJECT", "DISMISS"]),
            "responseStartLatency": round(rng.uniform(100, 900), 1), "programmingLanguage": lang},
        "transformEvent": lambda: {"jobId": job, "timestamp": ts,
                                   "linesOfCodeChanged": n(10, 5000),
                                   "linesOfCodeSubmitted": n(100, 50000)},
        "docGenerationEvent": lambda: {"conversationId": conv, "numberOfAddLines": n(1, 90),
                                       "userDecision": "ACCEPT",
                                       "interactionType": "GENERATE_README"},
        "docV2GenerationEvent": lambda: {"conversationId": conv,
                                         "numberOfGeneratedChars": n(100, 9000),
                                         "numberOfGeneratedLines": n(5, 300),
                                         "numberOfGeneratedFiles": n(1, 3)},
        "docV2AcceptanceEvent": lambda: {
            "conversationId": conv, "numberOfAddedChars": n(100, 9000),
            "numberOfAddedLines": n(5, 300), "numberOfAddedFiles": n(1, 3),
            "userDecision": rng.choice(["ACCEPT", "REJECT"]),
            "interactionType": rng.choice(["GENERATE_README", "UPDATE_README", "EDIT_README"]),
            "numberOfNavigations": n(0, 5), "folderLevel": "ENTIRE_WORKSPACE"},
        "testGenerationEvent": lambda: {
            "jobId": job, "groupName": "tests-" + job[:8], "timestamp": ts,
            "programmingLanguage": lang, "numberOfUnitTestCasesGenerated": n(1, 20),
            "numberOfUnitTestCasesAccepted": n(0, 20), "linesOfCodeGenerated": n(10, 600),
            "linesOfCodeAccepted": n(0, 600)},
        "kiroChatMessageEvent": lambda: {
            "messageId": msg, "conversationId": conv, "origin": "IDE", "userId": user_id,
            "date": "2026-11-30", "subscriptionTier": "PRO", "chatAgentMode": "vibe",
            "creditsUsed": round(rng.random() * 3, 2)},
        "kiroEnterpriseTelemetryEvent": lambda: {
            "messageId": msg, "conversationId": conv, "origin": "IDE", "userId": user_id,
            "date": "2026-11-30", "chatMessages": n(1, 30), "codeBlocksGenerated": n(0, 10),
            "creditsUsed": round(rng.random() * 3, 2)},
    }
    return makers[member]()


def request_body(member: str, rng: random.Random, *, user_id: str = "user", ts: float = 0.0,
                 profile_arn: str | None = None, client_token: bool = True) -> dict[str, Any]:
    """A whole SendTelemetryEventRequest body for ``member``, as an SDK would build it."""
    ide, product = rng.choice(IDES)
    body: dict[str, Any] = {
        "telemetryEvent": {member: member_event(member, rng, user_id=user_id, ts=ts)},
        "optOutPreference": "OPTIN",
        "userContext": {"ideCategory": ide, "operatingSystem": rng.choice(OSES),
                        "product": product, "clientId": _id(rng)},
    }
    if client_token:
        body["clientToken"] = _id(rng)
    if profile_arn:
        body["profileArn"] = profile_arn
    return body


def user_day(rng: random.Random, *, user_id: str, day_start: float, n_events: int,
             profile_arn: str | None = None) -> list[dict[str, Any]]:
    """``n_events`` request bodies of one user spread over the day starting at ``day_start``."""
    members = rng.choices(list(WEIGHTS), list(WEIGHTS.values()), k=n_events)
    times = sorted(day_start + rng.uniform(8 * 3600, 19 * 3600) for _ in members)
    return [request_body(m, rng, user_id=user_id, ts=round(t, 3), profile_arn=profile_arn)
            for m, t in zip(members, times, strict=True)]
