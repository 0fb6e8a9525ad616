"""The telemetry archive (#10): every event sealed once into immutable Parquet segments named by
the ledger; the rebuild of any day reads the archive plus the unsealed tail; and the serving
process SIGKILLed at every phase of its sealing leaves, after a restart, each acknowledged
event in the archive exactly once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import httpx
import orjson
import pytest

from conftest import ACCOUNT, OTHER_ACCOUNT, TARGET, Server, setup_accounts
from kiro_activity import archive, events, landing, simulate
from kiro_activity.aggregate import rebuild_day
from kiro_activity.config import Config
from kiro_activity.demo import free_port
from kiro_activity.landing import LandingLog, LandingRecord

DAY = date(2026, 11, 30)
MEMBERS = ["userTriggerDecisionEvent", "chatAddMessageEvent", "inlineChatEvent",
           "codeScanSucceededEvent"]


def at(day: date, hour: float) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() + hour * 3600


def add(config: Config, when: float, n: int, rng: random.Random,
        accounts: tuple[str, ...] = (ACCOUNT, OTHER_ACCOUNT)) -> None:
    log = LandingLog(config.landing_db, clock=lambda: when)
    try:
        for account in accounts:
            recs = []
            for i in range(n):
                user = f"u{rng.randrange(30)}"
                raw = orjson.dumps(simulate.request_body(MEMBERS[i % 4], rng, user_id=user))
                req = events.parse_request(raw)
                recs.append(LandingRecord(account, user, req.member, req.client_token,
                                          req.opt_out, req.client_timestamp, req.ide_category,
                                          "test", raw))
            log.append_sync(recs)
    finally:
        log.close()


def archived_seqs(config: Config) -> list[int]:
    conn = archive.connect(config.landing_db)
    try:
        files = [s.path(config.archive_dir) for s in archive.segments(conn)]
    finally:
        conn.close()
    if not files:
        return []
    listing = ", ".join(f"'{f}'" for f in files)
    return [r[0] for r in duckdb.sql(f"SELECT seq FROM read_parquet([{listing}])").fetchall()]


def landing_seqs(config: Config) -> list[int]:
    return [r["seq"] for r in landing.read_events(config.landing_db)]


def files_on_disk(config: Config) -> set[Path]:
    return {p for p in config.archive_dir.rglob("*") if p.is_file() and p.name != ".seal.lock"}


def ledger_files(config: Config) -> set[Path]:
    conn = archive.connect(config.landing_db)
    try:
        return {s.path(config.archive_dir) for s in archive.segments(conn)}
    finally:
        conn.close()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    c = Config(data_dir=tmp_path / "data")
    setup_accounts(c.data_dir)
    return c


def test_every_event_is_sealed_once_and_closed_days_are_compacted(config: Config) -> None:
    rng = random.Random(1)
    add(config, at(DAY, 10), 50, rng)
    first = archive.seal(config.landing_db, config.archive_dir, now=at(DAY, 10.1))
    assert (first.segments, first.events) == (2, 100)  # one per account and day
    assert archive.seal(config.landing_db, config.archive_dir, now=at(DAY, 10.2)).events == 0
    add(config, at(DAY, 20), 30, rng)  # more of the same day, and the next day
    add(config, at(DAY + timedelta(days=1), 1), 20, rng)
    second = archive.seal(config.landing_db, config.archive_dir, now=at(DAY, 20.1))
    assert (second.segments, second.events, second.compacted) == (4, 100, 0)
    assert len(archive.day_files(config.landing_db, config.archive_dir, ACCOUNT, DAY)) == 2
    assert sorted(archived_seqs(config)) == landing_seqs(config)
    # the day has closed (and a minute passed): its segments become one
    third = archive.seal(config.landing_db, config.archive_dir,
                         now=at(DAY + timedelta(days=1), 1.1))
    assert third.compacted == 2
    assert len(archive.day_files(config.landing_db, config.archive_dir, ACCOUNT, DAY)) == 1
    assert sorted(archived_seqs(config)) == landing_seqs(config)
    assert files_on_disk(config) == ledger_files(config)


def test_the_rebuild_reads_the_archive_and_the_unsealed_tail(config: Config) -> None:
    rng = random.Random(2)
    add(config, at(DAY, 9), 80, rng)
    archive.seal(config.landing_db, config.archive_dir, now=at(DAY, 9.5))
    add(config, at(DAY, 15), 40, rng)  # the tail: not sealed yet
    for account in (ACCOUNT, OTHER_ACCOUNT):
        from_log = rebuild_day(config.landing_db, account, DAY)
        mixed = rebuild_day(config.landing_db, account, DAY, config.archive_dir)
        assert (mixed.rows, mixed.events) == (from_log.rows, from_log.events)
        assert mixed.events == 120
        cells = rebuild_day(config.landing_db, account, DAY, config.archive_dir, "delivered")
        assert cells.cells == rebuild_day(config.landing_db, account, DAY,
                                          layout="delivered").cells


def test_a_run_killed_before_its_commit_leaves_only_orphans(config: Config,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """Files written by a run that did not commit are named by no ledger row: readers never
    see them, and the next run deletes them and seals the same events again."""
    rng = random.Random(3)
    add(config, at(DAY, 9), 20, rng)
    real = archive.kill_point

    def die(phase: str) -> None:
        if phase == "seal-written":
            raise KeyboardInterrupt  # stands in for the SIGKILL of the process test below
        real(phase)

    monkeypatch.setattr(archive, "kill_point", die)
    with pytest.raises(KeyboardInterrupt):
        archive.seal(config.landing_db, config.archive_dir, now=at(DAY, 9.5))
    assert archived_seqs(config) == []
    monkeypatch.setattr(archive, "kill_point", real)
    done = archive.seal(config.landing_db, config.archive_dir, now=at(DAY, 9.6))
    assert done.events == 40
    assert sorted(archived_seqs(config)) == landing_seqs(config)
    assert files_on_disk(config) == ledger_files(config)


def test_a_damaged_segment_is_written_again_from_the_landing_log(config: Config) -> None:
    add(config, at(DAY, 9), 20, random.Random(4))
    archive.seal(config.landing_db, config.archive_dir, now=at(DAY, 9.5))
    [path] = archive.day_files(config.landing_db, config.archive_dir, ACCOUNT, DAY)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    conn = archive.connect(config.landing_db)
    try:
        assert "damaged" in (archive.covered(conn, config.archive_dir, ACCOUNT, DAY) or "")
        assert archive.repair(config.landing_db, config.archive_dir, ACCOUNT, DAY) == 1
        assert archive.covered(conn, config.archive_dir, ACCOUNT, DAY) is None
    finally:
        conn.close()
    assert sorted(archived_seqs(config)) == landing_seqs(config)


# --- the serving process, SIGKILLed at every phase of its sealing ------------------------------

PHASES = ["seal-written#3", "seal-committed#3", "compact-written", "compact-committed"]


def serve(config: Config, port: int, kill_at: str | None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KIRO_ACTIVITY_DATA_DIR": str(config.data_dir),
           "KIRO_ACTIVITY_SEAL_INTERVAL": "0.3"}
    env.pop("KIRO_ACTIVITY_TEST_KILL_AT", None)
    if kill_at:
        env["KIRO_ACTIVITY_TEST_KILL_AT"] = kill_at
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiro_activity", "serve", "--port", str(port), "--rate", "0",
         "--fake-clock-start", (datetime(2026, 12, 1, 0, 2, tzinfo=UTC)).isoformat()], env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    return proc


def send_until_dead(port: int, token: str, proc: subprocess.Popen[bytes],
                    acked: list[str]) -> None:
    rng = random.Random(5)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5, headers={
            "Authorization": f"Bearer {token}", "X-Amz-Target": TARGET,
            "Content-Type": "application/x-amz-json-1.0"}) as c:
        while proc.poll() is None:
            body = simulate.request_body("chatAddMessageEvent", rng)
            body["clientToken"] = str(uuid.uuid4())
            try:
                if c.post("/", content=orjson.dumps(body)).status_code == 200:
                    acked.append(body["clientToken"])
            except httpx.HTTPError:
                return


def test_sigkill_at_every_phase_of_sealing_keeps_each_acknowledged_event_once(
        tmp_path: Path) -> None:
    results = []
    for phase in PHASES:
        config = Config(data_dir=tmp_path / phase.replace("#", "-"))
        setup_accounts(config.data_dir)
        rng = random.Random(6)
        add(config, at(DAY, 10), 40, rng)  # yesterday, in two segments: work for compaction
        archive.seal(config.landing_db, config.archive_dir, now=at(DAY, 10.5))
        add(config, at(DAY, 22), 40, rng)
        archive.seal(config.landing_db, config.archive_dir, now=at(DAY, 22.5))
        server = Server(data_dir=config.data_dir, port=free_port())
        token = server.token("alice")
        acked: list[str] = []
        proc = serve(config, server.port, phase)
        sender = threading.Thread(target=send_until_dead, args=(server.port, token, proc, acked))
        sender.start()
        try:
            code = proc.wait(90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        sender.join(30)
        assert code == -signal.SIGKILL, (phase, code)
        proc = serve(config, server.port, None)  # restarted: it seals at once, then every 0.3 s
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                conn = archive.connect(config.landing_db)
                try:
                    done = archive.sealed_seq(conn) == conn.execute(
                        "SELECT max(seq) FROM events").fetchone()[0]
                    one = len(archive.segments(conn, ACCOUNT, DAY)) == 1
                finally:
                    conn.close()
                if done and one:
                    break
                time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(30)
        seqs = archived_seqs(config)
        listing = ", ".join(f"'{f}'" for f in ledger_files(config))
        tokens = {r[0] for r in duckdb.sql(
            f"SELECT json_extract_string(body, '$.clientToken') FROM read_parquet([{listing}])"
        ).fetchall()}
        results.append({
            "phase": phase, "acked": len(acked),
            "acked_missing": len(set(acked) - tokens),
            "duplicates": len(seqs) - len(set(seqs)),
            "unarchived": len(set(landing_seqs(config)) - set(seqs)),
            "stray_files": len(files_on_disk(config) - ledger_files(config)),
            "missing_files": len(ledger_files(config) - files_on_disk(config)),
        })
    acked = sum(r["acked"] for r in results)
    bad = {k: sum(r[k] for r in results) for k in ("acked_missing", "duplicates", "unarchived",
                                                  "stray_files", "missing_files")}
    print(f"kill-seal: kills={len(PHASES)} acked={acked} "
          + " ".join(f"{k}={v}" for k, v in bad.items()))
    assert acked > 0 and all(r["acked"] > 0 for r in results if "#" in r["phase"])
    assert set(bad.values()) == {0}, results


# --- the copy in the account's bucket (moto's S3 server) ---------------------------------------


def test_segments_go_to_the_account_bucket_once_with_the_put_rules(
        tmp_path: Path, aws_env: None, moto_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    from kiro_activity import daily, location, settings, store
    from kiro_activity.config import Config as _Config
    from kiro_activity.errors import TransientDeliveryError

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    s3 = boto3.session.Session().client("s3", region_name="us-east-1")
    config = _Config(data_dir=tmp_path / "data")
    setup_accounts(config.data_dir)
    bucket = f"kiro-archive-{time.time_ns()}"
    s3.create_bucket(Bucket=bucket)
    conn = store.connect(config.control_db)
    s3.put_bucket_policy(Bucket=bucket, Policy=orjson.dumps(location.documented_policy(
        bucket, "reports", store.require_account(conn, ACCOUNT))).decode())
    settings.update(conn, ACCOUNT, {"enabled": True, "s3_uri": f"s3://{bucket}/reports/"},
                    actor="test", now=at(DAY, 8), today=DAY, writer=config.writer_principal)
    conn.close()
    rng = random.Random(8)
    add(config, at(DAY, 9), 30, rng)
    archive.seal(config.landing_db, config.archive_dir, now=at(DAY, 9.1))

    class Outage:  # S3 down: the admin is shown why the archive is not in the bucket
        def put(self, key: str, data: bytes, **kw: object) -> object:
            raise TransientDeliveryError("SlowDown: injected", code="SlowDown")

    failed = archive.upload(config, destinations={ACCOUNT: Outage()})  # type: ignore[dict-item]
    assert failed.errors and failed.put == 0
    conn = store.connect(config.control_db)
    shown = daily.status(conn, ACCOUNT)["archive_error"]
    conn.close()
    assert shown is not None and "SlowDown" in shown["message"]
    first = archive.upload(config)
    conn = store.connect(config.control_db)
    assert daily.status(conn, ACCOUNT)["archive_error"] is None  # cleared by the next put
    conn.close()
    add(config, at(DAY, 20), 30, rng)
    archive.seal(config.landing_db, config.archive_dir, now=at(DAY, 20.1))
    # a run killed after its put, before the ledger heard of it: the put is refused (412)
    conn = archive.connect(config.landing_db)
    [(key,)] = conn.execute("SELECT remote FROM archive_segments WHERE account_id = ? AND"
                            " remote IS NOT NULL", (ACCOUNT,)).fetchall()
    with conn:
        conn.execute("UPDATE archive_segments SET remote = NULL WHERE remote = ?", (key,))
    conn.close()
    second = archive.upload(config)
    assert (first.put, second.put, second.already_there, second.errors) == (1, 1, 1, {})
    # the day closes: compacted locally, nothing more to put (its pieces are in the bucket)
    archive.seal(config.landing_db, config.archive_dir, now=at(DAY + timedelta(days=1), 1))
    assert archive.upload(config).put == 0
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="reports/")["Contents"]
    keys = sorted(o["Key"] for o in listed)
    assert all(k.startswith(f"reports/AWSLogs/{ACCOUNT}/KiroLogs/telemetry_archive/v1/"
                            f"us-east-1/2026/11/30/seg-") for k in keys), keys
    heads = [s3.head_object(Bucket=bucket, Key=k, ExpectedBucketOwner=ACCOUNT) for k in keys]
    assert {h["ServerSideEncryption"] for h in heads} == {"AES256"}
    # the bucket's segments hold each of the account's events once (the other account has no
    # location: its events stay local)
    seqs = []
    for k in keys:
        path = tmp_path / k.rsplit("/", 1)[1]
        path.write_bytes(s3.get_object(Bucket=bucket, Key=k)["Body"].read())
        seqs += [r[0] for r in duckdb.sql(f"SELECT seq FROM read_parquet('{path}')").fetchall()]
    mine = [r["seq"] for r in landing.read_events(config.landing_db)
            if r["account_id"] == ACCOUNT]
    assert sorted(seqs) == sorted(mine) and len(seqs) == 60
    print(f"archive-s3: objects={len(keys)} events={len(seqs)} duplicates=0 "
          f"sse=AES256 expected_owner=1 refused_repeat_put=1")
