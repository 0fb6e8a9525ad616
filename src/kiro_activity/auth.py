"""Who is calling, and how fast: bearer-token authentication and the per-token rate limit.

The token table lives in the control database, which CLI commands change while the service runs.
Lookups are cached per process and the whole cache is dropped whenever another connection has
committed to that database (``PRAGMA data_version``). Asking SQLite that costs a few file-lock
system calls, so it is asked at most every ``recheck`` seconds (default 20 ms): an issued token
works, and a revoked one is refused, within 20 ms of the command that changed it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from . import store
from .errors import AccessDeniedError, ThrottlingError, retry_seconds
from .store import Principal

DENIED = "the bearer token is missing, unknown, revoked or expired"


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or AccessDeniedError."""
    if not authorization:
        raise AccessDeniedError(
            "missing Authorization header; send 'Authorization: Bearer <token>'"
        )
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AccessDeniedError("the Authorization header must be 'Bearer <token>'")
    return token.strip()


class Authenticator:
    """Maps tokens to principals through the control database, with a coherent cache."""

    def __init__(self, control_db: store.Target, *, clock: Callable[[], float] = time.time,
                 recheck: float = 0.02) -> None:
        self._conn = store.connect(control_db)
        self._clock = clock
        self._cache: dict[str, Principal | None] = {}
        self._version = self._data_version()
        self._accounts: dict[str, store.Account | None] = {}
        self._recheck = recheck
        self._checked = time.monotonic()

    def close(self) -> None:
        self._conn.close()

    def _data_version(self) -> int:
        return store.data_version(self._conn)

    def principal(self, authorization: str | None, *, kind: str = "user") -> Principal:
        """The live principal of the header's token, of the given kind, or AccessDeniedError."""
        found = self.lookup(bearer_token(authorization))
        if found is None:
            raise AccessDeniedError(DENIED)
        if found.kind != kind:
            raise AccessDeniedError(
                f"this operation needs a {kind} token, not an {found.kind} token"
            )
        return found

    def lookup(self, token: str) -> Principal | None:
        """The live principal of a token, or None (unknown, revoked or expired)."""
        if len(token) != store.TOKEN_LENGTH or not token.startswith(store.TOKEN_PREFIX):
            return None  # not a token we issue: nothing to look up (or to cache)
        self._refresh()
        now = self._clock()
        if token in self._cache:
            found = self._cache[token]
        else:
            found = store.lookup_token(self._conn, token, now=now)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[token] = found
        if found is None or (found.expires_at is not None and found.expires_at <= now):
            return None
        return found

    def _refresh(self) -> None:
        """Drop the cache if another connection changed the control database."""
        mono = time.monotonic()
        if mono - self._checked < self._recheck:
            return
        self._checked = mono
        version = self._data_version()
        if version != self._version:
            self._cache.clear()
            self._accounts.clear()
            self._version = version

    def account(self, account_id: str) -> store.Account | None:
        self._refresh()
        if account_id not in self._accounts:
            self._accounts[account_id] = store.get_account(self._conn, account_id)
        return self._accounts[account_id]


class RateLimiter:
    """A token bucket per bearer token: ``rate`` units/s sustained, ``burst`` at once (the units
    are requests, or events: ``what``)."""

    def __init__(
        self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic,
        what: str = "requests",
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.what = what
        self._clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}

    def take(self, key: int, wanted: int) -> tuple[int, float]:
        """Take up to ``wanted`` whole units from the key's bucket: how many were granted, and
        when (seconds) the rest could be; ThrottlingError when not even one is available."""
        if self.rate <= 0:
            return wanted, 0.0
        now = self._clock()
        level, last = self._buckets.get(key, (self.burst, now))
        level = min(self.burst, level + (now - last) * self.rate)
        granted = min(wanted, int(level))
        self._buckets[key] = (level - granted, now)
        if granted == 0 < wanted:
            wait = (1 - level) / self.rate
            raise ThrottlingError(self._message(wait), retry_after=wait)
        rest = min(wanted - granted, self.burst)
        return granted, max(0.0, (rest - (level - granted)) / self.rate)

    def _message(self, wait: float) -> str:
        return (f"rate limit of {self.rate:g} {self.what}/s per token (burst {self.burst:g})"
                f" exceeded; retry in {retry_seconds(wait)} s")

    def check(self, key: int, cost: float = 1.0) -> None:
        """Take ``cost`` from the key's bucket or raise ThrottlingError with a Retry-After."""
        if self.rate <= 0:
            return
        now = self._clock()
        level, last = self._buckets.get(key, (self.burst, now))
        level = min(self.burst, level + (now - last) * self.rate)
        if level < cost:
            self._buckets[key] = (level, now)
            wait = (cost - level) / self.rate
            raise ThrottlingError(
                f"rate limit of {self.rate:g} requests/s per token exceeded; retry in "
                f"{retry_seconds(wait)} s",
                retry_after=wait,
            )
        self._buckets[key] = (level - cost, now)


class FailureLimiter:
    """Failed authentications per source address (a bad or missing bearer token, a refused
    login): ``limit`` of them within ``window`` seconds, then every request of that source is
    refused until the allowance refills (a token bucket of failures), so that tokens cannot be
    guessed at speed; other sources are not affected. ``limit`` 0 turns it off."""

    def __init__(self, limit: int, window: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window = limit, window
        self._rate = limit / window if limit > 0 and window > 0 else 0.0
        self._clock = clock
        self._sources: dict[str, tuple[float, float]] = {}

    def _level(self, source: str, now: float) -> float:
        level, last = self._sources.get(source, (float(self.limit), now))
        return min(float(self.limit), level + (now - last) * self._rate)

    def blocked(self, source: str) -> str | None:
        """Why ``source`` is refused now (with when to retry), or None."""
        if not self._rate or source not in self._sources:
            return None
        level = self._level(source, self._clock())
        if level >= 1:
            return None
        return (f"too many failed authentications from {source} ({self.limit} within "
                f"{self.window:g} s); retry in {retry_seconds(self.retry_after(source))} s")

    def retry_after(self, source: str) -> float:
        return max(1.0, (1 - self._level(source, self._clock())) / self._rate)

    def failed(self, source: str) -> None:
        """Count one failure of ``source``."""
        if not self._rate:
            return
        if len(self._sources) > 100_000:
            self._sources.clear()  # bounded memory; a flood of sources only resets the count
        now = self._clock()
        self._sources[source] = (self._level(source, now) - 1, now)
