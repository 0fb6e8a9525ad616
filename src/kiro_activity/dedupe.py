"""Exactly-once by clientToken without a random-key index on disk.

A unique index on (account, user, clientToken) makes every insert touch a random B-tree page: in
SQLite that cut batched inserts from ~110k to ~30k rows/s (bench/RESULTS.md). Instead each stored
event with a clientToken carries a 64-bit keyed hash of (account, user, clientToken) in an
unindexed column, and the writer keeps the hashes of the dedupe window (``dedupe_days``) in
memory, one set per UTC receipt day, rebuilt from the log when it opens. Writes stay
sequential.

Cost and limits, stated: about 70 bytes of memory per event with a clientToken within the
dedupe window (1 M events: ~70 MB); a false "duplicate" needs two different (account, user,
clientToken) with the same 64-bit hash: with n keys retained, each new event has a chance of
n / 2**64 (5e-14 for a million keys).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

DAY_US = 86_400 * 1_000_000


def dedupe_key(account_id: str, user_id: str, client_token: str) -> int:
    """The signed 64-bit hash that stands for (account, user, clientToken)."""
    raw = f"{account_id}\x1f{user_id}\x1f{client_token}".encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(raw, digest_size=8, person=b"kiro-dedupe").digest()
    return int.from_bytes(digest, "big", signed=True)


def dedupe_keys(account_id: str, user_id: str) -> Callable[[str], int]:
    """:func:`dedupe_key` of one user's tokens (a batch): the hash of the shared prefix is
    taken once."""
    prefix = hashlib.blake2b(f"{account_id}\x1f{user_id}\x1f".encode("utf-8", "surrogatepass"),
                             digest_size=8, person=b"kiro-dedupe")

    def key(client_token: str) -> int:
        h = prefix.copy()
        h.update(client_token.encode("utf-8", "surrogatepass"))
        return int.from_bytes(h.digest(), "big", signed=True)

    return key


class DedupeIndex:
    """The keys seen within the dedupe window, one set per UTC receipt day."""

    def __init__(self, window_days: int) -> None:
        self.window_days = window_days
        self._days: dict[int, set[int]] = {}

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._days.values())

    def __contains__(self, key: int) -> bool:
        return any(key in keys for keys in self._days.values())

    def sets(self) -> list[set[int]]:
        """The days' sets, for a caller that tests many keys at once."""
        return list(self._days.values())

    def add(self, day: int, keys: Iterable[int]) -> None:
        self._days.setdefault(day, set()).update(keys)

    def load(self, rows: Iterable[tuple[int, int]]) -> None:
        """Add (received_us, key) rows, as read back from the log."""
        for received_us, key in rows:
            self._days.setdefault(received_us // DAY_US, set()).add(key)

    def expire(self, now_us: int) -> None:
        """Forget the days that have left the dedupe window."""
        oldest = now_us // DAY_US - self.window_days
        for day in [d for d in self._days if d < oldest]:
            del self._days[day]

    def oldest_kept_us(self, now_us: int) -> int:
        return (now_us // DAY_US - self.window_days) * DAY_US
