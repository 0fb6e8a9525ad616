"""CSV formula injection: 10,000 generated user ids, biased to what spreadsheets and CSV readers
trip on (a leading ``= + - @``, tab or CR, quotes, commas, newlines, long Unicode, an id that
already starts with ``'``), written as one day's drop of ten parts. No cell may start a formula,
and every file must parse back, in Python's csv module, pandas and DuckDB, to exactly the ids
and figures that went in (a neutralised id undone through the manifest's list of rows).
"""

from __future__ import annotations

import csv
import io
import random
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import orjson
import pandas as pd

from kiro_activity import metrics
from kiro_activity.aggregate import DayAggregate, day_window
from kiro_activity.report import FORMULA_STARTS, build_drop

ACC = "111122223333"
DAY = date(2026, 12, 2)
GEN = datetime(2026, 12, 3, 0, 0, 5, tzinfo=UTC)
N = 10_000
TRICKY = ["=", "+", "-", "@", "\t", "\r", "'", '"', ",", "\n", "\r\n", ";", "|", " ", "%",
          "=cmd|'/c calc'!A1", "=HYPERLINK(\"http://x\")", "@SUM(1)", "+1-1", "-1", "0x1",
          "１", "＝", "\u00e9", "\u4e2d\u6587", "\U0001f600", "NA", "null", "", "007"]


def user_ids(seed: int = 12_02) -> list[str]:
    rng = random.Random(seed)
    ids: set[str] = set()
    while len(ids) < N:
        parts = [rng.choice(TRICKY) if rng.random() < 0.6 else
                 "".join(chr(rng.choice((rng.randint(0x20, 0x7e), rng.randint(0xa0, 0x2fff))))
                         for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 5))]
        if rng.random() < 0.02:  # long Unicode ids
            parts.append("\u00fc" * rng.randint(200, 600))
        ident = "".join(parts)
        if ident:
            ids.add(ident)
    return sorted(ids)


def aggregate(ids: list[str]) -> DayAggregate:
    rng = random.Random(7)
    rows = [(u, [rng.choice((0, 1, 2, 10**12, 2**63 - 1)) for _ in metrics.METRICS]) for u in ids]
    return DayAggregate(ACC, DAY, day_window(DAY), rows, events=len(rows))


def unsafe(cell: str) -> bool:
    return cell.startswith(FORMULA_STARTS)


def test_ten_thousand_hostile_user_ids(tmp_path: Path) -> None:
    ids = user_ids()
    agg = aggregate(ids)
    drop = build_drop(agg, region="us-east-1", prefix="p", generated_at=GEN)
    assert len(drop.parts) == 10
    manifest = orjson.loads(drop.manifest.data) if drop.manifest else {}
    neutralised = {(n["key"], n["row"]) for n in manifest["neutralised_user_ids"]}
    want = {u: [str(v) for v in values] for u, values in agg.rows}
    order = metrics.column_order()
    unsafe_cells = cells = 0
    back: dict[str, list[str]] = {}
    for part in drop.parts:
        text = part.data.decode("utf-8")
        rows = list(csv.reader(io.StringIO(text, newline="")))
        assert rows[0] == metrics.header()
        for number, row in enumerate(rows[1:], 1):
            assert len(row) == 46
            cells += len(row)
            unsafe_cells += sum(unsafe(c) for c in row)
            user = row[0]
            if (part.key, number) in neutralised:
                assert user.startswith("'")
                user = user[1:]
            assert row[1] == "12-02-2026"
            back[user] = [row[2 + order.index(i)] for i in range(len(metrics.METRICS))]
        path = tmp_path / part.key.rsplit("/", 1)[1]
        path.write_bytes(part.data)
        # the same file read by pandas and DuckDB: the same cells, ids kept as text
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        assert frame.values.tolist() == rows[1:]
        con = duckdb.connect()
        db = con.execute(f"SELECT * FROM read_csv('{path}', header = true, all_varchar = true,"
                         " quote = '\"', escape = '\"', delim = ',', new_line = '\\n',"
                         " strict_mode = true)").fetchall()
        con.close()
        assert [list(r) for r in db] == rows[1:]
    print(f"csv-injection: ids={len(ids)} parts={len(drop.parts)} cells={cells} "
          f"neutralised={len(neutralised)} unsafe_cells={unsafe_cells} "
          f"round_trip_mismatches={sum(back.get(u) != v for u, v in want.items())}")
    assert unsafe_cells == 0
    assert back == want
