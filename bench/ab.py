"""Same-run A/B of two versions of the service: both servers up at once, measured in turns.

    python bench/ab.py A B [--rounds 4] [--seconds 6] [--bulk-events 200000] [--no-single]

A and B are git revisions (their ``src/`` is taken with ``git archive``) or ``.`` for the working
tree. Single events: wrk as in ``bench/run.py`` (16 connections, 500 tokens in rotation) against
each server in turn, medians and the ratio B/A. Bulk: ``bench/run.py``'s import (NDJSON batches
of 10,000 over 2 connections) against a fresh server of each version in turn. The machine is
shared and noisy: only ratios of the same run mean anything.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import run
from kiro_activity.demo import free_port, start_server

ROOT = Path(__file__).parent.parent


def source(rev: str, into: Path) -> Path:
    """The ``src`` folder of ``rev`` ('.' is the working tree)."""
    if rev == ".":
        return ROOT / "src"
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


@contextmanager
def pythonpath(src: Path) -> Iterator[None]:
    """Servers started inside import the service from ``src``."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(src)
    try:
        yield
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


def single(work: Path, srcs: dict[str, Path], rounds: int, seconds: int) -> None:
    body = work / "body.json"
    run.write_body(body)
    servers, ports = {}, {}
    results: dict[str, list[float]] = {name: [] for name in srcs}
    try:
        for name, src in srcs.items():
            config, tokens = run.prepare(work / f"single-{name}", 500)
            _tokens(work, name).write_text("\n".join(tokens) + "\n")
            ports[name] = free_port()
            with pythonpath(src):
                servers[name] = start_server(config, ports[name], "--rate", "100", "--burst",
                                             "1000")
        for name in srcs:
            run.wrk(ports[name], 2, _tokens(work, name), body)  # warm-up
        for _ in range(rounds):
            for name in srcs:
                results[name].append(run.wrk(ports[name], seconds, _tokens(work, name),
                                             body)["rps"])
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(30)
    print("\n== single events: wrk -t2 -c16, keep-alive, in turns ==")
    for name, runs in results.items():
        print(f"{name}: median {statistics.median(runs):8.0f} req/s   (runs: "
              f"{', '.join(f'{r:.0f}' for r in runs)})")
    print(f"B/A: {statistics.median(results['B']) / statistics.median(results['A']):.2f}")


def _tokens(work: Path, name: str) -> Path:
    return work / f"tokens-{name}.txt"


def bulk(work: Path, srcs: dict[str, Path], rounds: int, events: int) -> None:
    rates: dict[str, list[float]] = {name: [] for name in srcs}
    for r in range(rounds):
        for name, src in srcs.items():
            with pythonpath(src):
                rates[name].append(run.bulk(work / f"bulk-{name}-{r}", events, quiet=True))
    print("\n== bulk import: NDJSON batches of 10,000, 2 connections, in turns ==")
    for name, runs in rates.items():
        print(f"{name}: median {statistics.median(runs):9,.0f} events/s   (runs: "
              f"{', '.join(f'{x:,.0f}' for x in runs)})")
    print(f"B/A: {statistics.median(rates['B']) / statistics.median(rates['A']):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--bulk-events", type=int, default=200_000)
    parser.add_argument("--no-single", action="store_true")
    parser.add_argument("--no-bulk", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiro-ab-") as tmp:
        work = Path(tmp)
        srcs = {"A": source(args.a, work / "A"), "B": source(args.b, work / "B")}
        print(f"A = {args.a}, B = {args.b}", file=sys.stderr)
        if not args.no_single:
            single(work, srcs, args.rounds, args.seconds)
        if not args.no_bulk:
            bulk(work, srcs, max(2, args.rounds // 2), args.bulk_events)


if __name__ == "__main__":
    main()
