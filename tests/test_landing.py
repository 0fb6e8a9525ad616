"""The landing log and the edges under it: group commit, dedupe, receipt time, the body reader,
the rate limiter and the token cache."""

from __future__ import annotations

import asyncio
import errno
import gzip
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiro_activity import landing, store
from kiro_activity.auth import Authenticator, RateLimiter
from kiro_activity.body import read_body
from kiro_activity.errors import (
    AccessDeniedError,
    StoreUnavailableError,
    ThrottlingError,
    ValidationError,
)
from kiro_activity.landing import LandingLog, LandingRecord, read_events


def record(token: str | None, user: str = "u") -> LandingRecord:
    return LandingRecord("111122223333", user, "featureDevEvent", token, None, None, None,
                         "test", b"{}")


def test_concurrent_appends_share_group_commits(tmp_path: Path) -> None:
    log = LandingLog(tmp_path / "landing.db", clock=lambda: 1764547200.5)

    async def main() -> list[int]:
        return await asyncio.gather(*(log.append([record(f"t{i}")]) for i in range(500)))

    try:
        results = asyncio.run(main())
    finally:
        log.close()
    assert results == [1] * 500
    assert log.commits < 100  # 500 requests, far fewer fsyncs
    rows = read_events(tmp_path / "landing.db")
    assert len(rows) == 500
    assert {r["received_us"] for r in rows} == {1764547200500000}


def test_dedupe_is_per_user_and_only_with_client_token(tmp_path: Path) -> None:
    log = LandingLog(tmp_path / "landing.db")
    try:
        assert log.append_sync([record("a"), record("a"), record("a", "other")]) == 2
        assert log.append_sync([record("a")]) == 0
        assert log.append_sync([record(None), record(None)]) == 2
    finally:
        log.close()
    assert len(read_events(tmp_path / "landing.db")) == 4


def test_dedupe_survives_reopen_and_ends_with_the_retention(tmp_path: Path) -> None:
    now = [1764547200.0]
    path = tmp_path / "landing.db"
    for expected in (1, 0):  # the second log, opened afresh, knows the first one's keys
        log = LandingLog(path, clock=lambda: now[0], dedupe_days=2)
        try:
            assert log.append_sync([record("k")]) == expected
        finally:
            log.close()
    now[0] += 86400 * 2  # still within two days of retention
    log = LandingLog(path, clock=lambda: now[0], dedupe_days=2)
    try:
        assert log.append_sync([record("k")]) == 0
        now[0] += 86400  # the day of the first send has left the retention window
        assert log.append_sync([record("k")]) == 1
        assert log.append_sync([record("k")]) == 0
    finally:
        log.close()


def test_failed_commit_does_not_remember_keys(tmp_path: Path) -> None:
    log = LandingLog(tmp_path / "landing.db")
    try:
        log.run_in_writer(lambda c: c.execute("PRAGMA query_only=1"))
        with pytest.raises(Exception, match="could not be stored"):
            log.append_sync([record("retry-me")])
        log.run_in_writer(lambda c: c.execute("PRAGMA query_only=0"))
        assert log.append_sync([record("retry-me")]) == 1  # the retry is stored, once
    finally:
        log.close()


def test_writer_survives_a_failing_commit(tmp_path: Path) -> None:
    log = LandingLog(tmp_path / "landing.db")
    try:
        log.run_in_writer(lambda c: c.execute("PRAGMA query_only=1"))
        with pytest.raises(Exception, match="could not be stored"):
            log.append_sync([record("x")])
        assert not log.healthy
        log.run_in_writer(lambda c: c.execute("PRAGMA query_only=0"))
        assert log.append_sync([record("x")]) == 1
        assert log.healthy
    finally:
        log.close()


def test_then_is_called_when_the_answer_is_read_and_a_failing_one_stops_no_other(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A request's ``then`` runs inside the handling of the writer's answer, before callbacks
    the loop has queued meanwhile (the fast path writes its answer there); one that raises is
    logged, and the rest of its group still get theirs. A failed group reaches ``then`` too."""
    log = LandingLog(tmp_path / "landing.db")
    order: list[str] = []

    def then(name: str, fail: bool = False) -> landing.Then:
        def called(fut: asyncio.Future[int]) -> None:
            order.append(f"{name}={fut.result() if fut.exception() is None else 'error'}")
            if fail:
                raise RuntimeError(f"{name} failed")
        return called

    async def main() -> None:
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(landing.sys, "executable", "/bin/false")  # no writer: a 503
        with pytest.raises(StoreUnavailableError):
            await asyncio.wait_for(log.submit([record("t0")], loop, then("refused")), 10)
        monkeypatch.undo()
        futures = [log.submit([record(f"t{i}")], loop, then(f"r{i}", fail=i == 1))
                   for i in range(3)]
        repeat = log.submit([record("t0")], loop, then("repeat"))
        futures[0].add_done_callback(lambda _: order.append("added callback"))
        await asyncio.wait_for(asyncio.gather(*futures, repeat), timeout=30)

    try:
        asyncio.run(main())
    finally:
        log.close()
    # all four went in one group (the repeat of t0 in it counts 0); the callback added to r0's
    # future ran only after the whole group had its answers
    assert order == ["refused=error", "r0=1", "r1=1", "r2=1", "repeat=0", "added callback"]
    assert "a landing log request's callback failed" in caplog.text
    assert "r1 failed" in caplog.text
    assert len(read_events(tmp_path / "landing.db")) == 3


def test_a_large_group_reaches_the_writer_under_uvloop(tmp_path: Path) -> None:
    """libuv makes a watched socket non-blocking: a group of megabytes is sent as it drains."""
    import uvloop

    log = LandingLog(tmp_path / "landing.db")
    body = b"x" * 600

    async def main() -> list[int]:
        sizes = (10_000, 3, 5_000)
        return [await asyncio.wait_for(log.append(
            [LandingRecord("111122223333", "u", "featureDevEvent", f"{n}-{i}", None, None,
                           None, "test", body) for i in range(n)]), timeout=30) for n in sizes]

    try:
        assert uvloop.run(main()) == [10_000, 3, 5_000]
    finally:
        log.close()
    assert len(read_events(tmp_path / "landing.db")) == 15_003


def test_a_killed_writer_process_is_replaced(tmp_path: Path) -> None:
    log = LandingLog(tmp_path / "landing.db")

    async def main() -> list[int]:
        first = await log.append([record("one")])
        assert log._writer is not None
        writer = log._writer.proc
        writer.kill()  # between groups
        writer.wait()
        await asyncio.sleep(0.05)  # the loop notices
        second = await log.append([record("two")])
        assert log._writer.proc is not writer and log._writer.proc.poll() is None
        return [first, second, await log.append([record("three")])]

    try:
        assert asyncio.run(main()) == [1, 1, 1]
        assert log.healthy
    finally:
        log.close()
    assert [r["client_token"] for r in read_events(tmp_path / "landing.db")] == [
        "one", "two", "three"]


def test_a_group_lost_with_its_writer_is_refused_and_its_retry_stored_once(
        tmp_path: Path) -> None:
    """The writer dies holding a group it never committed: 503, and the retry is stored."""
    log = LandingLog(tmp_path / "landing.db")

    async def main() -> None:
        assert await log.append([record("warm-up")]) == 1
        assert log._writer is not None
        writer = log._writer.proc
        os.kill(writer.pid, signal.SIGSTOP)  # it cannot read the next group
        pending = asyncio.ensure_future(log.append([record("lost")]))
        while log._group is None:
            await asyncio.sleep(0)
        writer.kill()
        with pytest.raises(StoreUnavailableError, match="writer process died"):
            await asyncio.wait_for(pending, timeout=10)
        assert not log.healthy
        assert await log.append([record("lost")]) == 1  # the retry: stored, once
        assert log.healthy

    try:
        asyncio.run(main())
    finally:
        log.close()
    tokens = [r["client_token"] for r in read_events(tmp_path / "landing.db")]
    assert tokens == ["warm-up", "lost"]


def test_groups_go_to_a_busy_writer_at_once_and_are_answered_each(tmp_path: Path) -> None:
    """Requests do not wait for the writer to be free: each turn of the loop sends what came,
    the writer commits all that has arrived together, and every group gets its own answer."""
    log = LandingLog(tmp_path / "landing.db")

    async def main() -> list[int]:
        assert await log.append([record("warm-up")]) == 1
        assert log._writer is not None
        writer = log._writer.proc
        os.kill(writer.pid, signal.SIGSTOP)  # busy: it reads nothing for now
        waiting = []
        for i in range(3):  # three turns of the loop, three groups
            waiting.append(asyncio.ensure_future(log.append([record(f"g{i}"), record(None)])))
            while len(log._groups) < i + 1:
                await asyncio.sleep(0)
        assert not any(w.done() for w in waiting)
        os.kill(writer.pid, signal.SIGCONT)
        return list(await asyncio.gather(*waiting))

    try:
        assert asyncio.run(main()) == [2, 2, 2]
        assert log._last_seq == 7 and not log._groups and not log._inflight
    finally:
        log.close()
    rows = read_events(tmp_path / "landing.db")
    assert [(r["seq"], r["client_token"]) for r in rows] == [
        (1, "warm-up"), (2, "g0"), (3, None), (4, "g1"), (5, None), (6, "g2"), (7, None)]


def test_a_retry_of_an_event_with_the_writer_waits_for_its_answer(tmp_path: Path) -> None:
    """A retry that comes while the first try is being committed is neither stored again nor
    answered before the first is on disk: it waits, then counts as a repeat."""
    log = LandingLog(tmp_path / "landing.db")

    async def main() -> list[int]:
        assert await log.append([record("warm-up")]) == 1
        assert log._writer is not None
        os.kill(log._writer.proc.pid, signal.SIGSTOP)
        first = asyncio.ensure_future(log.append([record("x")]))
        while not log._groups:
            await asyncio.sleep(0)
        retry = asyncio.ensure_future(log.append([record("x")]))
        also = asyncio.ensure_future(log.append([record("y")]))  # not held up by the retry
        while len(log._groups) < 2:
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        assert not first.done() and not retry.done() and len(log._deferred) == 1
        os.kill(log._writer.proc.pid, signal.SIGCONT)
        return [await first, await retry, await also]

    try:
        assert asyncio.run(main()) == [1, 0, 1]
    finally:
        log.close()
    tokens = [r["client_token"] for r in read_events(tmp_path / "landing.db")]
    assert tokens == ["warm-up", "x", "y"]


def test_a_retry_waiting_on_a_lost_group_is_stored_as_new(tmp_path: Path) -> None:
    """The first try's group is lost with its writer: the first is answered 503, the retry
    that waited for it is stored (once) and answered 200. The same for a bulk call's line."""
    log = LandingLog(tmp_path / "landing.db")

    async def main() -> None:
        assert await log.append([record("warm-up")]) == 1
        assert log._writer is not None
        writer = log._writer.proc
        os.kill(writer.pid, signal.SIGSTOP)
        first = asyncio.ensure_future(log.append([record("x")]))
        while not log._groups:
            await asyncio.sleep(0)
        second = asyncio.ensure_future(log.append([record("z")]))
        while len(log._groups) < 2:
            await asyncio.sleep(0)
        retry = asyncio.ensure_future(log.append([record("x")]))
        batch = landing.BatchRecord("111122223333", "u", "test", [], [], [], [], [], [])
        for token in ("z", "w"):
            batch.append(record(token))
        bulk = asyncio.ensure_future(log.append([batch]))
        await asyncio.sleep(0.05)
        assert len(log._deferred) == 2 and len(log._groups) == 2
        writer.kill()
        for lost in (first, second):
            with pytest.raises(StoreUnavailableError, match="writer process died"):
                await asyncio.wait_for(lost, timeout=10)
        assert await asyncio.wait_for(retry, timeout=10) == 1
        assert await asyncio.wait_for(bulk, timeout=10) == 2

    try:
        asyncio.run(main())
    finally:
        log.close()
    tokens = [r["client_token"] for r in read_events(tmp_path / "landing.db")]
    assert tokens == ["warm-up", "x", "z", "w"]


def test_a_lost_writer_stored_the_first_groups_it_had_and_not_the_rest(tmp_path: Path) -> None:
    """Of the groups a dead writer had, the ones whose rows are in the log are the first ones
    sent: those are answered 200, the rest 503; the retries that waited on them are repeats
    and new events accordingly, and what is sent while that is decided goes to the new writer."""
    log = LandingLog(tmp_path / "landing.db")

    async def main() -> list[object]:
        assert await log.append([record("warm-up")]) == 1
        assert log._writer is not None
        writer = log._writer.proc
        os.kill(writer.pid, signal.SIGSTOP)
        sent, retries = [], []
        for token in ("a", "b"):
            sent.append(asyncio.ensure_future(log.append([record(token), record(None)])))
            while len(log._groups) < len(sent):
                await asyncio.sleep(0)
            # a retry with a new event beside it: it waits for this group
            retries.append(asyncio.ensure_future(log.append([record(token),
                                                             record(f"{token}-new")])))
            while len(log._deferred) < len(sent):
                await asyncio.sleep(0)
        # the writer committed the first group, then died before it answered
        log.run_in_writer(lambda conn: landing.insert_rows(conn, log._groups[0].prepared.rows))
        writer.kill()
        results: list[object] = []
        for fut in [*sent, *retries]:
            try:
                results.append(await asyncio.wait_for(fut, timeout=10))
            except StoreUnavailableError:
                results.append("503")
        results.append(await log.append([record("after")]))
        return results

    try:
        # the retry of "a" is a repeat beside a new event, sent to the new writer while the
        # lost groups were still being decided; the retry of "b" is new, with its neighbour
        assert asyncio.run(main()) == [2, "503", 1, 2, 1]
        assert log.healthy
    finally:
        log.close()
    tokens = [r["client_token"] for r in read_events(tmp_path / "landing.db")]
    assert tokens == ["warm-up", "a", None, "a-new", "b", "b-new", "after"]


def test_a_writer_that_cannot_start_gives_503_not_a_hang(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = LandingLog(tmp_path / "landing.db")
    monkeypatch.setattr(landing.sys, "executable", "/bin/false")

    async def main() -> None:
        for token in ("a", "b"):  # one new writer per group, no spinning
            with pytest.raises(StoreUnavailableError):
                await asyncio.wait_for(log.append([record(token)]), timeout=10)
        monkeypatch.undo()
        assert await log.append([record("a")]) == 1  # nothing was stored: now it is
        assert await log.append([record("a")]) == 0

    try:
        asyncio.run(main())
    finally:
        log.close()
    assert len(read_events(tmp_path / "landing.db")) == 1


def test_a_writer_that_cannot_be_spawned_gives_503_and_the_log_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = LandingLog(tmp_path / "landing.db")

    def no_processes(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    async def main() -> None:
        monkeypatch.setattr(landing.subprocess, "Popen", no_processes)
        for token in ("a", "b"):
            with pytest.raises(StoreUnavailableError, match="temporarily unavailable"):
                await asyncio.wait_for(log.append([record(token)]), timeout=10)
        monkeypatch.undo()
        assert await asyncio.wait_for(log.append([record("a")]), timeout=10) == 1

    try:
        asyncio.run(main())
    finally:
        log.close()
    assert len(read_events(tmp_path / "landing.db")) == 1


def test_one_writer_at_a_time_even_when_an_old_writer_outlives_its_parent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock file is shared with the writer process: a log opened again after its parent
    died waits until that parent's writer has finished its last group and exited."""
    monkeypatch.setattr(landing, "LOCK_WAIT", 0.5)
    path = tmp_path / "landing.db"
    old = LandingLog(path)

    async def start_writer() -> None:
        assert await old.append([record("before")]) == 1

    asyncio.run(start_writer())
    assert old._writer is not None
    writer = old._writer.proc
    with pytest.raises(RuntimeError, match="another process is writing"):
        LandingLog(path)  # the running log holds it
    os.kill(writer.pid, signal.SIGSTOP)  # the old parent "dies" while its writer is busy
    old._writer.sock.close()
    os.close(old._lock_fd)
    old._conn.close()
    with pytest.raises(RuntimeError, match="another process is writing"):
        LandingLog(path)  # the orphan writer still holds it
    os.kill(writer.pid, signal.SIGCONT)  # it sees the closed socket and exits
    assert writer.wait(10) == 0
    new = LandingLog(path)
    try:
        with pytest.raises(RuntimeError, match="while the writer process runs"):
            asyncio.run(_append_then_sync(new))
    finally:
        new.close()


async def _append_then_sync(log: LandingLog) -> None:
    await log.append([record("after")])
    log.append_sync([record("sync")])


def test_barrier_waits_for_the_group_in_flight_and_not_for_later_ones(tmp_path: Path) -> None:
    """The daily run's barrier: what was taken before it is durable when it returns, and
    traffic that never pauses does not keep it waiting."""
    log = LandingLog(tmp_path / "landing.db")

    async def main() -> None:
        first = asyncio.ensure_future(log.append([record("first")]))
        while log._group is None:  # the group is taken, inserted, and waits for its sync
            await asyncio.sleep(0)
        assert not first.done()
        await log.barrier()
        assert first.done() and first.result() == 1
        stop = asyncio.Event()

        async def traffic(n: int) -> None:
            i = 0
            while not stop.is_set():
                await log.append([record(f"t{n}-{i}")])
                i += 1

        senders = [asyncio.ensure_future(traffic(n)) for n in range(8)]
        await asyncio.sleep(0.2)
        for _ in range(20):
            await asyncio.wait_for(log.barrier(), timeout=5)
        stop.set()
        await asyncio.gather(*senders)

    try:
        asyncio.run(main())
    finally:
        log.close()


def receive_from(chunks: list[bytes]) -> Any:
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)] or [{"type": "http.request", "body": b""}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)
    return receive


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=5000), st.lists(st.integers(0, 6000), max_size=6), st.booleans())
def test_body_reader_any_chunking(data: bytes, cuts: list[int], gz: bool) -> None:
    wire = gzip.compress(data) if gz else data
    headers = {"content-encoding": "gzip"} if gz else {}
    got = asyncio.run(read_body(receive_from(split(wire, cuts)), headers, 1 << 20))
    assert got == data


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4000), st.lists(st.integers(0, 5000), max_size=4))
def test_body_reader_limit_is_exact(limit: int, cuts: list[int]) -> None:
    data = b"a" * 4000
    for gz in (False, True):
        wire = gzip.compress(data) if gz else data
        headers = {"content-encoding": "gzip"} if gz else {}
        coro = read_body(receive_from(split(wire, cuts)), headers, limit)
        if len(data) <= limit and len(wire) <= limit:
            assert asyncio.run(coro) == data
        else:
            with pytest.raises(ValidationError) as info:
                asyncio.run(coro)
            assert info.value.reason == "CONTENT_LENGTH_EXCEEDS_THRESHOLD"


def test_rate_limiter_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(10, 3, clock=lambda: now[0])
    for _ in range(3):
        limiter.check(1)
    with pytest.raises(ThrottlingError) as info:
        limiter.check(1)
    assert info.value.retry_after == pytest.approx(0.1)
    limiter.check(2)  # other keys have their own bucket
    now[0] = 0.1
    limiter.check(1)


def test_token_cache_sees_revocation_by_another_connection(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "control.db")
    store.add_account(conn, "111122223333", "us-east-1", now=0)
    [(_, token)] = store.issue_tokens(conn, "111122223333", ["u"], now=0, actor="test")
    auth = Authenticator(tmp_path / "control.db", clock=time.time, recheck=0.0)
    try:
        assert auth.principal(f"Bearer {token}").principal == "u"
        assert auth.principal(f"Bearer {token}").principal == "u"  # cached
        store.revoke_tokens(conn, "111122223333", now=1, actor="test", token=token)
        with pytest.raises(AccessDeniedError):
            auth.principal(f"Bearer {token}")
    finally:
        auth.close()
        conn.close()
