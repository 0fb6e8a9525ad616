"""The report and settings commands, run as real processes."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson

from conftest import ACCOUNT, cli, setup_accounts
from kiro_activity.config import Config
from kiro_activity.landing import LandingLog, LandingRecord
from kiro_activity.metrics import header


def seed(data: Path, day: date, users: list[str]) -> None:
    at = datetime(day.year, day.month, day.day, 15, tzinfo=UTC).timestamp()
    log = LandingLog(Config(data_dir=data).landing_db, clock=lambda: at)
    body = orjson.dumps({"telemetryEvent": {"inlineChatEvent": {
        "requestId": "r", "timestamp": 1.0, "userDecision": "ACCEPT", "numSuggestionAddLines": 4}}})
    try:
        log.append_sync([LandingRecord(ACCOUNT, u, "inlineChatEvent", None, None, None, None,
                                       "test", body) for u in users])
    finally:
        log.close()


def test_settings_build_run_backfill_status(tmp_path: Path) -> None:
    data = tmp_path / "data"
    setup_accounts(data)
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    today = yesterday + timedelta(days=1)
    seed(data, yesterday, ["bob", "alice"])
    seed(data, today, ["carol"])

    bad = cli(data, "settings", "set", ACCOUNT, "--s3-uri", "s3://bucket-only", "--sse",
              "aws:kms")
    assert bad.returncode == 1
    assert "prefix is required" in bad.stderr and "kms-key-arn" in bad.stderr
    shown = json.loads(cli(data, "settings", "show", ACCOUNT, "--json").stdout)
    assert shown["enabled"] is False and shown["s3_uri"] is None  # nothing was saved
    ok = cli(data, "settings", "set", ACCOUNT, "--enable", "--layout", "delivered")
    assert ok.returncode == 0, ok.stderr

    # build: any day, today so far included, without delivering
    out = tmp_path / "out"
    built = cli(data, "report", "build", "--account", ACCOUNT, "--date", today.isoformat(),
                "--out", str(out))
    assert built.returncode == 0, built.stderr
    paths = [Path(p) for p in built.stdout.split()]
    assert all(p.is_relative_to(out / "AWSLogs") for p in paths)
    manifest = json.loads(next(p for p in paths if p.suffix == ".json").read_text())
    assert manifest["partial"] is True and manifest["users"] == 1
    assert not (data / "reports").exists()

    # run: a closed day, delivered to the local folder; a second run changes nothing
    refused = cli(data, "report", "run", "--account", ACCOUNT, "--date", today.isoformat())
    assert refused.returncode == 1 and "not closed" in refused.stderr
    run = cli(data, "report", "run", "--account", ACCOUNT, "--date", yesterday.isoformat())
    assert run.returncode == 0, run.stderr
    assert [line.split("\t")[0] for line in run.stdout.splitlines()] == ["created", "created"]
    csv_path = next((data / "reports").rglob("*_report.csv"))
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text(), newline="")))
    assert list(rows[0]) == header("delivered")
    assert [r["UserId"] for r in rows] == ["alice", "bob"]
    assert rows[0]["InlineChat_AcceptedLineAdditions"] == "4"
    again = cli(data, "report", "run", "--account", ACCOUNT, "--date", yesterday.isoformat())
    assert again.returncode == 0 and "already delivered" in again.stderr

    back = cli(data, "report", "backfill", "--account", ACCOUNT, "--from",
               (yesterday - timedelta(days=2)).isoformat(), "--to", yesterday.isoformat())
    assert back.returncode == 0, back.stderr
    assert [line.split("\t")[1] for line in back.stdout.splitlines()] == [
        "delivered", "delivered", "already_delivered"]
    status = json.loads(cli(data, "report", "status", "--account", ACCOUNT, "--json").stdout)
    assert [d["state"] for d in status["days"]] == ["delivered"] * 3
    assert status["last_error"] is None

    replaced = cli(data, "report", "run", "--account", ACCOUNT, "--date", yesterday.isoformat(),
                   "--replace")
    assert replaced.returncode == 0
    assert {line.split("\t")[0] for line in replaced.stdout.splitlines()} == {"replaced"}


def test_report_errors_are_clear(tmp_path: Path) -> None:
    data = tmp_path / "data"
    setup_accounts(data)
    for args, needle in [
        (("report", "run", "--account", ACCOUNT, "--date", "2026-13-01"), "YYYY-MM-DD"),
        (("report", "status", "--account", "999999999999"), "does not exist"),
        (("report", "backfill", "--account", ACCOUNT, "--from", "2026-11-03", "--to",
          "2026-11-01"), "before"),
        (("settings", "set", ACCOUNT, "--kms-key-arn", "alias/x", "--sse", "aws:kms"),
         "aliases are refused"),
    ]:
        out = cli(data, *args)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert needle in out.stderr and "Traceback" not in out.stderr
