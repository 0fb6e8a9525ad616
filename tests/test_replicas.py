"""Two replicas of the service sharing one PostgreSQL control database and one archive folder:
real ``kiro-activity serve`` processes, a real PostgreSQL server (tests/pg.py), moto's S3 server.
Telemetry goes to both, both schedules run across the same (injected) midnight, and each
account's day is delivered once, with the figures of every event sent to either replica."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import httpx
import orjson
import pytest

from conftest import ACCOUNT, OTHER_ACCOUNT, TARGET, cli, setup_accounts
from kiro_activity import db, location, metrics, replicas, settings, store
from kiro_activity.config import Config
from kiro_activity.demo import free_port, start_server
from kiro_activity.errors import UsageError
from test_e2e_report import ALICE, DAY, alice_events, ev, inline_chat, read_csv, utd

START = datetime(2026, 11, 30, 23, 59, 45, tzinfo=UTC)


def post(port: int, token: str, bodies: list[dict[str, Any]], account: str = ACCOUNT) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        for body in bodies:
            if account != ACCOUNT:
                body.pop("profileArn", None)
            r = client.post("/", content=orjson.dumps(body), headers={
                "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": TARGET})
            assert r.status_code == 200, r.text


def wait_for(s3: Any, bucket: str, key: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(o["Key"] == key for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])):
            return
        time.sleep(0.5)
    pytest.fail(f"{key} was not delivered to {bucket}")


def test_two_replicas_deliver_each_account_day_once(
        tmp_path: Path, aws_env: None, moto_url: str, pg_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    monkeypatch.setenv("KIRO_ACTIVITY_SEAL_INTERVAL", "2")  # several segments per replica
    s3 = boto3.session.Session().client("s3", region_name="us-east-1")
    buckets = {ACCOUNT: f"kiro-rep-a-{uuid.uuid4().hex[:8]}",
               OTHER_ACCOUNT: f"kiro-rep-b-{uuid.uuid4().hex[:8]}"}
    s3.create_bucket(Bucket=buckets[ACCOUNT])
    s3.create_bucket(Bucket=buckets[OTHER_ACCOUNT],
                     CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    for bucket in buckets.values():  # a second put of a key would leave a second version
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    setup_accounts(tmp_path / "a", pg_url)
    conn = store.connect(pg_url)
    for account_id, prefix in [(ACCOUNT, "user-activity-reports"), (OTHER_ACCOUNT, "reports")]:
        account = store.require_account(conn, account_id)
        policy = location.documented_policy(buckets[account_id], prefix, account)
        s3.put_bucket_policy(Bucket=buckets[account_id], Policy=json.dumps(policy))
        _, report = settings.update(
            conn, account_id, {"enabled": True, "s3_uri": f"s3://{buckets[account_id]}/{prefix}/"},
            actor="test", now=0, today=DAY, writer="q.amazonaws.com")
        assert report.warnings == [], report.warnings
    tokens = {user: tok for user, account in [("alice", ACCOUNT), ("bob", ACCOUNT),
                                              ("carol", OTHER_ACCOUNT), ("dave", ACCOUNT)]
              for [(user, tok)] in [store.issue_tokens(conn, account, [user], now=time.time(),
                                                       actor="test")]}
    conn.close()
    shared = tmp_path / "archive"
    configs = {name: Config(data_dir=tmp_path / name, database_url=pg_url, replica=name,
                            archive_folder=str(shared)) for name in ("a", "b")}
    ports = {name: free_port() for name in configs}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    started = time.monotonic()
    try:
        for name, config in configs.items():
            procs[name] = start_server(config, ports[name], "--fake-clock-start",
                                       START.isoformat())
        a, b = ports["a"], ports["b"]
        events = alice_events()
        # alice's events alternate between the replicas: the message she interacted with twice
        # (m1: INSERT_AT_CURSOR, UPVOTE) is on both, and counts once, not once per replica
        post(a, tokens["alice"], [e for i, e in enumerate(events) if i % 2 == 0])
        post(b, tokens["alice"], [e for i, e in enumerate(events) if i % 2 == 1])
        post(a, tokens["alice"], [events[0]])  # a retry to the same replica: counted once
        post(b, tokens["alice"], [events[2]])  # a retry that reached the other one: once too
        post(b, tokens["bob"], [ev("metricData", metricName="x", metricValue=1.0,
                                   timestamp=1764547100.0, product="p")])
        post(a, tokens["carol"], [inline_chat("ACCEPT", 1, 1)], OTHER_ACCOUNT)
        post(b, tokens["carol"], [inline_chat("REJECT", 1, 1)], OTHER_ACCOUNT)
        assert time.monotonic() - started < 12, "too slow to send before the fake midnight"
        time.sleep(max(0.0, 17.5 - (time.monotonic() - started)))  # both past 00:00 UTC
        post(b, tokens["dave"], [utd("ACCEPT", 1)])  # 1 December: not in the report
        prefix = f"user-activity-reports/AWSLogs/{ACCOUNT}/KiroLogs/"
        manifest = (f"{prefix}by_user_analytic_manifest/us-east-1/2026/11/30/"
                    f"{ACCOUNT}_manifest_202611300000.json")
        wait_for(s3, buckets[ACCOUNT], manifest, 180)
        other = (f"reports/AWSLogs/{OTHER_ACCOUNT}/KiroLogs/by_user_analytic_manifest/eu-west-1/"
                 f"2026/11/30/{OTHER_ACCOUNT}_manifest_202611300000.json")
        wait_for(s3, buckets[OTHER_ACCOUNT], other, 60)
        time.sleep(replicas.WAIT_S + 5)  # both schedules have looked at the day again

        [key] = [o["Key"] for o in s3.list_objects_v2(Bucket=buckets[ACCOUNT])["Contents"]
                 if o["Key"].endswith(".csv")]
        assert key.startswith(f"{prefix}by_user_analytic/us-east-1/2026/11/30/"), key
        rows = read_csv(s3, buckets[ACCOUNT], key)
        assert [r["UserId"] for r in rows] == ["alice", "bob"]
        names = metrics.metric_columns("delivered")  # the default layout's CSV names
        assert {m: int(rows[0][n]) for m, n in zip(metrics.column_metric("delivered"), names,
                                                    strict=True)} == ALICE
        man = orjson.loads(s3.get_object(Bucket=buckets[ACCOUNT], Key=manifest)["Body"].read())
        assert (man["users"], man["events"], man["partial"]) == (2, 29, False)
        [okey] = [o["Key"] for o in s3.list_objects_v2(Bucket=buckets[OTHER_ACCOUNT])["Contents"]
                  if o["Key"].endswith(".csv")]
        orows = read_csv(s3, buckets[OTHER_ACCOUNT], okey)
        assert [(r["UserId"], r["InlineChat_AcceptanceEventCount"],
                 r["InlineChat_RejectionEventCount"]) for r in orows] == [("carol", "1", "1")]

        # one delivery: one version of every report object, one ledger row, put (not found there)
        for bucket in buckets.values():
            versions = s3.list_object_versions(Bucket=bucket).get("Versions", [])
            reports = [v["Key"] for v in versions if "by_user_analytic" in v["Key"]]
            assert len(reports) == len(set(reports)) == 2, reports  # the CSV and the manifest
        conn = store.connect(pg_url)
        try:
            drops = conn.execute("SELECT account_id, day, replacements FROM drops WHERE"
                                 " delivered_at IS NOT NULL ORDER BY 1").fetchall()
            assert [tuple(d) for d in drops] == [(ACCOUNT, "2026-11-30", 0),
                                                 (OTHER_ACCOUNT, "2026-11-30", 0)]
            results = {r[0] for r in conn.execute("SELECT result FROM drop_objects")}
            assert results == {"created"}, results  # not "already there": one writer
            published = {tuple(r) for r in conn.execute(
                "SELECT replica_id, day FROM replica_days")}
            assert published == {("a", "2026-11-30"), ("b", "2026-11-30")}
        finally:
            conn.close()

        # the shared archive: each replica's own segments, and their copies in the bucket
        names = sorted(p.name for p in (shared / ACCOUNT / "2026-11-30").iterdir())
        assert [n[:6] for n in names] == ["seg-a-", "seg-b-"], names
        archived = [o["Key"].rsplit("/", 1)[1] for o in s3.list_objects_v2(
            Bucket=buckets[ACCOUNT], Prefix=f"{prefix}telemetry_archive/").get("Contents", [])]
        assert {n[:6] for n in archived} == {"seg-a-", "seg-b-"}, archived
        listed = cli(tmp_path / "a", "replicas", "list", "--json", database_url=pg_url)
        assert listed.returncode == 0, listed.stderr
        assert [(r["name"], r["retired_at"], r["last_published"])
                for r in json.loads(listed.stdout)] == [("a", None, "2026-11-30"),
                                                        ("b", None, "2026-11-30")]
        for name, proc in procs.items():
            assert proc.poll() is None, f"replica {name} exited"
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        s3.close()


def test_a_day_waits_for_every_live_replica_and_not_for_a_retired_one(
        tmp_path: Path, pg_url: str) -> None:
    conn = store.connect(pg_url)
    setup_accounts(tmp_path / "a", pg_url)
    config = Config(data_dir=tmp_path / "a", database_url=pg_url, replica="a",
                    archive_folder=str(tmp_path / "archive"))
    before = START.timestamp() - 3600
    for name in ("a", "b"):
        replicas.register(Config(database_url=pg_url, replica=name), before)
    replicas.register(Config(database_url=pg_url, replica="late"), START.timestamp() + 86_400)
    after = START.timestamp() + 120  # past the day's end and the compaction minute
    assert replicas.publish(config, after) == [DAY]  # nothing received: published empty
    with pytest.raises(replicas.NotSealedYet, match=r"replica\(s\) b to seal"):
        replicas.day_files(config, ACCOUNT, DAY)  # "late" started after the day: not awaited
    replicas.retire(conn, "b", after)
    assert replicas.day_files(config, ACCOUNT, DAY) == []
    agg = replicas.aggregate(config, ACCOUNT, DAY, "documented")
    assert (agg.users, agg.events) == (0, 0)
    with pytest.raises(UsageError, match="no replica 'nobody'"):
        replicas.retire(conn, "nobody", after)
    replicas.register(Config(database_url=pg_url, replica="b"), after)  # back: awaited again
    with pytest.raises(replicas.NotSealedYet):
        replicas.day_files(config, ACCOUNT, DAY)
    conn.close()


@pytest.mark.parametrize(("changes", "message"), [
    ({"replica": "1a"}, "not a replica name"),
    ({"replica": "a/b"}, "not a replica name"),
    ({"replica": "a"}, "needs KIRO_ACTIVITY_DATABASE_URL"),
    ({"replica": "a", "database_url": "postgresql://x@127.0.0.1/db"},
     "needs KIRO_ACTIVITY_ARCHIVE_FOLDER"),
])
def test_replica_settings_are_checked(changes: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        replicas.check(Config(**changes))  # type: ignore[arg-type]


def test_the_delivery_claim_is_held_by_one_connection(pg_url: str) -> None:
    first, second = db.PgConnection(pg_url), db.PgConnection(pg_url)
    try:
        assert first.try_lock("kiro-activity delivery x 2026-11-30")
        assert not second.try_lock("kiro-activity delivery x 2026-11-30")
        assert second.try_lock("kiro-activity delivery x 2026-12-01")
        first.close()  # the holder's session ends (as when its process is killed)
        assert second.try_lock("kiro-activity delivery x 2026-11-30")
    finally:
        first.close()
        second.close()
