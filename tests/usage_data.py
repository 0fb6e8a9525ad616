"""A small fixed data set for the dashboard's tests, with its figures worked out by hand.

Two closed days and today, two accounts. In account 111122223333:

- 2026-11-28: alice, in VS Code (python), sends three inline decisions: ACCEPT of 4 lines,
  ACCEPT of 2 lines, REJECT of 5 lines; and one chat message from JetBrains (no language).
  bob, in JetBrains (java), rejects one inline suggestion of 3 lines.
- 2026-11-29: bob, in VS Code (typescript), inserts a chat answer of 7 lines into his code
  twice (the same conversation and message: one message interacted with, 14 lines).
- 2026-11-30 (today, noon): alice sends one chat message (VS Code).
- carol holds a telemetry token and sends nothing: an idle seat.
- "=dave" (a user id a spreadsheet would read as a formula) accepts one inline suggestion of
  1 line on 2026-11-29 in VS Code (python).

The other account's user mallory sends 50 inline acceptances on 2026-11-28: none of them may
show up in the first account.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, date, datetime
from typing import Any

import orjson

from conftest import ACCOUNT, OTHER_ACCOUNT, PROFILE
from kiro_activity import events, store
from kiro_activity.config import Config
from kiro_activity.landing import LandingLog, LandingRecord

D1, D2, TODAY = date(2026, 11, 28), date(2026, 11, 29), date(2026, 11, 30)
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()


def _ctx(ide: str) -> dict[str, str]:
    return {"ideCategory": ide, "operatingSystem": "LINUX", "product": "CodeWhisperer"}


def utd(state: str, lines: int, ide: str, lang: str) -> dict[str, Any]:
    return {"telemetryEvent": {"userTriggerDecisionEvent": {
        "sessionId": str(uuid.uuid4()), "requestId": str(uuid.uuid4()),
        "programmingLanguage": {"languageName": lang}, "completionType": "LINE",
        "suggestionState": state, "recommendationLatencyMilliseconds": 100.0,
        "timestamp": 1764547100.5, "generatedLine": lines}},
        "clientToken": str(uuid.uuid4()), "userContext": _ctx(ide)}


def chat(ide: str) -> dict[str, Any]:
    return {"telemetryEvent": {"chatAddMessageEvent": {"conversationId": "c0",
                                                       "messageId": str(uuid.uuid4())}},
            "clientToken": str(uuid.uuid4()), "userContext": _ctx(ide)}


def insert(lines: int, ide: str, lang: str) -> dict[str, Any]:
    return {"telemetryEvent": {"chatInteractWithMessageEvent": {
        "conversationId": "c1", "messageId": "m1", "interactionType": "INSERT_AT_CURSOR",
        "acceptedLineCount": lines, "programmingLanguage": {"languageName": lang}}},
        "clientToken": str(uuid.uuid4()), "userContext": _ctx(ide), "profileArn": PROFILE}


SENT: list[tuple[date, str, str, dict[str, Any]]] = [
    (D1, ACCOUNT, "alice", utd("ACCEPT", 4, "VSCODE", "python")),
    (D1, ACCOUNT, "alice", utd("ACCEPT", 2, "VSCODE", "python")),
    (D1, ACCOUNT, "alice", utd("REJECT", 5, "VSCODE", "python")),
    (D1, ACCOUNT, "alice", chat("JETBRAINS")),
    (D1, ACCOUNT, "bob", utd("REJECT", 3, "JETBRAINS", "java")),
    (D2, ACCOUNT, "bob", insert(7, "VSCODE", "typescript")),
    (D2, ACCOUNT, "bob", insert(7, "VSCODE", "typescript")),
    (D2, ACCOUNT, "=dave", utd("ACCEPT", 1, "VSCODE", "python")),
    (TODAY, ACCOUNT, "alice", chat("VSCODE")),
    *[(D1, OTHER_ACCOUNT, "mallory", utd("ACCEPT", 9, "VSCODE", "python"))] * 50,
]


def record(account: str, user: str, body: dict[str, Any]) -> LandingRecord:
    raw = orjson.dumps(body)
    req = events.parse_request(raw)
    return LandingRecord(account, user, req.member, req.client_token, req.opt_out,
                         req.client_timestamp, req.ide_category, "test", raw)


def seed(config: Config) -> None:
    """Store the data set (at noon of each day) and issue the users' telemetry tokens."""
    for day in (D1, D2, TODAY):
        noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()
        log = LandingLog(config.landing_db, clock=lambda noon=noon: noon)
        try:
            log.append_sync([record(a, u, b) for d, a, u, b in SENT if d == day])
        finally:
            log.close()
    conn = store.connect(config.control_db)
    store.issue_tokens(conn, ACCOUNT, ["alice", "bob", "carol", "=dave"], now=time.time(),
                       actor="test")
    store.issue_tokens(conn, OTHER_ACCOUNT, ["mallory"], now=time.time(), actor="test")
    conn.close()
