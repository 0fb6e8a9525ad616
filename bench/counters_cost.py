"""What the dashboard's breakdown table costs the landing writer, per event, in one run.

    python bench/counters_cost.py [--events 20000] [--users 500] [--rounds 5]

The writer process adds each committed group's amounts to the counters and writes them out
every few tens of milliseconds (counters.py). This times that work for groups of realistic
events (bodies from simulate.py, amounts worked out as ingest does): A, as shipped (per-user
cells, the breakdown per IDE and language and who was active in each, interactions); B, the
same with the breakdown left out (close to what the writer did before the dashboard; the
per-user row has one more cell, the dashboard's EXTRA figure). Medians of rounds, microseconds
per event.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from kiro_activity import breakdown, counters, events, landing
from kiro_activity.metrics import deltas
from kiro_activity.simulate import WEIGHTS, request_body

DAY = 20_422


def records(n: int, users: int, habits: bool,
            ) -> list[tuple[tuple[object, ...], landing.Extra]]:
    """``n`` events of ``users`` users; with ``habits`` each user keeps to one IDE and three
    of eight common languages (as an organisation's people do), else every event has the IDE
    and language that simulate.py drew for it (seven IDEs, 37 languages: the worst case)."""
    rng = random.Random(7)
    ides = {"VSCODE": 0.6, "JETBRAINS": 0.3, "VISUAL_STUDIO": 0.05, "ECLIPSE": 0.05}
    langs = ["python", "typescript", "java", "javascript", "go", "csharp", "sql", "yaml"]
    habit = [(rng.choices(list(ides), list(ides.values()))[0], rng.sample(langs, 3))
             for _ in range(users)]
    out: list[tuple[tuple[object, ...], landing.Extra]] = []
    for i in range(n):
        member = rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
        raw = orjson.dumps(request_body(member, rng, user_id="u", client_token=False))
        req = events.parse_request(raw)
        amounts, interaction = deltas(req.member, req.event, req.ide_category)
        user = rng.randrange(users)
        dim = breakdown.dim_of(req.event, req.ide_category)
        if habits:
            dim = (habit[user][0], rng.choice(habit[user][1]))
        row = (DAY * 86_400_000_000 + i, "111122223333", f"user{user}",
               req.member, None, None, None, None, req.ide_category, "test", raw)
        out.append((row, (amounts, interaction, dim)))
    return out


def run(work: list[tuple[tuple[object, ...], landing.Extra]], group: int, dims: bool) -> float:
    db = Path(tempfile.mkdtemp(prefix="kiro-bench-counters-")) / "landing.db"
    conn = landing.connect(db)
    pending = counters.Counters()
    t0 = time.perf_counter()
    for start in range(0, len(work), group):
        chunk = work[start:start + group]
        counts = landing.counts_of([r for r, _ in chunk], [e for _, e in chunk])
        if not dims:
            counts.dims.clear()
            counts.present.clear()
        pending.add(counts, start + len(chunk))
        if (start // group) % 8 == 7:  # written out every few groups, as the writer does
            pending.flush(conn)
    pending.flush(conn)
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed / len(work) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--group", type=int, default=64, help="events per committed group")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"events={args.events} users={args.users} group={args.group} rounds={args.rounds}")
    for habits in (True, False):
        work = records(args.events, args.users, habits)
        a, b = [], []
        for _ in range(args.rounds):  # interleaved, so that noise falls on both alike
            a.append(run(work, args.group, True))
            b.append(run(work, args.group, False))
        ma, mb = statistics.median(a), statistics.median(b)
        print("each user one IDE and three of eight languages" if habits else
              "every event its own IDE and language (the worst case)")
        print(f"  A with the breakdown  median {ma:.1f} us/event  "
              f"({' '.join(f'{x:.1f}' for x in a)})")
        print(f"  B without it          median {mb:.1f} us/event  "
              f"({' '.join(f'{x:.1f}' for x in b)})")
        print(f"  A/B {ma / mb:.2f}: the breakdown costs {ma - mb:.1f} us of writer CPU per "
              "event")


if __name__ == "__main__":
    main()
