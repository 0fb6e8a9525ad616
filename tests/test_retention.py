"""Retention (#10): raw events leave the landing log only once the archive holds them; days
past the retention leave the archive, the counters, the dashboard's snapshots and the ledger;
a report of a day inside the retention is the same after the purge; under steady traffic the
data folder stops growing."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import ACCOUNT, OTHER_ACCOUNT, cli, setup_accounts
from kiro_activity import daily, events, landing, retention, settings, simulate, store
from kiro_activity.aggregate import counted_day, rebuild_day, seal_day, sealed_path
from kiro_activity.config import Config
from kiro_activity.errors import UsageError
from kiro_activity.landing import LandingLog, LandingRecord
from kiro_activity.schedule import Scheduler

FIRST = date(2026, 10, 1)
EPOCH_FIRST = (FIRST - date(1970, 1, 1)).days
MEMBERS = ["userTriggerDecisionEvent", "chatAddMessageEvent", "inlineChatEvent",
           "codeScanSucceededEvent", "chatInteractWithMessageEvent"]


def noon(day: date) -> float:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()


def records(account: str, day: date, n: int, rng: random.Random) -> list[LandingRecord]:
    out = []
    for i in range(n):
        member = MEMBERS[i % len(MEMBERS)]
        user = f"user{rng.randrange(40):02d}"
        raw = orjson.dumps(simulate.request_body(member, rng, user_id=user, ts=noon(day)))
        req = events.parse_request(raw)
        out.append(LandingRecord(account, user, req.member, req.client_token, req.opt_out,
                                 req.client_timestamp, req.ide_category, "test", raw))
    return out


def fill(config: Config, days: list[date], per_day: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    clock = [noon(days[0])]
    log = LandingLog(config.landing_db, clock=lambda: clock[0], dedupe_days=config.dedupe_days)
    try:
        for day in days:
            clock[0] = noon(day)
            for account in (ACCOUNT, OTHER_ACCOUNT):
                log.append_sync(records(account, day, per_day, rng))
    finally:
        log.close()


def landing_days(config: Config) -> dict[tuple[str, date], int]:
    conn = landing.connect(config.landing_db)
    try:
        return {(a, FIRST + timedelta(days=d - EPOCH_FIRST)): n for a, d, n in conn.execute(
            "SELECT account_id, received_us / 86400000000, count(*) FROM events GROUP BY 1, 2")}
    finally:
        conn.close()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    c = replace(Config(data_dir=tmp_path / "data"), dedupe_days=3, retention_days=6)
    setup_accounts(c.data_dir)
    return c


def test_events_leave_the_landing_log_only_once_archived(config: Config,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    days = [FIRST + timedelta(days=i) for i in range(10)]
    fill(config, days, 60)
    today = days[-1]  # dedupe window: days >= today-3 stay; retention: days >= today-6 kept
    # one day was sealed before more of its events arrived, another's file is torn: both
    # must be sealed again before their events leave the log
    stale, torn = today - timedelta(days=5), today - timedelta(days=6)
    for day in (stale, torn):
        seal_day(config.landing_db, config.archive_dir, ACCOUNT, day)
    clock = [noon(stale)]
    log = LandingLog(config.landing_db, clock=lambda: clock[0], dedupe_days=3)
    try:
        log.append_sync(records(ACCOUNT, stale, 5, random.Random(9)))
        clock[0] = noon(today)  # and the newest event is today's again (the newest stays)
        log.append_sync(records(ACCOUNT, today, 1, random.Random(10)))
    finally:
        log.close()
    before = {(a, d): rebuild_day(config.landing_db, a, d) for a in (ACCOUNT, OTHER_ACCOUNT)
              for d in days}
    counted = {(a, d): counted_day(config.landing_db, a, d) for a in (ACCOUNT, OTHER_ACCOUNT)
               for d in days}
    sealed_path(config.archive_dir, ACCOUNT, torn).write_bytes(b"PAR1")
    # and sealing fails for another day: its events must stay
    broken = today - timedelta(days=4)
    real_seal = retention.seal_day

    def flaky_seal(landing_db: Path, archive_dir: Path, account_id: str, day: date) -> Path:
        if day == broken and account_id == OTHER_ACCOUNT:
            raise OSError("No space left on device")
        return real_seal(landing_db, archive_dir, account_id, day)

    monkeypatch.setattr(retention, "seal_day", flaky_seal)
    done = retention.purge(config, noon(today))
    left = landing_days(config)
    cut = today - timedelta(days=config.dedupe_days)
    keep_from = today - timedelta(days=config.retention_days)
    for account in (ACCOUNT, OTHER_ACCOUNT):
        for day in days:
            in_log = (account, day) in left
            archived = sealed_path(config.archive_dir, account, day).exists()
            if day >= cut:
                assert in_log, (account, day)  # within the dedupe window: kept
            elif (account, day) == (OTHER_ACCOUNT, broken):
                assert in_log and not archived  # could not be archived: kept
            else:
                assert not in_log, (account, day)
            assert archived == (keep_from <= day < cut and (account, day)
                                != (OTHER_ACCOUNT, broken)), (account, day)
    assert done.kept == [(OTHER_ACCOUNT, broken, "not sealed: No space left on device")]
    # inside the retention: the same report, rebuilt from the archive or the log, and counted
    for (account, day), agg in before.items():
        if day < keep_from:
            assert counted_day(config.landing_db, account, day).rows == []
            continue
        again = rebuild_day(config.landing_db, account, day, config.archive_dir)
        assert sorted(again.rows) == sorted(agg.rows) and again.events == agg.events
        assert counted_day(config.landing_db, account, day).rows == counted[(account, day)].rows
    # the next run, once the disk is back, archives the kept day and removes it from the log
    monkeypatch.setattr(retention, "seal_day", real_seal)
    again_done = retention.purge(config, noon(today))
    assert (OTHER_ACCOUNT, broken) not in landing_days(config) and not again_done.kept
    deleted = done.events_deleted + again_done.events_deleted
    print(f"retention: days={len(days)} events_deleted={deleted} kept_unarchived=1 "
          f"resealed={done.sealed} reports_changed=0")


def test_a_report_inside_the_retention_is_unchanged_and_one_past_it_is_refused(
        config: Config) -> None:
    days = [FIRST + timedelta(days=i) for i in range(10)]
    fill(config, days, 40)
    today = days[-1]
    conn = store.connect(config.control_db)
    account = store.require_account(conn, ACCOUNT)
    s = settings.get(conn, ACCOUNT)
    conn.close()
    now = noon(today)
    inside = [d for d in days if d >= today - timedelta(days=config.retention_days)
              and d < today]
    drops = {(d, r): daily.render(config, account, s, d, now=now, rebuild=r)
             for d in inside for r in (False, True)}
    retention.purge(config, now)
    for (d, r), drop in drops.items():
        after = daily.render(config, account, s, d, now=now, rebuild=r)
        assert [(o.key, o.data) for o in after.objects if o.key.endswith(".csv")] == [
            (o.key, o.data) for o in drop.objects if o.key.endswith(".csv")], (d, r)
    past = today - timedelta(days=config.retention_days + 1)
    with pytest.raises(UsageError, match=r"past the retention of 6 days \(the first day kept "
                                         r"is 2026-10-04\)"):
        daily.render(config, account, s, past, now=now)


def test_the_data_folder_stops_growing_under_steady_traffic(config: Config) -> None:
    """40 simulated days of the same traffic, the real schedule at every midnight (deliveries
    to the local folder, then the retention): the data folder is flat once the windows are
    full."""
    conn = store.connect(config.control_db)
    settings.update(conn, ACCOUNT, {"enabled": True}, actor="test", now=noon(FIRST),
                    today=FIRST, writer=config.writer_principal)
    conn.close()
    now = [noon(FIRST)]
    sched = Scheduler(config, clock=lambda: now[0])
    rng = random.Random(3)
    sizes: list[int] = []
    for i in range(40):
        day = FIRST + timedelta(days=i)
        now[0] = noon(day)
        log = LandingLog(config.landing_db, clock=lambda: now[0],
                         dedupe_days=config.dedupe_days)
        try:
            for account in (ACCOUNT, OTHER_ACCOUNT):
                log.append_sync(records(account, day, 400, rng))
        finally:
            log.close()
        now[0] = noon(day) + 12 * 3600 + 60  # just past midnight: the daily run
        sched.run_due()
        sizes.append(folder_size(config.data_dir, exclude="reports"))
    grown = max(sizes[20:]) / sizes[15]
    print("retention-soak: days=40 data_kib_day10={} day20={} day30={} day40={} "
          "growth_after_windows={:.2f}".format(*(s // 1024 for s in
                                                 (sizes[9], sizes[19], sizes[29], sizes[39])),
                                               grown))
    assert grown < 1.15, sizes
    assert min(d for _, d in landing_days(config)) >= FIRST + timedelta(days=40 - 1 - 3)
    archived = sorted(p.name for p in (config.archive_dir / ACCOUNT).glob("*.parquet"))
    assert len(archived) <= config.retention_days + 1, archived


def folder_size(root: Path, exclude: str) -> int:
    return sum(p.stat().st_size for p in root.rglob("*")
               if p.is_file() and exclude not in p.relative_to(root).parts)


def test_purge_from_the_command_line(config: Config, tmp_path: Path) -> None:
    days = [date.today() - timedelta(days=i) for i in range(40, 0, -1)]
    fill(config, days, 10)
    done = cli(config.data_dir, "purge")
    assert done.returncode == 0, done.stderr
    assert "deleted" in done.stdout and "raw event(s) from the landing log" in done.stdout
    left: Any = landing_days(config)
    assert min(d for _, d in left) >= date.today() - timedelta(days=30)  # the defaults


def test_the_newest_event_is_kept_so_that_numbering_never_restarts(config: Config) -> None:
    """After a silence longer than the dedupe window every event is old enough to go, but the
    newest stays: the next event must get a number above every number ever given (the
    counters' watermark relies on it)."""
    days = [FIRST + timedelta(days=i) for i in range(3)]
    fill(config, days, 5)
    conn = landing.connect(config.landing_db)
    top = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
    conn.close()
    retention.purge(config, noon(FIRST + timedelta(days=60)))
    conn = landing.connect(config.landing_db)
    try:
        assert conn.execute("SELECT seq FROM events").fetchall() == [(top,)]
    finally:
        conn.close()
    fill(config, [FIRST + timedelta(days=60)], 1)
    conn = landing.connect(config.landing_db)
    try:
        assert min(s for (s,) in conn.execute("SELECT seq FROM events")) == top
        assert conn.execute("SELECT max(seq) FROM events").fetchone()[0] > top
    finally:
        conn.close()
