"""The report files: header, cells, quoting, dates, neutralisation, parts, keys, manifest, and
that pandas, DuckDB and Python's csv read them alike with no option but "header present"."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import orjson
import pandas as pd
import pytest

from kiro_activity import metrics
from kiro_activity.aggregate import DayAggregate, aggregate_day, day_window
from kiro_activity.landing import LandingLog, LandingRecord
from kiro_activity.report import build_drop, csv_key, longest_key_bytes, manifest_key

DAY = date(2026, 11, 30)
GEN = datetime(2026, 12, 1, 0, 0, 5, tzinfo=UTC)
ACC = "111122223333"


def agg(users: int, *, ids: list[str] | None = None) -> DayAggregate:
    ids = ids or [f"user{i:05d}" for i in range(users)]
    rows = sorted((u, [(i + j) % 7 for j in range(44)]) for i, u in enumerate(ids))
    return DayAggregate(ACC, DAY, day_window(DAY), rows, events=3 * len(rows))


@pytest.mark.parametrize(("users", "parts"), [(0, [0]), (1, [1]), (1000, [1000]),
                                             (1001, [1000, 1]), (2001, [1000, 1000, 1])])
def test_parts_of_1000_users(users: int, parts: list[int]) -> None:
    drop = build_drop(agg(users), region="us-east-1", prefix="r", generated_at=GEN)
    assert [p.rows for p in drop.parts] == parts
    header = ",".join(metrics.header()).encode() + b"\n"
    for n, part in enumerate(drop.parts, 1):
        assert part.data.startswith(header)
        assert part.data.count(b"\n") == part.rows + 1
        suffix = f"_part_{n}" if len(parts) > 1 else ""  # the default layout: delivered
        assert part.key.endswith(f"_by_user_analytic_202611300000_report{suffix}.csv")
    # split in UserId order: the parts concatenated are the sorted users
    users_in = [line.split(b",")[0] for p in drop.parts for line in p.data.splitlines()[1:]]
    assert users_in == [f'"user{i:05d}"'.encode() for i in range(users)]
    manifest = orjson.loads(drop.manifest.data) if drop.manifest else {}
    assert manifest["users"] == users and len(manifest["parts"]) == len(parts)
    assert [p["sha256"] for p in manifest["parts"]] == [p.sha256 for p in drop.parts]
    assert drop.objects[-1] is drop.manifest  # written last


def test_key_layout_both_layouts_and_no_prefix() -> None:
    base = ("user-activity-reports/AWSLogs/111122223333/KiroLogs/by_user_analytic/us-east-1/"
            "2026/11/30/00/111122223333_by_user_analytic_202611300000")
    assert csv_key("/user-activity-reports/", ACC, "us-east-1", DAY, "documented",
                   2) == base + "_part_2.csv"
    assert csv_key("user-activity-reports", ACC, "us-east-1", DAY, "documented",
                   None) == base + ".csv"
    assert csv_key("user-activity-reports", ACC, "us-east-1", DAY, "delivered",
                   None) == base + "_report.csv"
    assert csv_key("user-activity-reports", ACC, "us-east-1", DAY, "delivered",
                   3) == base + "_report_part_3.csv"
    assert csv_key(None, ACC, "eu-west-1", date(2027, 1, 5), "documented", None) == (
        "AWSLogs/111122223333/KiroLogs/by_user_analytic/eu-west-1/2027/01/05/00/"
        "111122223333_by_user_analytic_202701050000.csv")
    assert manifest_key("a/b", ACC, "us-east-1", DAY) == (
        "a/b/AWSLogs/111122223333/KiroLogs/by_user_analytic_manifest/us-east-1/2026/11/30/"
        "111122223333_manifest_202611300000.json")
    assert longest_key_bytes("p" * 900, ACC, "us-east-1") > 1024


def test_cells_quoting_dates_and_formula_neutralisation() -> None:
    ids = ['=HYPERLINK("x")', "+1", "-2", "@sum", "\tt", "\rr", 'a "quoted", name', "plain",
           "line\nbreak", "ünï"]
    drop = build_drop(agg(0, ids=ids), region="us-east-1", prefix=None, layout="documented",
                      generated_at=GEN)
    text = drop.parts[0].data.decode("utf-8")
    assert not text.startswith("\ufeff") and "\r\n" not in text.replace('"\rr"', "")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    got = {r[0]: r for r in rows[1:]}
    for raw in ids:
        cell = "'" + raw if raw[0] in "=+-@\t\r" else raw
        assert cell in got, cell
        assert got[cell][1] == "11-30-2026"
    assert '"plain",11-30-2026,' in text  # UserId always quoted
    assert '"a ""quoted"", name"' in text
    manifest = orjson.loads(drop.manifest.data) if drop.manifest else {}
    assert len(manifest["neutralised_user_ids"]) == 6


def test_delivered_layout_file() -> None:
    drop = build_drop(agg(3), region="us-east-1", prefix="p", layout="delivered",
                      generated_at=GEN)
    assert drop.parts[0].key.endswith("_report.csv")
    header = drop.parts[0].data.split(b"\n")[0].decode().split(",")
    assert header == metrics.header("delivered")
    # the renamed column carries InlineChat_EventCount's values
    a = agg(3)
    i_doc = [m.name for m in metrics.METRICS].index("InlineChat_EventCount")
    row = drop.parts[0].data.split(b"\n")[1].decode().split(",")
    assert int(row[header.index("InlineChat_TotalEventCount")]) == a.rows[0][1][i_doc]


def test_files_load_alike_in_pandas_duckdb_and_csv(tmp_path: Path) -> None:
    ids = ["alice", '=cmd|"/c calc"!A1', "bob, jr", "zoë"]
    drop = build_drop(agg(0, ids=ids), region="us-east-1", prefix=None, generated_at=GEN)
    path = tmp_path / "r.csv"
    path.write_bytes(drop.parts[0].data)
    with path.open(newline="", encoding="utf-8") as f:
        py = list(csv.DictReader(f))
    frame = pd.read_csv(path)
    con = duckdb.connect()
    db = con.execute(f"SELECT * FROM read_csv('{path}', header = true)").fetchall()
    columns = [d[0] for d in con.description]
    con.close()
    assert list(frame.columns) == columns == list(py[0].keys()) == metrics.header()
    assert len(py) == len(frame) == len(db) == 4
    for i, rec in enumerate(py):
        assert frame.iloc[i]["UserId"] == rec["UserId"] == db[i][0]
        for c in metrics.header()[2:]:
            assert int(rec[c]) == int(frame.iloc[i][c]) == int(db[i][columns.index(c)])


def test_event_at_midnight_belongs_to_the_next_day(tmp_path: Path) -> None:
    midnight = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    now = [midnight - 0.001]  # 23:59:59.999
    log = LandingLog(tmp_path / "landing.db", clock=lambda: now[0])

    def send(user: str) -> None:
        body = orjson.dumps({"telemetryEvent": {"chatAddMessageEvent": {
            "conversationId": "c", "messageId": "m"}}})
        log.append_sync([LandingRecord(ACC, user, "chatAddMessageEvent", None, None, None,
                                       None, "test", body)])
    try:
        send("late")
        now[0] = midnight  # 00:00:00.000
        send("early")
    finally:
        log.close()
    before = aggregate_day(tmp_path / "landing.db", ACC, DAY)
    after = aggregate_day(tmp_path / "landing.db", ACC, date(2026, 12, 1))
    assert [u for u, _ in before.rows] == ["late"]
    assert [u for u, _ in after.rows] == ["early"]
