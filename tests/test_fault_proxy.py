"""A fault-injecting proxy between the delivery and moto's S3 server, as the S3 sinks of Kafka
Connect and Vector are tested: for the first N puts it answers 503 SlowDown, 500, resets the
connection, hangs past the client's timeout, forwards the put but truncates the answer, answers
403, or adds 10 s of latency. Every case must end with the day delivered exactly once: the
bucket holds exactly the planned objects, each stored by one successful put (a put retried
after a lost answer is refused by ``If-None-Match`` and counted as delivered), and the admin is
shown the error while it lasts.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import orjson
import pytest
from botocore.config import Config as BotoConfig

from conftest import ACCOUNT, REGION, setup_accounts
from kiro_activity import daily, location, settings, store
from kiro_activity.config import Config
from kiro_activity.deliver import Backoff, S3Destination
from kiro_activity.landing import LandingLog, LandingRecord
from kiro_activity.schedule import Scheduler

DAY = date(2026, 11, 30)
NOON = datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()
AFTER = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC).timestamp()
READ_TIMEOUT = 12


def s3_error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>").encode()


class FaultProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.upstream = urlsplit(upstream)
        self.mode, self.remaining = "none", 0
        self.landed: Counter[str] = Counter()  # successful puts that reached S3, per key
        self.order: list[str] = []  # the keys of those puts, in the order they landed
        self.injected = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        up = http.client.HTTPConnection(self.server.upstream.hostname,
                                        self.server.upstream.port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            headers["Host"] = self.headers["Host"]
            up.request(self.command, self.path, body=body, headers=headers)
            r = up.getresponse()
            data = r.read()
            if self.command == "PUT" and 200 <= r.status < 300:
                with self.server.lock:
                    self.server.landed[self.path.split("?")[0]] += 1
                    self.server.order.append(self.path.split("?")[0])
            return r.status, r.getheaders(), data
        finally:
            up.close()

    def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "date",
                                 "server"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = None
        with self.server.lock:
            if self.command == "PUT" and self.server.remaining > 0:
                self.server.remaining -= 1
                self.server.injected += 1
                fault = self.server.mode
        if fault == "503":
            self._answer(503, [], s3_error("SlowDown", "Please reduce your request rate."))
        elif fault == "500":
            self._answer(500, [], s3_error("InternalError", "We encountered an internal error."))
        elif fault == "403":
            self._answer(403, [], s3_error("AccessDenied", "Access Denied"))
        elif fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.close_connection = True
        elif fault == "timeout":
            time.sleep(READ_TIMEOUT + 2)
            self.close_connection = True
        elif fault == "truncated":  # the put lands; its answer is cut off in the headers
            status, _, _ = self._forward(body)
            self.wfile.write(f"HTTP/1.1 {status} OK\r\nx-amz-request-id: 4442587F".encode())
            self.wfile.flush()
            self.close_connection = True
        else:
            if fault == "latency":
                time.sleep(10)
            self._answer(*self._forward(body))

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _handle


@pytest.fixture
def proxy(moto_url: str) -> Any:
    server = FaultProxy(moto_url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def prepare(data: Path, s3: Any, bucket: str) -> Config:
    config = Config(data_dir=data)
    setup_accounts(data)
    log = LandingLog(config.landing_db, clock=lambda: NOON)
    body = orjson.dumps({"telemetryEvent": {"chatAddMessageEvent": {
        "conversationId": "c", "messageId": "m"}}})
    try:
        log.append_sync([LandingRecord(ACCOUNT, f"user{i:04d}", "chatAddMessageEvent", None,
                                       None, None, None, "test", body) for i in range(1_200)])
    finally:
        log.close()
    s3.create_bucket(Bucket=bucket)
    conn = store.connect(config.control_db)
    s3.put_bucket_policy(Bucket=bucket, Policy=orjson.dumps(location.documented_policy(
        bucket, "reports", store.require_account(conn, ACCOUNT))).decode())
    settings.update(conn, ACCOUNT, {"enabled": True, "s3_uri": f"s3://{bucket}/reports/"},
                    actor="test", now=NOON, today=DAY, writer=config.writer_principal)
    conn.close()
    return config


CASES = [("503", 3), ("500", 3), ("reset", 3), ("timeout", 1), ("truncated", 2), ("403", 2),
         ("latency", 1)]


def test_every_fault_ends_delivered_exactly_once(tmp_path: Path, aws_env: None, moto_url: str,
                                                 proxy: FaultProxy,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    direct = boto3.session.Session().client("s3", region_name=REGION)
    through = boto3.session.Session().client(
        "s3", region_name=REGION, endpoint_url=proxy.url, config=BotoConfig(
            retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5,
            read_timeout=READ_TIMEOUT))
    figures = []
    for mode, n in CASES:
        bucket = f"kiro-fault-{mode}-{time.time_ns()}"
        config = prepare(tmp_path / mode, direct, bucket)
        proxy.mode, proxy.remaining, proxy.injected = mode, n, 0
        proxy.landed.clear()
        dest = S3Destination(bucket, expected_owner=ACCOUNT, region=REGION, client=through)
        runs, shown = 0, False
        while True:  # the schedule's way: a run with a few attempts, again later if it failed
            runs += 1
            out = daily.deliver_day(config, ACCOUNT, DAY, now=lambda: AFTER, destination=dest,
                                    attempts=2, backoff=Backoff(base=0.0), sleep=lambda s: None)
            conn = store.connect(config.control_db)
            err = daily.status(conn, ACCOUNT)["last_error"]
            conn.close()
            if out.state == "failed":
                shown = shown or err is not None
                assert runs < 10, (mode, out.error)
                continue
            assert out.state == "delivered" and err is None
            break
        keys = {o["Key"] for o in direct.list_objects_v2(Bucket=bucket)["Contents"]}
        conn = store.connect(config.control_db)
        planned = {k: bytes(d) for k, d in conn.execute(
            "SELECT key, data FROM drop_objects WHERE account_id = ?", (ACCOUNT,))}
        conn.close()
        assert keys == set(planned), mode
        for key, data in planned.items():
            assert direct.get_object(Bucket=bucket, Key=key)["Body"].read() == data
        landed = {k.split(f"/{bucket}/", 1)[-1]: v for k, v in proxy.landed.items()}
        assert set(landed.values()) == {1}, (mode, landed)  # one successful put per object
        assert proxy.injected == n
        assert shown == (runs > 1), mode  # a failed run left its error for the admin
        figures.append(f"{mode}:faults={n},runs={runs},objects={len(keys)},shown={int(shown)}")
    print("fault-proxy: cases=" + str(len(CASES)) + " delivered_once=" + str(len(figures))
          + " " + " ".join(figures))


def test_an_outage_of_days_ends_delivered_oldest_day_first(
        tmp_path: Path, aws_env: None, proxy: FaultProxy,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 answers 503 SlowDown from the first midnight for 54 simulated hours. The schedule
    (its real code with a backoff of hours, an injected clock jumped from one wake-up to the
    next) keeps trying; the admin sees the error the whole time; once S3 is back the three days
    that fell due are delivered exactly once each, oldest first."""
    direct = boto3.session.Session().client("s3", region_name=REGION,
                                            endpoint_url=proxy.upstream.geturl())
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)  # the service's puts go through it
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # the schedule's backoff does the retrying
    bucket = f"kiro-outage-{time.time_ns()}"
    config = prepare(tmp_path / "data", direct, bucket)
    days = [DAY, date(2026, 12, 1), date(2026, 12, 2)]
    clock = [NOON]
    log = LandingLog(config.landing_db, clock=lambda: clock[0])
    body = orjson.dumps({"telemetryEvent": {"chatAddMessageEvent": {
        "conversationId": "c", "messageId": "m"}}})
    try:
        for day in days[1:]:
            clock[0] = datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()
            log.append_sync([LandingRecord(ACCOUNT, f"user{i:04d}", "chatAddMessageEvent",
                                           None, None, None, None, "test", body)
                             for i in range(300)])
    finally:
        log.close()
    start = datetime(2026, 11, 30, 23, 0, tzinfo=UTC).timestamp()
    healed = AFTER + 54 * 3600
    now = [start]
    proxy.mode, proxy.remaining = "503", 10**9
    # the production backoff (15 min cap) would wake ~460 times in 54 h: hours here, for speed
    sched = Scheduler(config, clock=lambda: now[0], rng=random.Random(7),
                      backoff=Backoff(base=900.0, cap=6 * 3600.0))
    wakes = shown_during = blind_during = 0
    while now[0] < healed + 86_400:
        if now[0] >= healed:
            proxy.remaining = 0
        sched.run_due()
        conn = store.connect(config.control_db)
        err = daily.status(conn, ACCOUNT)["last_error"]
        pending = daily.due_days(conn, ACCOUNT, now=now[0], retention_days=90)
        conn.close()
        if AFTER <= now[0] < healed:
            shown_during += err is not None
            blind_during += err is None
        now[0] = max(sched.next_wake(), now[0] + 1)
        wakes += 1
        if now[0] > healed and not pending:
            break
    assert not pending and blind_during == 0 and shown_during > 0
    reports = [key for key in proxy.order if "/by_user_analytic/" in key]
    stamps = [next(f"{d:%Y%m%d}" for d in days if f"_{d:%Y%m%d}0000" in key)
              for key in reports]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3, stamps  # oldest day first
    assert set(proxy.landed.values()) == {1}  # each object put once (the archive's too)
    listed = {o["Key"] for o in direct.list_objects_v2(Bucket=bucket)["Contents"]}
    assert len(listed) == len(proxy.order)
    assert any("/telemetry_archive/" in key for key in listed)  # it went through too
    print(f"outage: simulated_hours=54 wakes={wakes} failed_puts={proxy.injected} "
          f"error_shown={shown_during}/{shown_during + blind_during} days_delivered=3 "
          f"order=oldest_first report_objects="
          f"{sum('/telemetry_archive/' not in k for k in listed)} archive_objects="
          f"{sum('/telemetry_archive/' in k for k in listed)}")
