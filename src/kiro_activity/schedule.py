"""The schedule: at 00:00 UTC, every enabled account's day that just closed; at start, catch up;
after each run, the retention (:mod:`.retention`).

Time is an argument: the :class:`Scheduler` reads an injected clock, so tests cross midnight in
seconds. Production and delivery are blocking (DuckDB, boto3) and run in a worker thread; a day
that fails is retried with backoff and jitter, per account, oldest day first, and shown as the
account's last delivery error meanwhile (see :mod:`.daily`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from . import archive, replicas, retention, settings, store, usage
from .config import Config
from .daily import Outcome, deliver_day, due_days
from .deliver import Backoff
from .store import connect

log = logging.getLogger(__name__)


def next_midnight(now: float) -> float:
    """The next 00:00 UTC strictly after ``now`` (epoch seconds)."""
    today = datetime.fromtimestamp(now, UTC).date()
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC) + timedelta(days=1)
    return midnight.timestamp()


class Scheduler:
    """Produces and delivers due days; remembers, per account, when to try a failing one again."""

    def __init__(self, config: Config, clock: Callable[[], float],
                 backoff: Backoff | None = None, rng: random.Random | None = None) -> None:
        self.config = config
        self.clock = clock
        self.backoff = backoff or Backoff(base=5.0, cap=900.0)
        self.rng = rng or random.Random()
        self.failures: dict[str, int] = {}
        self.retry_at: dict[str, float] = {}
        self.next_seal = 0.0  # the archive's next sealing (every config.seal_interval)

    def run_due(self) -> list[Outcome]:
        """Deliver every due day of every enabled account (oldest first; an account stops at
        its first failure and is tried again after its backoff)."""
        now = self.clock()
        conn = connect(self.config.control)
        try:
            work = {a: due_days(conn, a, now=now, retention_days=self.config.retention_days)
                    for a in settings.enabled_accounts(conn)}
        finally:
            conn.close()
        outcomes = []
        for account_id, days in work.items():
            if self.retry_at.get(account_id, 0.0) > now:
                continue
            for day in days:
                outcome = deliver_day(self.config, account_id, day, now=self.clock)
                outcomes.append(outcome)
                if outcome.state in ("waiting", "claimed"):  # replicas: not this one's turn yet
                    self.retry_at[account_id] = now + replicas.WAIT_S
                    log.info("report of %s for %s: %s", account_id, day, outcome.note)
                    break
                if outcome.state == "failed":
                    n = self.failures.get(account_id, 0)
                    self.failures[account_id] = n + 1
                    self.retry_at[account_id] = now + self.backoff.delay(n, self.rng)
                    log.warning("report of %s for %s not delivered yet: %s", account_id, day,
                                outcome.error)
                    break
                self.failures.pop(account_id, None)
                self.retry_at.pop(account_id, None)
        self._warm(now)
        self.seal()
        self._purge(now)
        return outcomes

    def _purge(self, now: float) -> None:
        """Apply the retention (best effort: what cannot be archived stays, see
        :mod:`.retention`; the next run tries again)."""
        try:
            done = retention.purge(self.config, now)
        except Exception:
            log.exception("the retention run failed; nothing it had not finished was deleted")
            return
        if done.events_deleted or done.kept or done.archive_days_deleted:
            log.warning("retention: %s", done.summary())

    def _warm(self, now: float) -> None:
        """Snapshot every account's settled days of the last 90 for the dashboard (best
        effort: a dashboard reads the counters itself when a snapshot is missing)."""
        today = datetime.fromtimestamp(now, UTC).date()
        back = min(90, self.config.retention_days)  # older days leave with the retention
        days = [today - timedelta(days=i) for i in range(back, 0, -1)]
        conn = connect(self.config.control)
        try:
            accounts = [a.account_id for a in store.list_accounts(conn)]
        finally:
            conn.close()
        for account_id in accounts:
            try:
                usage.warm(self.config, account_id, days, now)
            except Exception:
                log.exception("could not snapshot the usage of %s for the dashboard",
                              account_id)

    def seal(self) -> None:
        """Seal what the landing log holds past the archive's mark, then put the new segments
        in the accounts' buckets (best effort: the events stay in the landing log until sealed,
        and the next run tries again)."""
        self.next_seal = self.clock() + self.config.seal_interval
        try:
            archive.seal(self.config.landing_db, self.config.archive_dir, now=self.clock(),
                         replica=self.config.replica)
        except Exception:
            log.exception("could not seal the archive (the events stay in the landing log)")
        try:  # with replicas: alive, and the days this one has sealed for good
            replicas.register(self.config, self.clock())
            replicas.publish(self.config, self.clock())
        except Exception:
            log.exception("could not publish this replica's sealed days (tried again at the "
                          "next sealing)")
        try:
            archive.upload(self.config)  # the copy in each account's bucket
        except Exception:
            log.exception("could not put the archive in the accounts' buckets (tried again "
                          "at the next sealing)")

    def next_wake(self, since: float | None = None) -> float:
        """When to run next: the first midnight (or dashboard settling, or retry) after
        ``since`` (default: now). A run that started before a midnight and ended after it
        passes its start, so that the midnight it overran is not skipped."""
        now = self.clock() if since is None else since
        settle = next_midnight(now) - 86_400 + usage.GRACE_SECONDS + 1  # the dashboard's warm-up
        if settle <= now:
            settle += 86_400
        return min([next_midnight(now), settle, *[t for t in self.retry_at.values() if t > now]])

    async def run(self, stop: asyncio.Event, barrier: Callable[[], Awaitable[None]],
                  tick: float = 0.5) -> None:
        """Catch up at once, then wake at every midnight (and retry time) until ``stop``,
        sealing the archive every ``seal_interval`` seconds in between."""
        while not stop.is_set():
            await barrier()  # every event received before now is committed
            started = self.clock()
            try:
                await asyncio.to_thread(self.run_due)
            except Exception:
                log.exception("the daily run failed; trying again later")
                self.retry_at["*"] = self.clock() + 60
            wake = self.next_wake(since=started)  # a midnight passed during the run: now
            while not stop.is_set() and self.clock() < wake:
                if self.clock() >= self.next_seal:  # between the daily runs: the archive
                    await asyncio.to_thread(self.seal)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=min(
                        tick, wake - self.clock(), max(0.0, self.next_seal - self.clock())))
