"""SIGKILL of a real ``kiro-activity report run`` at every phase of a delivery to moto's S3
server: after planning, after each object landed (before the ledger heard of it), after the
ledger noted it, and before the drop is marked done. Run again, the bucket must hold exactly the
planned objects, byte-identical to the ledger's frozen drop and to a run that was never killed
(the manifest differing only in the time it was made), and nothing else.

The process kills itself at the phase named by ``KIRO_ACTIVITY_TEST_KILL_AT`` (daily.kill_point):
a real SIGKILL at an exact point, with no exception handler or ``finally`` running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest

from conftest import ACCOUNT, REGION, setup_accounts
from kiro_activity import location, settings, store
from kiro_activity.config import Config
from kiro_activity.demo import free_port
from kiro_activity.landing import LandingLog, LandingRecord

DAY = date(2026, 11, 30)
NOON = datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()
USERS = 2_500  # three parts and the manifest: objects 0..3
PHASES = ["planned", "put-0", "recorded-0", "put-1", "recorded-1", "put-2", "recorded-2",
          "put-3", "recorded-3", "before-done"]


def prepare(data: Path, s3: Any, bucket: str) -> None:
    config = Config(data_dir=data)
    setup_accounts(data)
    log = LandingLog(config.landing_db, clock=lambda: NOON)
    body = orjson.dumps({"telemetryEvent": {"inlineChatEvent": {
        "requestId": "r", "timestamp": 1.0, "userDecision": "ACCEPT",
        "numSuggestionAddLines": 4}}})
    try:
        log.append_sync([LandingRecord(ACCOUNT, f"user{i:05d}", "inlineChatEvent", None, None,
                                       None, None, "test", body) for i in range(USERS)])
    finally:
        log.close()
    s3.create_bucket(Bucket=bucket)
    conn = store.connect(config.control_db)
    s3.put_bucket_policy(Bucket=bucket, Policy=orjson.dumps(location.documented_policy(
        bucket, "reports", store.require_account(conn, ACCOUNT))).decode())
    settings.update(conn, ACCOUNT, {"enabled": True, "s3_uri": f"s3://{bucket}/reports/"},
                    actor="test", now=NOON, today=DAY, writer=config.writer_principal)
    conn.close()


def report_run(data: Path, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KIRO_ACTIVITY_DATA_DIR": str(data)}
    env.pop("KIRO_ACTIVITY_TEST_KILL_AT", None)
    if kill_at:
        env["KIRO_ACTIVITY_TEST_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "kiro_activity", "report", "run", "--account",
                           ACCOUNT, "--date", DAY.isoformat()], capture_output=True, text=True,
                          env=env, timeout=120)


def bucket_objects(s3: Any, bucket: str, archive: bool = False) -> dict[str, bytes]:
    """The report objects in the bucket (or, with ``archive``, the telemetry archive's, which
    the serving process puts beside them)."""
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed
            if ("/telemetry_archive/" in o["Key"]) == archive}


def planned(data: Path) -> dict[str, bytes]:
    conn = store.connect(Config(data_dir=data).control_db)
    try:
        return {k: bytes(d) for k, d in conn.execute(
            "SELECT key, data FROM drop_objects WHERE account_id = ? AND day = ?",
            (ACCOUNT, DAY.isoformat()))}
    finally:
        conn.close()


def comparable(objects: dict[str, bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, data in objects.items():
        if key.endswith(".json"):
            doc = orjson.loads(data)
            doc.pop("generated_at")
            out[key] = doc
        else:
            out[key] = data
    return out


def test_sigkill_at_every_phase_of_a_delivery(tmp_path: Path, aws_env: None, moto_url: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    s3 = boto3.session.Session().client("s3", region_name=REGION)
    stamp = time.time_ns()
    prepare(tmp_path / "reference", s3, f"kiro-kill-ref-{stamp}")
    assert report_run(tmp_path / "reference").returncode == 0
    reference = bucket_objects(s3, f"kiro-kill-ref-{stamp}")
    assert len(reference) == 4
    kills = mismatched = extra = missing = 0
    for phase in PHASES:
        data, bucket = tmp_path / phase, f"kiro-kill-{phase}-{stamp}"
        prepare(data, s3, bucket)
        killed = report_run(data, phase)
        assert killed.returncode == -signal.SIGKILL, (phase, killed.returncode, killed.stderr)
        kills += 1
        resumed = report_run(data)
        assert resumed.returncode == 0, (phase, resumed.stderr)
        got, frozen = bucket_objects(s3, bucket), planned(data)
        extra += len(set(got) - set(frozen))
        missing += len(set(frozen) - set(got))
        mismatched += sum(got.get(k) != v for k, v in frozen.items())
        # the same drop as a run never killed: keys and bytes (the manifest's time aside)
        mismatched += comparable(got) != comparable(reference)
        again = report_run(data)  # and a third run changes nothing
        assert again.returncode == 0 and bucket_objects(s3, bucket) == got
    print(f"kill-delivery: kills={kills} phases={len(PHASES)} objects={len(reference)} "
          f"extra={extra} missing={missing} mismatched={mismatched}")
    assert (extra, missing, mismatched) == (0, 0, 0)


def _serve(data: Path, clock_start: str, kill_at: str | None = None) -> subprocess.Popen[bytes]:
    """``kiro-activity serve`` with its schedule on and its clock started at ``clock_start``."""
    env = {**os.environ, "KIRO_ACTIVITY_DATA_DIR": str(data)}
    env.pop("KIRO_ACTIVITY_TEST_KILL_AT", None)
    if kill_at:
        env["KIRO_ACTIVITY_TEST_KILL_AT"] = kill_at
    return subprocess.Popen(
        [sys.executable, "-m", "kiro_activity", "serve", "--port", str(free_port()),
         "--fake-clock-start", clock_start], env=env)


def _delivered(data: Path) -> bool:
    conn = store.connect(Config(data_dir=data).control_db)
    try:
        return conn.execute("SELECT delivered_at FROM drops WHERE account_id = ? AND day = ?",
                            (ACCOUNT, DAY.isoformat())).fetchone() not in (None, (None,))
    finally:
        conn.close()


def test_sigkill_of_the_serving_process_at_every_phase_of_its_midnight_delivery(
        tmp_path: Path, aws_env: None, moto_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same phases, in ``serve``: its schedule delivers the day at midnight (an injected
    clock started just before it) and the process is SIGKILLed there; started again after
    midnight, it catches up at once, and the bucket holds exactly the planned drop."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    s3 = boto3.session.Session().client("s3", region_name=REGION)
    stamp = time.time_ns()
    prepare(tmp_path / "reference", s3, f"kiro-skill-ref-{stamp}")
    assert report_run(tmp_path / "reference").returncode == 0
    reference = bucket_objects(s3, f"kiro-skill-ref-{stamp}")
    kills = mismatched = extra = missing = 0
    for phase in PHASES:
        data, bucket = tmp_path / phase, f"kiro-skill-{phase}-{stamp}"
        prepare(data, s3, bucket)
        proc = _serve(data, "2026-11-30T23:59:59+00:00", phase)
        try:
            assert proc.wait(90) == -signal.SIGKILL, phase  # killed by its midnight delivery
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        kills += 1
        proc = _serve(data, "2026-12-01T00:05:00+00:00")
        try:
            deadline = time.monotonic() + 60
            while not _delivered(data) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _delivered(data), phase
        finally:
            proc.terminate()
            assert proc.wait(30) in (0, -signal.SIGTERM)
        got, frozen = bucket_objects(s3, bucket), planned(data)
        extra += len(set(got) - set(frozen))
        missing += len(set(frozen) - set(got))
        mismatched += sum(got.get(k) != v for k, v in frozen.items())
        mismatched += comparable(got) != comparable(reference)
    print(f"kill-serve: kills={kills} phases={len(PHASES)} objects={len(reference)} "
          f"extra={extra} missing={missing} mismatched={mismatched}")
    assert (extra, missing, mismatched) == (0, 0, 0)
