"""A delivered drop read the way the importers of these reports read it.

Two kinds of reader exist in the wild: by column name, with a column it does not find read as 0
(Apache DevLake's ``q_dev`` plugin), and by position in the delivered objects' column order (the
public Athena table definitions, OpenCSVSerde with the header skipped). Both must read every one
of the 44 metrics of every user right from a drop in the default layout; the ``documented``
layout is shown to mislead both, which is why it is not the default. The day is 2 December, whose
``Date`` cell (``12-02-2026``) a format-guessing reader takes for 12 February: the readings that
docs/reading.md gives (DuckDB, pandas, and the Athena table's column list) are run here as
written there.
"""

from __future__ import annotations

import csv
import glob
import io
import random
import re
from collections import defaultdict
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pandas as pd
import pytest

from conftest import ACCOUNT, setup_accounts
from kiro_activity import daily, events, metrics, settings, simulate, store
from kiro_activity.config import Config
from kiro_activity.landing import LandingLog, LandingRecord

ROOT = Path(__file__).resolve().parent.parent
DAY = date(2026, 12, 2)
NOON = datetime(2026, 12, 2, 12, tzinfo=UTC).timestamp()
AFTER = datetime(2026, 12, 3, 0, 0, 1, tzinfo=UTC).timestamp()
USERS = 1_050  # two parts
#: the columns of objects delivered by the hosted service, in their order (as the public Athena
#: table definitions list them): pinned here, not derived from the code under test
DELIVERED = [
    "UserId", "Date", "Chat_AICodeLines", "Chat_MessagesInteracted", "Chat_MessagesSent",
    "CodeFix_AcceptanceEventCount", "CodeFix_AcceptedLines", "CodeFix_GeneratedLines",
    "CodeFix_GenerationEventCount", "CodeReview_FailedEventCount", "CodeReview_FindingsCount",
    "CodeReview_SucceededEventCount", "Dev_AcceptanceEventCount", "Dev_AcceptedLines",
    "Dev_GeneratedLines", "Dev_GenerationEventCount", "DocGeneration_AcceptedFileUpdates",
    "DocGeneration_AcceptedFilesCreations", "DocGeneration_AcceptedLineAdditions",
    "DocGeneration_AcceptedLineUpdates", "DocGeneration_EventCount",
    "DocGeneration_RejectedFileCreations", "DocGeneration_RejectedFileUpdates",
    "DocGeneration_RejectedLineAdditions", "DocGeneration_RejectedLineUpdates",
    "InlineChat_AcceptanceEventCount", "InlineChat_AcceptedLineAdditions",
    "InlineChat_AcceptedLineDeletions", "InlineChat_DismissalEventCount",
    "InlineChat_DismissedLineAdditions", "InlineChat_DismissedLineDeletions",
    "InlineChat_RejectedLineAdditions", "InlineChat_RejectedLineDeletions",
    "InlineChat_RejectionEventCount", "InlineChat_TotalEventCount", "Inline_AICodeLines",
    "Inline_AcceptanceCount", "Inline_SuggestionsCount", "TestGeneration_AcceptedLines",
    "TestGeneration_AcceptedTests", "TestGeneration_EventCount", "TestGeneration_GeneratedLines",
    "TestGeneration_GeneratedTests", "Transformation_EventCount", "Transformation_LinesGenerated",
    "Transformation_LinesIngested",
]
#: the delivered column name of each metric
AS_DELIVERED = {"InlineChat_EventCount": "InlineChat_TotalEventCount"}


def user_ids() -> list[str]:
    # ids that trip careless readers: numbers with leading zeros, NA/null, a formula, Unicode
    return ["007", "NA", "null", "=cmd", "zoë", *[f"user{i:05d}" for i in range(USERS - 5)]]


def sent() -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(12_02)
    return {u: simulate.user_day(rng, user_id=u, day_start=NOON - 43_200, n_events=12)
            for u in user_ids()}


def expected(bodies: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, int]]:
    """Per user, the 44 metrics by their delivered column names, from the rules in Python."""
    out = {}
    for user, reqs in bodies.items():
        triples = []
        for body in reqs:
            [(member, event)] = body["telemetryEvent"].items()
            triples.append((member, event, body["userContext"]["ideCategory"]))
        out[user] = {AS_DELIVERED.get(k, k): v for k, v in metrics.evaluate(triples).items()}
    return out


def deliver(tmp_path: Path, layout: str | None) -> Path:
    """The whole drop through the service's own path: landing log, counters, report, folder."""
    config = Config(data_dir=tmp_path / "data")
    setup_accounts(config.data_dir)
    log = LandingLog(config.landing_db, clock=lambda: NOON)
    try:
        records = []
        for user, reqs in sent().items():
            for body in reqs:
                raw = orjson.dumps(body)
                req = events.parse_request(raw)
                records.append(LandingRecord(ACCOUNT, user, req.member, req.client_token,
                                             req.opt_out, req.client_timestamp, req.ide_category,
                                             "test", raw))
        log.append_sync(records)
    finally:
        log.close()
    conn = store.connect(config.control_db)
    changes: dict[str, Any] = {"enabled": True}
    if layout is not None:
        changes["layout"] = layout
    settings.update(conn, ACCOUNT, changes, actor="test", now=NOON, today=DAY,
                    writer=config.writer_principal)
    conn.close()
    assert daily.deliver_day(config, ACCOUNT, DAY, now=lambda: AFTER).state == "delivered"
    return config.data_dir / "reports"


@pytest.fixture(scope="module")
def drops(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {"default": deliver(tmp_path_factory.mktemp("default"), None),
            "documented": deliver(tmp_path_factory.mktemp("documented"), "documented")}


@pytest.fixture(scope="module")
def truth() -> dict[str, dict[str, int]]:
    return expected(sent())


def csv_files(root: Path) -> list[Path]:
    return sorted(root.glob("AWSLogs/*/KiroLogs/by_user_analytic/*/*/*/*/*/*.csv"))


def by_name(root: Path) -> dict[str, dict[str, int]]:
    """DevLake's way: each metric read by its (delivered) name, a missing column read as 0."""
    out = {}
    for path in csv_files(root):
        for row in csv.DictReader(io.StringIO(path.read_text("utf-8"))):
            user = row["UserId"].removeprefix("'")
            out[user] = {c: int(row.get(c) or 0) for c in DELIVERED[2:]}
    return out


def by_position(root: Path) -> dict[str, dict[str, int]]:
    """Athena's way: the header skipped, cells named by their position in the delivered order."""
    out = {}
    for path in csv_files(root):
        lines = list(csv.reader(io.StringIO(path.read_text("utf-8"))))[1:]
        for cells in lines:
            row = dict(zip(DELIVERED, cells, strict=True))
            out[row["UserId"].removeprefix("'")] = {c: int(row[c]) for c in DELIVERED[2:]}
    return out


def wrong_cells(got: dict[str, dict[str, int]], want: dict[str, dict[str, int]]) -> int:
    assert set(got) == set(want)
    return sum(got[u][c] != want[u][c] for u in want for c in DELIVERED[2:])


def test_the_default_layout_is_delivered(drops: dict[str, Path]) -> None:
    assert metrics.DEFAULT_LAYOUT == "delivered" == settings.BY_NAME["layout"].default
    assert metrics.header() == DELIVERED
    names = [p.name for p in csv_files(drops["default"])]
    assert names == [f"{ACCOUNT}_by_user_analytic_202612020000_report_part_{n}.csv"
                     for n in (1, 2)]


def test_readers_by_name_and_by_position_read_every_cell_right(
        drops: dict[str, Path], truth: dict[str, dict[str, int]]) -> None:
    # the data set exercises the columns the layouts disagree on
    assert sum(t["InlineChat_TotalEventCount"] > 0 for t in truth.values()) > 100
    named, positioned = by_name(drops["default"]), by_position(drops["default"])
    bad_named, bad_positioned = wrong_cells(named, truth), wrong_cells(positioned, truth)
    cells = len(truth) * 44
    print(f"consumers: users={len(truth)} cells={cells} by_name_wrong={bad_named} "
          f"by_position_wrong={bad_positioned}")
    assert bad_named == bad_positioned == 0


def test_the_documented_layout_misleads_both_readers(
        drops: dict[str, Path], truth: dict[str, dict[str, int]]) -> None:
    """Why ``documented`` is not the default: both readers get wrong numbers, and no error."""
    named = by_name(drops["documented"])
    zeroed = sum(named[u]["InlineChat_TotalEventCount"] == 0 < t["InlineChat_TotalEventCount"]
                 for u, t in truth.items())
    assert zeroed > 100
    positioned = by_position(drops["documented"])
    shifted = {c for u in truth for c in DELIVERED[2:] if positioned[u][c] != truth[u][c]}
    assert shifted == {"InlineChat_RejectedLineAdditions", "InlineChat_RejectedLineDeletions",
                       "InlineChat_RejectionEventCount", "InlineChat_TotalEventCount"}
    print(f"consumers: documented users_read_as_0={zeroed} columns_shifted={len(shifted)}")


def test_the_manifest_names_columns_and_date_format(drops: dict[str, Path]) -> None:
    [path] = drops["default"].glob("AWSLogs/*/KiroLogs/by_user_analytic_manifest/**/*.json")
    man = orjson.loads(path.read_bytes())
    assert man["columns"] == DELIVERED and man["layout"] == "delivered"
    assert datetime.strptime("12-02-2026", man["date_format"]).date() == DAY
    defs = metrics.definitions()
    assert defs["default_layout"] == "delivered" and defs["date"]["format"] == "%m-%d-%Y"


def doc_block(lang: str, containing: str) -> str:
    text = (ROOT / "docs" / "reading.md").read_text()
    blocks = re.findall(rf"```{lang}\n(.*?)```", text, re.S)
    [block] = [b for b in blocks if containing in b]
    return block


def test_duckdb_reads_a_drop_as_the_docs_say(drops: dict[str, Path],
                                             truth: dict[str, dict[str, int]]) -> None:
    sql = doc_block("sql", "read_csv(").replace("'reports/", f"'{drops['default']}/")
    con = duckdb.connect()
    rows = con.execute(sql).fetchall()
    names = [d[0] for d in con.description]
    assert names == DELIVERED and len(rows) == len(truth)
    got = {r[0].removeprefix("'"): dict(zip(names, r, strict=True)) for r in rows}
    assert {g["Date"] for g in got.values()} == {DAY}
    assert {u: {c: g[c] for c in DELIVERED[2:]} for u, g in got.items()} == truth
    # the pitfall the docs warn about: left to guess, DuckDB takes the day for the month
    guessed = con.execute(f"SELECT DISTINCT \"Date\" FROM read_csv_auto("
                          f"'{csv_files(drops['default'])[0]}')").fetchall()
    print(f"consumers: duckdb guessed Date={guessed[0][0]} given the format={DAY}")
    # and both layouts read in one query by name
    both = sql.replace(f"'{drops['default']}/", f"['{drops['default']}/").replace(
        ".csv',", f".csv', '{drops['documented']}/AWSLogs/{ACCOUNT}/KiroLogs/by_user_analytic"
        "/*/*/*/*/*/*.csv'],", 1)
    assert len(con.execute(both).fetchall()) == 2 * len(truth)
    con.close()


def test_pandas_reads_a_drop_as_the_docs_say(drops: dict[str, Path],
                                             truth: dict[str, dict[str, int]],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(drops["default"].parent)
    scope: dict[str, Any] = {}
    exec(doc_block("python", "pd.read_csv"), scope)
    df: pd.DataFrame = scope["df"]
    assert list(df.columns) == DELIVERED and len(df) == len(truth)
    assert set(df["Date"].dt.date) == {DAY}
    got: dict[str, dict[str, int]] = defaultdict(dict)
    for record in df.to_dict("records"):
        got[str(record["UserId"]).removeprefix("'")] = {c: int(record[c]) for c in DELIVERED[2:]}
    assert dict(got) == truth  # "007", "NA" and "null" kept as the users they are
    assert glob  # (the docs' snippet imports it itself)


def test_the_athena_table_lists_the_delivered_columns_in_order() -> None:
    ddl = doc_block("sql", "CREATE EXTERNAL TABLE")
    columns = re.findall(r"^\s+`?(\w+)`? (?:string|bigint),?$", ddl, re.M)
    assert columns == DELIVERED
    assert "skip.header.line.count' = '1'" in ddl and "'MM-dd-yyyy'" in ddl
    assert metrics.DATE_FORMAT_ATHENA == "MM-dd-yyyy"
