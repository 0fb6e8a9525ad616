"""Dashboard benchmark: one account, 10,000 users active every day for 90 days.

    python bench/dashboard.py [--users 10000] [--days 90] [--rounds 5]

Setup (not timed): the counters written straight into a landing log, as the writer keeps them:
per user and day one ``user_day`` row of random amounts; the breakdown (``dim_day``) their sums
per IDE and language, half the users in each of two, and ``dim_users`` who is in which. Timed,
in this process, median of rounds:

- cold overview: the first view of the range, which reads each day from the counters and writes
  its Parquet snapshot (once per day; the daily run does it for a running service);
- first overview of a started service: the snapshots' small columns read into its cache;
- overview: per day, totals and both breakdowns of the 90 days (what the overview page and the
  API's ``usage`` need, without the per-user list);
- users page: per-user totals of the range, sorted by events, one page of 50;
- export: every user's 44 metrics summed over the range, as CSV (``usage.csv``);
- reference: SQLite summing the same counters straight from ``user_day`` (GROUP BY day, the 45
  cells): what reading the counters without the snapshots would cost.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from kiro_activity import counters, dashboard, landing, usage
from kiro_activity.config import Config
from kiro_activity.metrics import DISTINCT

ACCOUNT = "111122223333"
LAST = date(2026, 11, 29)
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()


def setup(config: Config, users: int, days: int) -> None:
    conn = landing.connect(config.landing_db)
    conn.execute("PRAGMA synchronous=OFF")
    first = (LAST - timedelta(days=days - 1) - date(1970, 1, 1)).days
    cells = ", ".join("0" if i in DISTINCT else "abs(random() % 40)"
                      for i in range(len(counters.ALL)))
    sums = ", ".join(f"sum({c})" for c in counters.ALL)
    grid = (f"WITH RECURSIVE d(x) AS (SELECT {first} UNION ALL SELECT x + 1 FROM d WHERE x < "
            f"{first + days - 1}), u(y) AS (SELECT 0 UNION ALL SELECT y + 1 FROM u WHERE y < "
            f"{users - 1})")
    dim = ("CASE WHEN user_id GLOB '*[02468]' THEN 'VSCODE' ELSE 'JETBRAINS' END",
           "CASE WHEN user_id GLOB '*[02468]' THEN 'python' ELSE 'java' END")
    conn.execute("BEGIN")
    conn.execute(f"{grid} INSERT INTO user_day SELECT '{ACCOUNT}', x, printf('user-%05d', y),"
                 f" {cells} FROM d, u")
    conn.execute(f"INSERT INTO dim_day SELECT account_id, day, {dim[0]}, {dim[1]}, {sums}"
                 " FROM user_day GROUP BY 1, 2, 3, 4")
    conn.execute(f"INSERT INTO dim_users SELECT account_id, day, {dim[0]}, {dim[1]}, user_id"
                 " FROM user_day")
    conn.execute("COMMIT")
    conn.close()


def timed(fn: Callable[[], object], rounds: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def reference(config: Config, r: dashboard.Range) -> None:
    conn = landing.connect(config.landing_db, readonly=True)
    try:
        first = (r.first - date(1970, 1, 1)).days
        last = (r.last - date(1970, 1, 1)).days
        sums = ", ".join(f"sum({c})" for c in counters.COLS)
        conn.execute(f"SELECT day, count(*), {sums} FROM user_day WHERE account_id = ?"
                     " AND day BETWEEN ? AND ? GROUP BY day", (ACCOUNT, first, last)).fetchall()
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kiro-bench-dashboard-"))
    try:
        config = Config(data_dir=root)
        t0 = time.perf_counter()
        setup(config, args.users, args.days)
        print(f"setup: {args.users:,} users x {args.days} days of counters in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        r = dashboard.Range(LAST - timedelta(days=args.days - 1), LAST, LAST + timedelta(1))
        t0 = time.perf_counter()
        dashboard.overview(config, ACCOUNT, r, NOW)
        cold = time.perf_counter() - t0
        n_files = len(list((root / "usage").rglob("*.parquet")))
        usage.CACHE = usage.ColumnCache()  # as a service that just started
        t0 = time.perf_counter()
        dashboard.overview(config, ACCOUNT, r, NOW)
        first = time.perf_counter() - t0
        results = {
            "overview": timed(lambda: dashboard.overview(config, ACCOUNT, r, NOW), args.rounds),
            "users page": timed(lambda: dashboard.users(config, ACCOUNT, r, NOW), args.rounds),
            "export": timed(lambda: dashboard.export_csv(
                dashboard.user_totals(config, ACCOUNT, r, NOW), "delivered"), args.rounds),
            "reference (SQLite GROUP BY day)": timed(lambda: reference(config, r), args.rounds),
        }
        ref = results["reference (SQLite GROUP BY day)"][0]
        size = sum(p.stat().st_size for p in (root / "usage").rglob("*")) / 2**20
        print(f"users={args.users} days={args.days} snapshots={n_files} "
              f"(v{usage.VERSION}, {size:.1f} MiB)")
        print(f"cold overview (writes the snapshots): {cold:.2f} s "
              f"({cold / args.days * 1000:.0f} ms per day)")
        print(f"first overview of a started service (reads the snapshots' columns into "
              f"memory): {first:.2f} s")
        for name, (median, times) in results.items():
            rounds = " ".join(f"{t:.3f}" for t in times)
            print(f"{name:34s} median {median:.3f} s  ({rounds})  ratio to reference "
                  f"{median / ref:.2f}")
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
