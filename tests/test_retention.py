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
from kiro_activity import archive, daily, events, landing, retention, settings, simulate, store
from kiro_activity.aggregate import counted_day, rebuild_day
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
    cut = today - timedelta(days=config.dedupe_days)
    keep_from = today - timedelta(days=config.retention_days)
    before = {(a, d): rebuild_day(config.landing_db, a, d) for a in (ACCOUNT, OTHER_ACCOUNT)
              for d in days}
    counted = {(a, d): counted_day(config.landing_db, a, d) for a in (ACCOUNT, OTHER_ACCOUNT)
               for d in days}
    # the disk is full while sealing: nothing is sealed, so nothing leaves the landing log
    real_write = archive._write

    def full_disk(source: Any, final: Path) -> tuple[int, int, str]:
        if OTHER_ACCOUNT in str(final):
            raise OSError(28, "No space left on device")
        return real_write(source, final)

    monkeypatch.setattr(archive, "_write", full_disk)
    done = retention.purge(config, noon(today))
    assert done.events_deleted == 0 and landing_days(config) == {
        k: 60 for k in before}
    assert {(a, d) for a, d, _ in done.kept} == {(a, d) for a, d in before if d < cut}
    assert all("not sealed yet" in why for _, _, why in done.kept)
    assert list(config.archive_dir.rglob("*.parquet")) == []  # no half-written segment left
    monkeypatch.setattr(archive, "_write", real_write)
    # sealed; then one day's segment is damaged on disk (a flipped byte, a lost file)
    archive.seal(config.landing_db, config.archive_dir, now=noon(today))
    [damaged] = archive.day_files(config.landing_db, config.archive_dir, ACCOUNT,
                                  today - timedelta(days=5))
    damaged.write_bytes(damaged.read_bytes()[:-100])
    done = retention.purge(config, noon(today))
    left = landing_days(config)
    for account in (ACCOUNT, OTHER_ACCOUNT):
        for day in days:
            files = archive.day_files(config.landing_db, config.archive_dir, account, day)
            assert ((account, day) in left) == (day >= cut), (account, day)
            assert bool(files) == (day >= keep_from), (account, day)
    assert done.kept == [] and damaged.exists()  # written again from the landing log first
    # inside the retention: the same report, rebuilt from the archive (and the tail), and
    # counted; past it, nothing left
    for (account, day), agg in before.items():
        if day < keep_from:
            assert counted_day(config.landing_db, account, day).rows == []
            continue
        again = rebuild_day(config.landing_db, account, day, config.archive_dir)
        assert again.rows == agg.rows and again.events == agg.events
        assert counted_day(config.landing_db, account, day).rows == counted[(account, day)].rows
    print(f"retention: days={len(days)} events_deleted={done.events_deleted} "
          f"kept_while_unsealed={len(before) - 2 * 3} repaired=1 reports_changed=0")


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
    archived = sorted(p.parent.name for p in (config.archive_dir / ACCOUNT).rglob("*.parquet"))
    assert len(set(archived)) == len(archived) <= config.retention_days + 1, archived


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
