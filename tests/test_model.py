"""A model-based test (hypothesis stateful) of the landing log, the counters and the delivery
ledger together: events are ingested (some repeated with their clientToken, some without one),
the clock moves on across midnights, the process "crashes" (its connections and lock dropped
without the orderly close that writes the counters) and the log is reopened, reports are run
through a destination whose puts fail on demand, and failed deliveries are retried.

The model is a plain list of the events each user sent per day, and the 44 metrics of a user-day
are computed from it by :func:`kiro_activity.metrics.evaluate`. After every step: the counters
of every day equal the model; every delivered day's files equal the model's day and never change
again; the delivery status shows an error exactly while the last delivery failed.
"""

from __future__ import annotations

import csv
import io
import os
import random
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from conftest import ACCOUNT, setup_accounts
from kiro_activity import daily, events, landing, metrics, simulate, store
from kiro_activity import settings as settings_mod
from kiro_activity.aggregate import counted_day, day_of, rebuild_day
from kiro_activity.config import Config
from kiro_activity.deliver import LocalDestination, PutResult
from kiro_activity.errors import TransientDeliveryError
from kiro_activity.landing import LandingLog, LandingRecord

START = datetime(2026, 11, 29, 22, tzinfo=UTC).timestamp()
USERS = ["alice", "bob", "=eve"]
MEMBERS = ["userTriggerDecisionEvent", "chatAddMessageEvent", "chatInteractWithMessageEvent",
           "inlineChatEvent", "codeScanSucceededEvent", "featureDevCodeAcceptanceEvent"]


class FlakyDestination:
    """The local folder, with the next ``failures`` puts failing as an outage would."""

    def __init__(self, root: Path) -> None:
        self.real, self.failures, self.puts = LocalDestination(root), 0, 0

    def describe(self) -> str:
        return self.real.describe()

    def put(self, key: str, data: bytes, *, replace: bool = False,
            content_type: str = "text/csv") -> PutResult:
        if self.failures > 0:
            self.failures -= 1
            raise TransientDeliveryError("SlowDown: injected (will retry)", code="SlowDown")
        self.puts += 1
        return self.real.put(key, data, replace=replace, content_type=content_type)


TOTALS = {"runs": 0, "days": 0, "delivered": 0, "crashes": 0, "repeats": 0,
          "failed_puts": 0}


class LedgerMachine(RuleBasedStateMachine):

    @initialize(seed=st.integers(0, 2**32 - 1))
    def start(self, seed: int) -> None:
        # a fresh folder per example: id(self) is reused once an earlier machine is collected,
        # and an example that found its folder taken failed in a way hypothesis cannot replay
        base = Path(tempfile.mkdtemp(prefix="run-", dir=os.environ["MODEL_TMP"]))
        self.config = Config(data_dir=base / "data")
        setup_accounts(self.config.data_dir)
        conn = store.connect(self.config.control_db)
        settings_mod.update(conn, ACCOUNT, {"enabled": True}, actor="model", now=START,
                            today=day_of(int(START * 1e6)), writer="q.amazonaws.com")
        conn.close()
        self.rng = random.Random(seed)
        self.now = START
        self.log: LandingLog | None = LandingLog(self.config.landing_db, clock=lambda: self.now)
        self.dest = FlakyDestination(self.config.data_dir / "reports")
        #: the model: per day, per user, the (member, member object, ideCategory) triples
        self.sent: dict[date, dict[str, list[tuple[str, dict[str, Any], str | None]]]] = {}
        self.bodies: list[tuple[str, bytes]] = []  # (user, body) sent with a clientToken
        self.delivered: dict[date, dict[str, bytes]] = {}
        self.last_failed = False  # the last delivery that put anything failed
        self.crashes = self.repeats = 0

    @property
    def today(self) -> date:
        return day_of(int(self.now * 1e6))

    def _log(self) -> LandingLog:
        if self.log is None:
            self.log = LandingLog(self.config.landing_db, clock=lambda: self.now)
        return self.log

    def _append(self, user: str, raw: bytes) -> int:
        req = events.parse_request(raw)
        record = LandingRecord(ACCOUNT, user, req.member, req.client_token, req.opt_out,
                               req.client_timestamp, req.ide_category, "model", raw)
        return self._log().append_sync([record])

    @rule(user=st.sampled_from(USERS), member=st.sampled_from(MEMBERS),
          token=st.booleans())
    def ingest(self, user: str, member: str, token: bool) -> None:
        body = simulate.request_body(member, self.rng, user_id=user, ts=self.now,
                                     client_token=token)
        raw = orjson.dumps(body)
        assert self._append(user, raw) == 1
        if token:
            self.bodies.append((user, raw))
        [(name, event)] = body["telemetryEvent"].items()
        self.sent.setdefault(self.today, {}).setdefault(user, []).append(
            (name, event, body["userContext"]["ideCategory"]))

    @precondition(lambda self: self.bodies)
    @rule(pick=st.integers(0, 10**6))
    def repeat(self, pick: int) -> None:
        """A client retries a request it sent before: stored once, answered as stored."""
        user, raw = self.bodies[pick % len(self.bodies)]
        assert self._append(user, raw) == 0
        self.repeats += 1

    @rule(user=st.sampled_from(USERS), member=st.sampled_from(MEMBERS))
    def crash_after_commit(self, user: str, member: str) -> None:
        """The writer dies after its commit's fsync, before it writes the counters: the event
        is stored (and was acknowledged); the counters catch up from the watermark at start."""
        body = simulate.request_body(member, self.rng, user_id=user, ts=self.now)
        raw = orjson.dumps(body)
        req = events.parse_request(raw)
        log = self._log()
        prepared = log._prepare([[LandingRecord(ACCOUNT, user, req.member, req.client_token,
                                                req.opt_out, req.client_timestamp,
                                                req.ide_category, "model", raw)]])
        landing.insert_rows(log._conn, prepared.rows)
        self.bodies.append((user, raw))
        [(name, event)] = body["telemetryEvent"].items()
        self.sent.setdefault(self.today, {}).setdefault(user, []).append(
            (name, event, body["userContext"]["ideCategory"]))
        self.crash_and_reopen()

    @rule(hours=st.sampled_from([0.5, 3, 9, 24]))
    def advance(self, hours: float) -> None:
        self.now += hours * 3600

    @rule()
    def crash_and_reopen(self) -> None:
        """The process dies: no orderly close (the counters' last write may be lost)."""
        log = self._log()
        log._conn.close()
        os.close(log._lock_fd)
        self.log = None
        self.crashes += 1

    @precondition(lambda self: any(d < self.today for d in self._days()))
    @rule(pick=st.integers(0, 10**6), failures=st.sampled_from([0, 0, 1, 3]))
    def report(self, pick: int, failures: int) -> None:
        closed = sorted(d for d in self._days() if d < self.today)
        day = closed[pick % len(closed)]
        self.dest.failures = failures
        TOTALS["failed_puts"] += min(failures, 1)
        out = daily.deliver_day(self.config, ACCOUNT, day, now=lambda: self.now,
                                destination=self.dest)
        if out.state == "failed":
            assert day not in self.delivered
            self.last_failed = True
            return
        assert out.state in ("delivered", "already_delivered")
        if out.state == "delivered":
            self.last_failed = False
        files = self._files(day)
        if day in self.delivered:
            assert files == self.delivered[day]  # never changed once delivered
        self.delivered[day] = files
        assert self._rows(files) == self._expected(day)
        # and the full DuckDB rebuild of the day agrees with the model too
        rebuilt = rebuild_day(self.config.landing_db, ACCOUNT, day)
        assert {u: dict(zip([m.name for m in metrics.METRICS], v, strict=True))
                for u, v in rebuilt.rows} == self._expected(day)

    def _days(self) -> set[date]:
        # days with events, and the day the account was enabled (an empty report is one too)
        return {*self.sent, day_of(int(START * 1e6))}

    def _expected(self, day: date) -> dict[str, dict[str, int]]:
        return {u: metrics.evaluate(evs) for u, evs in self.sent.get(day, {}).items()}

    def _files(self, day: date) -> dict[str, bytes]:
        root = self.config.data_dir / "reports"
        stamp = f"_{day:%Y%m%d}0000"
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and stamp in p.name}

    @staticmethod
    def _rows(files: dict[str, bytes]) -> dict[str, dict[str, int]]:
        names = metrics.column_metric()
        out = {}
        for key, data in files.items():
            if not key.endswith(".csv"):
                continue
            for row in list(csv.reader(io.StringIO(data.decode(), newline="")))[1:]:
                user = row[0][1:] if row[0].startswith("'") else row[0]
                out[user] = dict(zip(names, map(int, row[2:]), strict=True))
        return out

    @invariant()
    def counters_equal_the_model(self) -> None:
        if not hasattr(self, "config"):
            return
        for day in self._days():
            agg = counted_day(self.config.landing_db, ACCOUNT, day)
            got = {u: dict(zip([m.name for m in metrics.METRICS], v, strict=True))
                   for u, v in agg.rows}
            assert got == self._expected(day), day

    @invariant()
    def delivered_days_stay_as_delivered(self) -> None:
        for day, files in getattr(self, "delivered", {}).items():
            assert self._files(day) == files

    @invariant()
    def the_admin_sees_an_error_while_a_delivery_failed(self) -> None:
        if not hasattr(self, "config"):
            return
        conn = store.connect(self.config.control_db)
        try:
            shown = daily.status(conn, ACCOUNT)["last_error"]
        finally:
            conn.close()
        assert (shown is not None) == self.last_failed

    def teardown(self) -> None:
        if getattr(self, "log", None) is not None:
            assert self.log is not None
            self.log.close()
        if hasattr(self, "crashes"):  # set last in start(): the example got going
            TOTALS["runs"] += 1
            TOTALS["days"] += len(self._days())
            TOTALS["delivered"] += len(self.delivered)
            TOTALS["crashes"] += self.crashes
            TOTALS["repeats"] += self.repeats


def test_landing_counters_and_ledger_follow_the_model(tmp_path: Path,
                                                      monkeypatch: Any) -> None:
    monkeypatch.setenv("MODEL_TMP", str(tmp_path))
    run = settings(max_examples=int(os.environ.get("KIRO_ACTIVITY_MODEL_EXAMPLES", "40")),
                   stateful_step_count=40, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    LedgerMachine.TestCase.settings = run
    LedgerMachine.TestCase().runTest()
    print("model: " + " ".join(f"{k}={v}" for k, v in TOTALS.items())
          + " invariant_violations=0")

