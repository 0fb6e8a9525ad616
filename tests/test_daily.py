"""The delivery ledger and the schedule: plan once, resume after a crash at any point with the
same keys and bytes, ride out an S3 outage, show configuration errors, replace on purpose, and
deliver missed days oldest first."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest

from conftest import ACCOUNT, REGION, free_port, setup_accounts
from kiro_activity import archive, daily, location, settings, store
from kiro_activity.config import Config
from kiro_activity.deliver import Destination, LocalDestination, PutResult
from kiro_activity.landing import LandingLog, LandingRecord
from kiro_activity.schedule import Scheduler, next_midnight

DAY = date(2026, 11, 30)
NOON = datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()
AFTER = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC).timestamp()


def seed(config: Config, users: int, at: float = NOON, member: str = "chatAddMessageEvent") -> None:
    log = LandingLog(config.landing_db, clock=lambda: at)
    body = orjson.dumps({"telemetryEvent": {member: {"conversationId": "c", "messageId": "m"}}})
    try:
        log.append_sync([LandingRecord(ACCOUNT, f"user{i:04d}", member, None, None, None, None,
                                       "test", body) for i in range(users)])
    finally:
        log.close()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    cfg = Config(data_dir=tmp_path / "data")
    setup_accounts(cfg.data_dir)
    return cfg


def enable(config: Config, since: date = DAY, **changes: Any) -> None:
    conn = store.connect(config.control)
    settings.update(conn, ACCOUNT, {"enabled": True, **changes}, actor="test", now=NOON,
                    today=since, writer=config.writer_principal)
    conn.close()


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


class Crash(BaseException):
    """The process dies here (BaseException: nothing catches it on the way out)."""


class CrashingDestination:
    """Puts through to a real destination, then 'dies' before or after the n-th put."""

    def __init__(self, real: Destination, n: int, after_put: bool) -> None:
        self.real, self.n, self.after_put, self.count = real, n, after_put, 0

    def describe(self) -> str:
        return self.real.describe()

    def put(self, key: str, data: bytes, *, replace: bool = False,
            content_type: str = "text/csv") -> PutResult:
        if self.count == self.n and not self.after_put:
            raise Crash
        result = self.real.put(key, data, replace=replace, content_type=content_type)
        self.count += 1
        if self.count == self.n + 1 and self.after_put:
            raise Crash  # landed, but the ledger never heard of it
        return result


def test_local_delivery_then_already_delivered(config: Config) -> None:
    seed(config, 3)
    out = daily.deliver_day(config, ACCOUNT, DAY, now=lambda: AFTER)
    assert out.state == "delivered"
    assert [r for _, r in out.objects] == ["created", "created"]
    got = files(config.data_dir / "reports")
    assert len(got) == 2
    again = daily.deliver_day(config, ACCOUNT, DAY, now=lambda: AFTER)
    assert again.state == "already_delivered"
    assert files(config.data_dir / "reports") == got


@pytest.mark.parametrize("after_put", [False, True])
@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_crash_at_every_put_resumes_the_same_drop(tmp_path: Path, n: int, after_put: bool) -> None:
    reference = Config(data_dir=tmp_path / "ref")
    setup_accounts(reference.data_dir)
    seed(reference, 2500)  # three parts and a manifest: four objects
    daily.deliver_day(reference, ACCOUNT, DAY, now=lambda: AFTER)
    expected = files(reference.data_dir / "reports")
    assert len(expected) == 4

    config = Config(data_dir=tmp_path / "run")
    setup_accounts(config.data_dir)
    seed(config, 2500)
    root = config.data_dir / "reports"
    with pytest.raises(Crash):
        daily.deliver_day(config, ACCOUNT, DAY, now=lambda: AFTER,
                          destination=CrashingDestination(LocalDestination(root), n, after_put))
    seed(config, 5, member="inlineChatEvent")  # late writes cannot change a planned drop
    out = daily.deliver_day(config, ACCOUNT, DAY, now=lambda: AFTER + 3600)
    assert out.state == "delivered"
    got = files(root)
    assert set(got) == set(expected)  # nothing missing, nothing extra
    for key, data in got.items():
        if key.endswith(".csv"):
            assert data == expected[key]  # bytes identical
    if after_put:
        assert ("already_there" in [r for _, r in out.objects])


def test_crash_while_planning_leaves_nothing_planned(config: Config,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seed(config, 3)

    def boom(*a: Any, **k: Any) -> Any:
        raise Crash
    monkeypatch.setattr(daily, "build_drop", boom)
    with pytest.raises(Crash):
        daily.deliver_day(config, ACCOUNT, DAY, now=lambda: AFTER)
    monkeypatch.undo()
    conn = store.connect(config.control)
    assert daily.status(conn, ACCOUNT)["days"] == []
    conn.close()
    assert daily.deliver_day(config, ACCOUNT, DAY, now=lambda: AFTER).state == "delivered"


def test_replace_regenerates_on_purpose(config: Config) -> None:
    seed(config, 2)
    daily.deliver_day(config, ACCOUNT, DAY, now=lambda: AFTER)
    before = files(config.data_dir / "reports")
    seed(config, 3, member="inlineChatEvent")
    out = daily.deliver_day(config, ACCOUNT, DAY, now=lambda: AFTER, replace=True)
    assert [r for _, r in out.objects] == ["replaced", "replaced"]
    after = files(config.data_dir / "reports")
    assert set(after) == set(before) and after != before
    conn = store.connect(config.control)
    [day] = daily.status(conn, ACCOUNT)["days"]  # type: ignore[misc]
    conn.close()
    assert day["replacements"] == 1 and day["users"] == 3


def s3_setup(config: Config, bucket: str) -> None:
    enable(config, s3_uri=f"s3://{bucket}/user-activity-reports/")


def test_s3_outage_that_ends_and_configuration_errors(config: Config, aws_env: None,
                                                      moto_url: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    seed(config, 1200)
    bucket = f"kiro-daily-{time.time_ns()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    s3 = boto3.session.Session().client("s3", region_name=REGION)
    s3.create_bucket(Bucket=bucket)
    conn = store.connect(config.control)
    s3.put_bucket_policy(Bucket=bucket, Policy=orjson.dumps(location.documented_policy(
        bucket, "user-activity-reports", store.require_account(conn, ACCOUNT))).decode())
    s3_setup(config, bucket)
    s3.delete_bucket_policy(Bucket=bucket)
    s3.delete_bucket(Bucket=bucket)  # gone after it was checked
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # S3 is down
    out = daily.deliver_day(config, ACCOUNT, DAY, now=lambda: AFTER)
    assert out.state == "failed" and out.error is not None and out.error.transient
    err = daily.status(conn, ACCOUNT)["last_error"]
    assert err["kind"] == "transient"  # type: ignore[index]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)  # back, but no bucket: configuration
    out = daily.deliver_day(config, ACCOUNT, DAY, now=lambda: AFTER)
    assert out.state == "failed"
    err = daily.status(conn, ACCOUNT)["last_error"]
    assert (err["kind"], err["code"]) == ("configuration", "NoSuchBucket")  # type: ignore[index]
    s3.create_bucket(Bucket=bucket)  # the admin fixes it
    out = daily.deliver_day(config, ACCOUNT, DAY, now=lambda: AFTER)
    assert out.state == "delivered"
    assert daily.status(conn, ACCOUNT)["last_error"] is None
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    base = f"user-activity-reports/AWSLogs/{ACCOUNT}/KiroLogs/by_user_analytic"
    assert keys == [
        f"{base}/us-east-1/2026/11/30/00/{ACCOUNT}_by_user_analytic_202611300000_report_part_1.csv",
        f"{base}/us-east-1/2026/11/30/00/{ACCOUNT}_by_user_analytic_202611300000_report_part_2.csv",
        f"{base}_manifest/us-east-1/2026/11/30/{ACCOUNT}_manifest_202611300000.json",
    ]
    s3.close()
    conn.close()


def test_scheduler_delivers_missed_days_oldest_first(config: Config) -> None:
    enable(config, since=date(2026, 11, 27))
    seed(config, 2)
    clock = [datetime(2026, 11, 30, 9, tzinfo=UTC).timestamp()]
    sched = Scheduler(config, lambda: clock[0])
    done = sched.run_due()
    assert [(o.day, o.state) for o in done] == [(date(2026, 11, 27), "delivered"),
                                                (date(2026, 11, 28), "delivered"),
                                                (date(2026, 11, 29), "delivered")]
    assert sched.run_due() == []  # nothing more until the day closes
    assert sched.next_wake() == next_midnight(clock[0])
    clock[0] = AFTER
    [o] = sched.run_due()
    assert (o.day, o.state) == (DAY, "delivered")
    reports = files(config.data_dir / "reports")
    # a day without activity is a header-only file: "no activity" is not "no report"
    empty = next(v for k, v in reports.items() if "/2026/11/27/" in k and k.endswith(".csv"))
    assert empty.count(b"\n") == 1
    full = next(v for k, v in reports.items() if "/2026/11/30/" in k and k.endswith(".csv"))
    assert full.count(b"\n") == 3
    # the archive holds the events (of the one day that had any), sealed by the run
    sealed = sorted(p.name for p in (config.archive_dir / ACCOUNT).iterdir())
    assert sealed == ["2026-11-30"]
    assert len(archive.day_files(config.landing_db, config.archive_dir, ACCOUNT, DAY)) == 1


def test_scheduler_backs_off_a_failing_account(config: Config, tmp_path: Path) -> None:
    enable(config)
    (config.data_dir / "reports").write_text("not a folder")  # a configuration error
    clock = [AFTER]
    sched = Scheduler(config, lambda: clock[0])
    [o] = sched.run_due()
    assert o.state == "failed"
    assert sched.retry_at[ACCOUNT] >= AFTER
    assert sched.run_due() == []  # not again before its backoff
    (config.data_dir / "reports").unlink()
    clock[0] = sched.retry_at[ACCOUNT] + 1
    [o] = sched.run_due()
    assert o.state == "delivered"


def test_no_manifest_when_the_policy_allows_only_the_csv_files(
        config: Config, aws_env: None, moto_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    s3 = boto3.session.Session().client("s3", region_name=REGION)
    bucket = f"kiro-daily-{time.time_ns()}"
    s3.create_bucket(Bucket=bucket)
    conn = store.connect(config.control)
    policy = location.documented_policy(bucket, "reports", store.require_account(conn, ACCOUNT))
    policy["Statement"][0]["Resource"] = (
        f"arn:aws:s3:::{bucket}/reports/AWSLogs/{ACCOUNT}/KiroLogs/by_user_analytic/*")
    s3.put_bucket_policy(Bucket=bucket, Policy=orjson.dumps(policy).decode())
    seed(config, 3)
    saved, report = settings.update(conn, ACCOUNT, {"enabled": True,
                                                    "s3_uri": f"s3://{bucket}/reports/"},
                                    actor="test", now=NOON, today=DAY,
                                    writer=config.writer_principal)
    assert report.valid and not report.manifest_allowed and saved.manifest is False
    assert any("manifest" in w for w in saved.warnings)
    out = daily.deliver_day(config, ACCOUNT, DAY, now=lambda: AFTER)
    assert out.state == "delivered"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == [f"reports/AWSLogs/{ACCOUNT}/KiroLogs/by_user_analytic/us-east-1/2026/11/30/"
                    f"00/{ACCOUNT}_by_user_analytic_202611300000_report.csv"]
    # the admin widens the policy; validate notices, and the next day gets its manifest again
    s3.put_bucket_policy(Bucket=bucket, Policy=orjson.dumps(location.documented_policy(
        bucket, "reports", store.require_account(conn, ACCOUNT))).decode())
    again = settings.validate(conn, ACCOUNT, writer=config.writer_principal, now=AFTER)
    assert again.valid and again.manifest_allowed and again.warnings == []
    assert settings.get(conn, ACCOUNT).manifest is True
    s3.close()
    conn.close()


def test_a_run_that_ends_after_midnight_does_not_skip_that_midnight(config: Config) -> None:
    """The run at start (catch-up, sealing the archive ...) began before a midnight and ended
    after it: the next run comes at once, not at the following midnight (a day late)."""
    import asyncio
    import math

    clock = [datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC).timestamp()]
    sched = Scheduler(config, lambda: clock[0])
    sched.next_seal = math.inf
    calls: list[float] = []

    def run_due() -> list[Any]:
        calls.append(clock[0])
        clock[0] += 2  # this run takes 2 s: across midnight
        return []

    sched.run_due = run_due  # type: ignore[method-assign]

    async def nothing() -> None:
        pass

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(sched.run(stop, nothing, tick=0.01))
        await asyncio.sleep(0.5)
        stop.set()
        await task

    asyncio.run(main())
    assert calls[:2] == [clock[0] - 4, clock[0] - 2]  # the second run right after the first
    assert len(calls) == 2  # and then not again before the next midnight
