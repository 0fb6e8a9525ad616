"""Report benchmark: one account's day of 100,000 users and 10,000,000 events.

    python bench/report.py [--users 100000] [--events 10000000] [--rounds 3] [--no-spark]
    python bench/report.py --sizes 100000,1000000,10000000   # and how each time grows per x10

Setup (not timed): raw events written straight into a landing log (realistic bodies of every
member, from a pool), then the per-user-day counters brought up to date by the landing log's own
recovery path. Timed, each in a fresh process so that its peak RSS is its own, median of rounds:

- daily report: the per-user-day counters -> the CSV parts (what the 00:00 run does);
- seal: the day's raw events from the landing log into the archive's typed Parquet segments
  (the service does it every 5 minutes, so this is a whole day at once, as after an upgrade);
- full rebuild: every raw event of the archived day -> DuckDB -> the CSV parts; and, once, the
  same rebuild straight from the landing log (a day not archived at all);
- Spark rebuild: the archived day -> Spark (local[2], kiro_activity.spark) -> the CSV parts, with
  the session's start (a JVM) measured apart, and the peak memory of that JVM;
- reference: DuckDB's own GROUP BY/pivot, written by hand, over a typed columnar (Parquet) copy
  of the same raw events made in setup; and a bare scan of the raw events as the landing log
  streams them (what any rebuild from the log must at least pay).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

import orjson

from kiro_activity import counters, landing
from kiro_activity.aggregate import counted_day, day_window, read_day, rebuild_day
from kiro_activity.archive import seal
from kiro_activity.metrics import METRICS
from kiro_activity.report import build_drop
from kiro_activity.simulate import WEIGHTS, request_body

ACCOUNT, REGION = "111122223333", "us-east-1"
DAY = date(2026, 11, 30)


def setup(db: Path, users: int, events: int) -> None:
    rng = random.Random(1)
    pool = []
    for _ in range(4000):
        member = rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
        body = request_body(member, rng, user_id="u", client_token=False)
        pool.append((member, body["userContext"]["ideCategory"], orjson.dumps(body)))
    start, _ = day_window(DAY)
    conn = landing.connect(db)
    conn.execute("PRAGMA synchronous=OFF")
    chunk = 200_000
    for base in range(0, events, chunk):
        rows = []
        for i in range(base, min(events, base + chunk)):
            member, ide, body = pool[(i * 7919) % len(pool)]
            rows.append((start + (i * 86_399_000_000) // events, ACCOUNT,
                         f"user{(i * 104729) % users:06d}", member, None, None, "OPTIN", None,
                         ide, "bench", body))
        conn.execute("BEGIN")
        conn.executemany(landing.INSERT, rows)
        conn.execute("COMMIT")
        print(f"\r  raw events: {min(events, base + chunk):,}", end="", file=sys.stderr)
    print(file=sys.stderr)
    counters.amounts_of = functools.lru_cache(maxsize=None)(counters.amounts_of)  # setup only
    print(f"  counters: {counters.recover(conn):,} events counted", file=sys.stderr)
    conn.close()


def write_typed_copy(db: Path, parquet: Path) -> None:
    """The same raw events as a typed, columnar table (one column per field the rules read),
    written once in setup: what DuckDB's own pivot is measured on."""
    import duckdb

    from kiro_activity.aggregate import fields_sql
    con = duckdb.connect()
    con.register("raw", read_day(db, ACCOUNT, DAY))
    con.execute(f"COPY ({fields_sql('raw')}) TO '{parquet}' (FORMAT parquet)")
    con.close()


def reference_query(parquet: Path) -> str:
    """The 44 metrics as one would write a GROUP BY/pivot by hand over typed columns."""
    cols = []
    for m in METRICS:
        r = m.rule
        conds = [f"member IN ({', '.join(repr(x) for x in r.members)})"]
        conds += [f"s_{k} IN ({', '.join(repr(v) for v in sorted(vs))})" for k, vs in r.where]
        if r.not_cli:
            conds.append("ide_category IS DISTINCT FROM 'CLI'")
        cond = " AND ".join(conds)
        if r.agg == "count":
            cols.append(f"count(*) FILTER (WHERE {cond})")
        elif r.agg == "sum":
            cols.append(f"coalesce(sum(n_{r.field}) FILTER (WHERE {cond}), 0)")
        else:
            key = ", ".join(f"s_{k}" for k in r.distinct_on)
            cols.append(f"count(DISTINCT ({key})) FILTER (WHERE {cond})")
    return (f"SELECT user_id, {', '.join(cols)} FROM read_parquet('{parquet}') GROUP BY user_id"
            " ORDER BY user_id")


def peak_rss_mib(status: Path = Path("/proc/self/status")) -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited through the
    fork and exec that started it), or that of the process whose ``status`` is given."""
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(kind: str, db: Path) -> dict[str, float]:
    import duckdb
    now = datetime(2026, 12, 1, tzinfo=UTC)
    started = time.perf_counter()
    archive = db.parent / "archive"
    if kind == "seal":
        seal(db, archive, now=now.timestamp())
        users = 0
    elif kind == "rebuild_spark":
        from kiro_activity import spark
        spark.session()
        startup, started = time.perf_counter() - started, time.perf_counter()
        agg = rebuild_day(db, ACCOUNT, DAY, archive, "documented", engine="spark")
        drop = build_drop(agg, region=REGION, prefix="reports", layout="documented",
                          generated_at=now)
        seconds = time.perf_counter() - started
        jvm = spark.session().sparkContext._gateway.proc.pid  # the JVM: exec'd by spark-submit
        peak = peak_rss_mib(Path(f"/proc/{jvm}/status"))
        spark.stop()
        return {"seconds": seconds, "peak_mib": peak, "users": drop.users, "startup": startup}
    elif kind in ("daily", "rebuild", "rebuild_log"):
        agg = (counted_day(db, ACCOUNT, DAY, "documented") if kind == "daily"
               else rebuild_day(db, ACCOUNT, DAY, archive if kind == "rebuild" else None,
                                "documented"))
        drop = build_drop(agg, region=REGION, prefix="reports", layout="documented",
                          generated_at=now)
        users = drop.users
    else:
        con = duckdb.connect()
        if kind == "reference":
            users = len(con.execute(reference_query(db.with_suffix(".parquet"))).fetchall())
        else:
            con.register("raw", read_day(db, ACCOUNT, DAY))
            users = len(con.execute("SELECT count(*) FROM raw").fetchall())
        con.close()
    seconds = time.perf_counter() - started
    peak = peak_rss_mib()
    return {"seconds": seconds, "peak_mib": peak, "users": users}


def run(kind: str, db: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--measure", kind, "--db", str(db)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def reset_archive(db: Path) -> None:
    """No segment yet: the seal below seals the whole day, as after an upgrade."""
    import shutil

    from kiro_activity import archive as archive_mod
    shutil.rmtree(db.parent / "archive", ignore_errors=True)
    conn = archive_mod.connect(db)
    try:
        conn.execute("DELETE FROM archive_segments")
        conn.execute("UPDATE archive_meta SET sealed_seq = 0")
    finally:
        conn.close()


LABELS = {"seal": "seal the day into the archive (segments)",
          "daily": "daily report (counters -> CSV)",
          "rebuild": "full rebuild (archive -> DuckDB -> CSV)",
          "rebuild_spark": "full rebuild (archive -> Spark -> CSV)",
          "rebuild_log": "full rebuild from the landing log",
          "reference": "DuckDB's own pivot (typed Parquet copy)",
          "scan": "bare scan of the raw events"}


def bench_size(args: argparse.Namespace, users: int, events: int
               ) -> dict[str, dict[str, float]]:
    """Every measurement for one size: the medians (and prints them)."""
    with tempfile.TemporaryDirectory(prefix="kiro-report-bench-") as tmp:
        db = args.db or (args.keep or Path(tmp)) / f"landing-{events}.db"
        if not args.db:
            db.parent.mkdir(parents=True, exist_ok=True)
            print(f"setup: {users:,} users, {events:,} events", file=sys.stderr)
            setup(db, users, events)
        if not db.with_suffix(".parquet").exists():
            write_typed_copy(db, db.with_suffix(".parquet"))
        reset_archive(db)
        kinds = ["seal", "daily", "rebuild", "rebuild_spark", "reference", "rebuild_log",
                 "scan"]
        if args.no_spark:
            kinds.remove("rebuild_spark")
        results: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
        for kind in ("seal", "rebuild_log", "scan"):  # slow, and the same each time: once
            results[kind].append(run(kind, db))
        for _ in range(args.rounds):
            for kind in ("daily", "rebuild", "rebuild_spark", "reference"):
                if kind in results:
                    results[kind].append(run(kind, db))
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("seconds", "peak_mib")}
           for k, v in results.items()}
    print(f"\n== report of one day: {users:,} users, {events:,} events "
          f"(median of {args.rounds}) ==")
    for kind in kinds:
        runs = ", ".join(f"{r['seconds']:.2f}" for r in results[kind])
        print(f"{LABELS[kind]:44s} {med[kind]['seconds']:7.2f} s   "
              f"peak {med[kind]['peak_mib']:6.0f} MiB   "
              f"(runs: {runs}; users {int(results[kind][0]['users']):,})")
    if "rebuild_spark" in results:
        startups = ", ".join(f"{r['startup']:.2f}" for r in results["rebuild_spark"])
        print(f"{'  + Spark session start (JVM), not above':44s} "
              f"{statistics.median(r['startup'] for r in results['rebuild_spark']):7.2f} s   "
              f"(runs: {startups}; the Spark peak is its JVM's)")
    ratio = med["rebuild"]["seconds"] / med["reference"]["seconds"]
    print(f"daily report: {med['daily']['seconds']:.2f} s (target <= 1 s for 100,000 users)")
    print(f"rebuild of an archived day / DuckDB's own pivot: {ratio:.2f} (target <= 2); "
          f"of a day not archived at all (from the landing log): "
          f"{med['rebuild_log']['seconds'] / med['reference']['seconds']:.2f}; "
          "peak memory target <= 1536 MiB")
    if "rebuild_spark" in results:
        print(f"Spark rebuild / DuckDB rebuild: "
              f"{med['rebuild_spark']['seconds'] / med['rebuild']['seconds']:.2f}")
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--sizes", help="Several sizes in one run, events per size, comma "
                        "separated (users: events / 100): prints how each time grows per x10.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-spark", action="store_true", help="Leave out the Spark rebuild.")
    parser.add_argument("--measure")
    parser.add_argument("--db", type=Path, help="Reuse this landing log (made by a run with "
                        "--keep) instead of writing a new one.")
    parser.add_argument("--keep", type=Path, help="Keep the landing log in this folder.")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.db)))
        return
    if not args.sizes:
        bench_size(args, args.users, args.events)
        return
    sizes = [int(n) for n in args.sizes.split(",")]
    meds = [bench_size(args, max(1, n // 100), n) for n in sizes]
    print("\n== growth: time per x10 events ==")
    for kind in meds[0]:
        steps = []
        for i in range(len(sizes) - 1):
            (a, ma), (b, mb) = (sizes[i], meds[i]), (sizes[i + 1], meds[i + 1])
            per10 = (mb[kind]["seconds"] / ma[kind]["seconds"]) ** (1 / math.log10(b / a))
            steps.append(f"{a:,}->{b:,}: x{per10:.1f}")
        print(f"{LABELS[kind]:44s} " + "; ".join(steps))


if __name__ == "__main__":
    main()
