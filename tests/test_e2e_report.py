"""End to end: telemetry over HTTP in the real shapes for several users and accounts, the
service's clock carried past midnight, and the delivered objects read back from moto's S3 server
and compared with values worked out by hand for every one of the 44 columns."""

from __future__ import annotations

import csv
import io
import json
import os
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import boto3
import httpx
import orjson
import pytest

from conftest import ACCOUNT, OTHER_ACCOUNT, PROFILE, TARGET, Server, setup_accounts
from kiro_activity import location, metrics, settings, store
from kiro_activity.demo import free_port

DAY = date(2026, 11, 30)
LANG = {"languageName": "python"}
UC = {"ideCategory": "VSCODE", "operatingSystem": "LINUX", "product": "CodeWhisperer"}


def ev(member: str, **fields: Any) -> dict[str, Any]:
    return {"telemetryEvent": {member: fields}, "clientToken": str(uuid.uuid4()),
            "userContext": dict(UC), "profileArn": PROFILE}


def utd(state: str, lines: int | None = None) -> dict[str, Any]:
    f: dict[str, Any] = {"sessionId": str(uuid.uuid4()), "requestId": str(uuid.uuid4()),
                         "programmingLanguage": LANG, "completionType": "LINE",
                         "suggestionState": state, "recommendationLatencyMilliseconds": 120.5,
                         "timestamp": 1764547100.5}
    if lines is not None:
        f["generatedLine"] = lines
    return ev("userTriggerDecisionEvent", **f)


def ciw(kind: str, msg: str, lines: int = 0) -> dict[str, Any]:
    return ev("chatInteractWithMessageEvent", conversationId="c1", messageId=msg,
              interactionType=kind, acceptedLineCount=lines)


def doc_acc(decision: str, kind: str, files: int, lines: int) -> dict[str, Any]:
    return ev("docV2AcceptanceEvent", conversationId="d", numberOfAddedChars=10,
              numberOfAddedLines=lines, numberOfAddedFiles=files, userDecision=decision,
              interactionType=kind, numberOfNavigations=1, folderLevel="ENTIRE_WORKSPACE")


def inline_chat(decision: str, add: int, delete: int) -> dict[str, Any]:
    return ev("inlineChatEvent", requestId=str(uuid.uuid4()), timestamp=1764547100.0,
              userDecision=decision, numSuggestionAddLines=add, numSuggestionDelLines=delete)


def alice_events() -> list[dict[str, Any]]:
    cli_transform = ev("transformEvent", jobId="j2", linesOfCodeChanged=999,
                       linesOfCodeSubmitted=999)
    cli_transform["userContext"]["ideCategory"] = "CLI"
    return [
        utd("ACCEPT", 3), utd("ACCEPT", 2), utd("REJECT", 5), utd("DISCARD", 7),
        ev("chatAddMessageEvent", conversationId="c1", messageId="m1"),
        ev("chatAddMessageEvent", conversationId="c1", messageId="m2"),
        ciw("INSERT_AT_CURSOR", "m1", 10), ciw("UPVOTE", "m1"), ciw("COPY_SNIPPET", "m2"),
        ciw("DOWNVOTE", "m3"),
        ev("codeFixGenerationEvent", jobId="f", linesOfCodeGenerated=12),
        ev("codeFixAcceptanceEvent", jobId="f", linesOfCodeAccepted=7),
        ev("codeScanSucceededEvent", programmingLanguage=LANG, codeScanJobId="s",
           timestamp=1764547100.0, numberOfFindings=4),
        ev("codeScanFailedEvent", programmingLanguage=LANG, codeScanJobId="s2",
           timestamp=1764547100.0),
        ev("featureDevCodeGenerationEvent", conversationId="dv", linesOfCodeGenerated=40,
           charactersOfCodeGenerated=900),
        ev("featureDevCodeAcceptanceEvent", conversationId="dv", linesOfCodeAccepted=30,
           charactersOfCodeAccepted=700),
        ev("docV2GenerationEvent", conversationId="d", numberOfGeneratedChars=1,
           numberOfGeneratedLines=1, numberOfGeneratedFiles=1),
        ev("docGenerationEvent", conversationId="d", userDecision="ACCEPT"),
        doc_acc("ACCEPT", "GENERATE_README", 1, 20), doc_acc("ACCEPT", "UPDATE_README", 2, 6),
        doc_acc("REJECT", "GENERATE_README", 1, 9), doc_acc("REJECT", "EDIT_README", 3, 4),
        inline_chat("ACCEPT", 5, 1), inline_chat("REJECT", 2, 2), inline_chat("DISMISS", 8, 3),
        ev("testGenerationEvent", jobId=str(uuid.uuid4()), groupName="g",
           numberOfUnitTestCasesGenerated=5, numberOfUnitTestCasesAccepted=3,
           linesOfCodeGenerated=50, linesOfCodeAccepted=30),
        ev("transformEvent", jobId="j1", linesOfCodeChanged=100, linesOfCodeSubmitted=1000),
        cli_transform,
    ]


ALICE = {  # worked out by hand from alice_events()
    "Chat_AICodeLines": 10, "Chat_MessagesInteracted": 2, "Chat_MessagesSent": 2,
    "CodeFix_AcceptanceEventCount": 1, "CodeFix_AcceptedLines": 7, "CodeFix_GeneratedLines": 12,
    "CodeFix_GenerationEventCount": 1, "CodeReview_FailedEventCount": 1,
    "CodeReview_FindingsCount": 4, "CodeReview_SucceededEventCount": 1,
    "Dev_AcceptanceEventCount": 1, "Dev_AcceptedLines": 30, "Dev_GeneratedLines": 40,
    "Dev_GenerationEventCount": 1, "DocGeneration_AcceptedFileUpdates": 2,
    "DocGeneration_AcceptedFilesCreations": 1, "DocGeneration_AcceptedLineAdditions": 20,
    "DocGeneration_AcceptedLineUpdates": 6, "DocGeneration_EventCount": 2,
    "DocGeneration_RejectedFileCreations": 1, "DocGeneration_RejectedFileUpdates": 3,
    "DocGeneration_RejectedLineAdditions": 9, "DocGeneration_RejectedLineUpdates": 4,
    "InlineChat_AcceptanceEventCount": 1, "InlineChat_AcceptedLineAdditions": 5,
    "InlineChat_AcceptedLineDeletions": 1, "InlineChat_DismissalEventCount": 1,
    "InlineChat_DismissedLineAdditions": 8, "InlineChat_DismissedLineDeletions": 3,
    "InlineChat_EventCount": 3, "InlineChat_RejectedLineAdditions": 2,
    "InlineChat_RejectedLineDeletions": 2, "InlineChat_RejectionEventCount": 1,
    "Inline_AICodeLines": 5, "Inline_AcceptanceCount": 2, "Inline_SuggestionsCount": 3,
    "TestGeneration_AcceptedLines": 30, "TestGeneration_AcceptedTests": 3,
    "TestGeneration_EventCount": 1, "TestGeneration_GeneratedLines": 50,
    "TestGeneration_GeneratedTests": 5, "Transformation_EventCount": 1,
    "Transformation_LinesGenerated": 100, "Transformation_LinesIngested": 1000,
}


def send(server: Server, user: str, bodies: list[dict[str, Any]], account: str = ACCOUNT,
         ) -> None:
    with server.client(user, account) as client:
        for i, body in enumerate(bodies):
            if account != ACCOUNT:
                body.pop("profileArn", None)
            raw = orjson.dumps(body)
            if i % 2:
                r = client.post("/SendTelemetryEvent", content=raw,
                                headers={"Content-Type": "application/json"})
            else:
                r = client.post("/", content=raw, headers={
                    "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": TARGET})
            assert r.status_code == 200, r.text


def read_csv(s3: Any, bucket: str, key: str) -> list[dict[str, str]]:
    data = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return list(csv.DictReader(io.StringIO(data, newline="")))


def test_reports_delivered_at_midnight(tmp_path: Path, aws_env: None, moto_url: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    s3 = boto3.session.Session().client("s3", region_name="us-east-1")
    buckets = {ACCOUNT: f"kiro-e2e-a-{uuid.uuid4().hex[:8]}",
               OTHER_ACCOUNT: f"kiro-e2e-b-{uuid.uuid4().hex[:8]}"}
    s3.create_bucket(Bucket=buckets[ACCOUNT])
    s3.create_bucket(Bucket=buckets[OTHER_ACCOUNT],  # in the Region of that account's profile
                     CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    data = tmp_path / "data"
    setup_accounts(data)
    conn = store.connect(data / "control.db")
    for account_id, prefix, layout in [(ACCOUNT, "user-activity-reports", "documented"),
                                       (OTHER_ACCOUNT, "reports", "delivered")]:
        account = store.require_account(conn, account_id)
        policy = location.documented_policy(buckets[account_id], prefix, account)
        s3.put_bucket_policy(Bucket=buckets[account_id], Policy=json.dumps(policy))
        _, report = settings.update(
            conn, account_id, {"enabled": True, "layout": layout,
                               "s3_uri": f"s3://{buckets[account_id]}/{prefix}/"},
            actor="test", now=0, today=DAY, writer="q.amazonaws.com")
        assert report.warnings == [], report.warnings
    conn.close()
    start = datetime(2026, 11, 30, 23, 59, 50, tzinfo=UTC)
    server = Server(data_dir=data, port=free_port(),
                    extra=("--fake-clock-start", start.isoformat()))
    assert os.environ["AWS_ENDPOINT_URL_S3"] == moto_url
    server.start()
    started = time.monotonic()
    try:
        events = alice_events()
        send(server, "alice", [*events, events[0]])  # a retry of the first send: counted once
        send(server, "bob", [ev("metricData", metricName="x", metricValue=1.0,
                                timestamp=1764547100.0, product="p")])
        send(server, "carol", [inline_chat("ACCEPT", 1, 1), inline_chat("REJECT", 1, 1)],
             account=OTHER_ACCOUNT)
        assert time.monotonic() - started < 9, "too slow to send before the fake midnight"
        time.sleep(max(0.0, 10.5 - (time.monotonic() - started)))  # now past 00:00 UTC
        send(server, "dave", [utd("ACCEPT", 1)])  # 1 December: not in the 30 November report
        prefix = f"user-activity-reports/AWSLogs/{ACCOUNT}/KiroLogs/"
        manifest = (f"{prefix}by_user_analytic_manifest/us-east-1/2026/11/30/"
                    f"{ACCOUNT}_manifest_202611300000.json")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listed = s3.list_objects_v2(Bucket=buckets[ACCOUNT]).get("Contents", [])
            if any(o["Key"] == manifest for o in listed):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the report was not delivered after midnight")
        key = (f"{prefix}by_user_analytic/us-east-1/2026/11/30/00/"
               f"{ACCOUNT}_by_user_analytic_202611300000.csv")
        rows = read_csv(s3, buckets[ACCOUNT], key)
        assert [r["UserId"] for r in rows] == ["alice", "bob"]
        assert list(rows[0]) == metrics.header("documented")
        assert rows[0]["Date"] == rows[1]["Date"] == "11-30-2026"
        assert {k: int(v) for k, v in rows[0].items() if k not in ("UserId", "Date")} == ALICE
        assert all(rows[1][m.name] == "0" for m in metrics.METRICS)
        man = orjson.loads(s3.get_object(Bucket=buckets[ACCOUNT], Key=manifest)["Body"].read())
        assert (man["users"], man["events"], man["partial"]) == (2, 29, False)
        # the other account: its own bucket, its own layout, nothing of the first account
        other = f"reports/AWSLogs/{OTHER_ACCOUNT}/KiroLogs/"
        deadline = time.monotonic() + 30
        okey = (f"{other}by_user_analytic/eu-west-1/2026/11/30/00/"
                f"{OTHER_ACCOUNT}_by_user_analytic_202611300000_report.csv")
        while time.monotonic() < deadline:
            listed = s3.list_objects_v2(Bucket=buckets[OTHER_ACCOUNT]).get("Contents", [])
            if any(o["Key"] == okey for o in listed):
                break
            time.sleep(0.2)
        orows = read_csv(s3, buckets[OTHER_ACCOUNT], okey)
        assert [r["UserId"] for r in orows] == ["carol"]
        assert orows[0]["InlineChat_TotalEventCount"] == "2"
        assert orows[0]["InlineChat_AcceptanceEventCount"] == "1"
        assert all(o["Key"].startswith(other) for o in
                   s3.list_objects_v2(Bucket=buckets[OTHER_ACCOUNT])["Contents"])
        status = httpx.get(f"{server.url}/health").json()
        assert status["status"] == "ok"
    finally:
        server.stop()
        s3.close()
