"""The checks of a bulk request's lines (:mod:`kiro_activity.batchcheck`): the same on the
event loop and in a worker process, and a worker that dies costs nothing but time."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import orjson

from kiro_activity import batchcheck, counters
from kiro_activity.batchcheck import Checker, Token, check_lines
from kiro_activity.simulate import WEIGHTS, request_body

TOKEN = Token("111122223333", "alice", "us-east-1", "true", 4096)
OURS = "arn:aws:codewhisperer:us-east-1:111122223333:profile/ABCDEFGHIJKL"
THEIRS = "arn:aws:codewhisperer:us-east-1:999999999999:profile/ABCDEFGHIJKL"


def lines(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        body = request_body(rng.choice(list(WEIGHTS)), rng, user_id="alice")
        if i % 7 == 3:
            body.pop("optOutPreference")  # the header's value then
        if i % 11 == 5:
            body["profileArn"] = OURS
        if i % 13 == 6:
            body["profileArn"] = THEIRS
        out.append(orjson.dumps(body))
    return [*out, b"[]", b'{"telemetryEvent": {}}', b"{" + b" " * 5000 + b"}"]


def test_a_worker_checks_exactly_as_the_loop_does() -> None:
    batch = lines(batchcheck.WORKER_MIN_LINES + 50)
    here = check_lines(batch, TOKEN)
    assert {status for _, status, _ in here.refused} == {400, 403}
    assert here.accepted and {"OPTIN", "OPTOUT"} <= set(here.opt_outs)
    checker = Checker(1)
    try:
        there = asyncio.run(checker.check(b"\n\n".join(batch), batch, TOKEN))
        assert checker.in_workers == 1
    finally:
        checker.close()
    assert there == here
    accepted = [batch[i] for i in here.accepted]  # summed as the writer sums stored lines
    assert here.counts == counters.lines_counts(here.members, here.ides, accepted)
    assert sum(cell[counters.EVENTS] for cell in here.counts[0].values()) == len(accepted)


def test_a_batch_in_parts_across_workers_is_one_batch_checked_whole() -> None:
    """Three workers, three parts at once: the same lines, errors (their line numbers the
    batch's), fields and counters as one pass over the whole batch."""
    batch = lines(batchcheck.WORKER_MIN_LINES * 3 + 7, seed=4)
    batch.insert(500, b"x" * 5000)  # too long: its message names its line in the batch
    here = check_lines(batch, TOKEN)
    checker = Checker(3)
    try:
        there = asyncio.run(checker.check(b"\n".join(batch), batch, TOKEN))
    finally:
        checker.close()
    assert there == here
    assert (501, 400) in {(i + 1, status) for i, status, _ in here.refused}
    assert any("line 501 is 5000 bytes" in body["message"] for _, _, body in there.refused)
    assert there.counts[1] and there.counts == here.counts  # interactions in order too


def test_a_small_batch_stays_on_the_loop_and_no_worker_starts() -> None:
    checker = Checker(1)
    batch = lines(10)
    expected = check_lines(batch, TOKEN)
    assert asyncio.run(checker.check(b"\n\n".join(batch), batch, TOKEN)) == expected
    assert (checker.in_workers, checker._pool) == (0, None)


def test_a_killed_worker_costs_its_batch_time_not_its_result() -> None:
    batch = lines(batchcheck.WORKER_MIN_LINES)
    body, expected = b"\n \n".join(batch) + b"\n", check_lines(batch, TOKEN)
    checker = Checker(1)

    async def main() -> None:
        assert await checker.check(body, batch, TOKEN) == expected
        assert checker._pool is not None
        for pid in list(checker._pool._processes):  # the worker dies (OOM killer, kill -9)
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        assert await checker.check(body, batch, TOKEN) == expected  # on the loop
        assert await checker.check(body, batch, TOKEN) == expected  # in a new worker

    try:
        asyncio.run(main())
    finally:
        checker.close()
    assert checker.in_workers == 2


COMMAND_LIKE = '''
from kiro_activity.cli import main  # what the kiro-activity console script runs first

HEAVY = ("duckdb", "pyarrow", "boto3", "botocore")


def loaded() -> list[str]:
    import sys
    return [name for name in HEAVY if name in sys.modules]


if __name__ == "__main__":
    import asyncio
    import resource
    import sys

    from kiro_activity.batchcheck import WORKER_MIN_LINES, Checker, Token

    token = Token("111122223333", "alice", "us-east-1", "true", 4096)
    line = b'{"telemetryEvent": {"featureDevEvent": {}}}'
    checker = Checker(1)
    try:
        asyncio.run(checker.check(b"\\n".join([line] * WORKER_MIN_LINES), [line] *
                                  WORKER_MIN_LINES, token))
        assert checker.in_workers == 1 and checker._pool is not None
        print(checker._pool.submit(loaded).result())
        pid = next(iter(checker._pool._processes))
        print(int(open(f"/proc/{pid}/status").read().split("VmRSS:")[1].split()[0]) // 1024)
        print(loaded())
    finally:
        checker.close()
'''


def test_a_checker_process_does_not_load_what_only_the_commands_need(tmp_path: Path) -> None:
    """A checker is spawned: it imports the main module of the service, the command's. That
    imports DuckDB, pyarrow and boto3 only when a command uses them, so a checker holds
    none of them (about 30 MiB, not 90)."""
    script = tmp_path / "kiro-activity"
    script.write_text(COMMAND_LIKE)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    worker_loaded, worker_mib, main_loaded = out
    assert worker_loaded == "[]", worker_loaded
    assert int(worker_mib) < 50
    assert main_loaded == "[]"  # nor the process that only imported the command
