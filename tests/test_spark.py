"""The Spark engine equals the DuckDB engine: the same sealed days give the same report files,
byte for byte, on a data set that reaches the edge of every metric rule (each member, each
``where`` value and a value outside it, the command line, amounts past ``AMOUNT_MAX`` and below
BIGINT, values that are not numbers, missing fields, distinct keys with NULLs and duplicates)
and of the files (user ids that need quoting or formula neutralisation, that sort differently
by code point, by UTF-16 unit or by locale, and more than 1,000 users: two parts)."""

from __future__ import annotations

import itertools
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from click.testing import CliRunner

from conftest import ACCOUNT, OTHER_ACCOUNT, cli, setup_accounts
from kiro_activity import aggregate, archive, daily, landing, spark
from kiro_activity.cli import main
from kiro_activity.config import Config
from kiro_activity.errors import UsageError
from kiro_activity.landing import LandingLog, LandingRecord
from kiro_activity.metrics import AMOUNT_MAX, LAYOUTS, METRICS
from kiro_activity.report import build_drop
from kiro_activity.simulate import WEIGHTS, request_body

DAY = date(2026, 11, 30)
GEN = datetime(2026, 12, 1, 0, 0, 5, tzinfo=UTC)
THIRD = "777788889999"  # an account with no event that day: an empty report
ACCOUNTS = (ACCOUNT, OTHER_ACCOUNT, THIRD)
#: user ids for the files' edges: quotes, commas, newlines, formula starts, Unicode; sorted by
#: code point they differ from a locale's order (B < a, Z < _ < a, é after z) and from UTF-16
#: order (Java's String order: U+E000 and U+FFFF after U+1F600, whose surrogates are D83D DE00)
QUIRKY = ["alice", "Alice", "B", "Z", "_under", "a,b", 'say "hi"', "it's", "new\nline",
          "=1+1", "+1", "-1", "@SUM(A1)", "\tt", "\rr", "é", "e\u0301", "z", "Å", "ß", "日本",
          "\ue000", "\uffff", "😀", "𝔘", " space", "trailing ", ""]
#: amounts where numbers are expected: ordinary, at and past the bound, below BIGINT's sum,
#: not integers, not numbers, null (and, below, missing)
AMOUNTS: list[Any] = [7, 0, AMOUNT_MAX, AMOUNT_MAX + 1, 2**40, 2**63 - 1, 1e30, 3.7, -5,
                      -(2**63), -(2**63), "12", True, None, [1], {"v": 1}]
MISSING = object()
#: py4j leaves its gateway sockets to the garbage collector
pytestmark = pytest.mark.filterwarnings("ignore:unclosed <socket:ResourceWarning")


def _set(event: dict[str, Any], name: str, value: object) -> dict[str, Any]:
    out = dict(event)
    if value is MISSING:
        out.pop(name, None)
    else:
        out[name] = value
    return out


def rule_events() -> Iterator[tuple[str, dict[str, Any], str | None]]:
    """For every rule of METRICS: events that match it, and each way of nearly matching it,
    as (member, member object, ideCategory), generated from the rule table itself."""
    for m in METRICS:
        r = m.rule
        for member in r.members:
            for combo in itertools.product(*[sorted(values) for _, values in r.where]):
                base: dict[str, Any] = {f: v for (f, _), v in zip(r.where, combo, strict=True)}
                if r.field:
                    base[r.field] = 3
                for f in r.distinct_on:
                    base[f] = f"{f}-1"
                yield member, base, "VSCODE"
                for ide in ("CLI", None, "JETBRAINS"):
                    yield member, base, ide
                for f, _ in r.where:  # a value outside the set, a number, null, missing
                    for v in ("NOPE", "accept", 1, None, MISSING):
                        yield member, _set(base, f, v), "VSCODE"
                if r.field:
                    for amount in [*AMOUNTS, MISSING]:
                        yield member, _set(base, r.field, amount), rng_ide(amount)
                if r.distinct_on:  # duplicates, NULLs in one field or all, non-strings
                    for key in itertools.product(["k1", "k2", None, 5, "", MISSING], repeat=2):
                        e = base
                        for f, v in zip(r.distinct_on, key, strict=True):
                            e = _set(e, f, v)
                        yield member, e, "VSCODE"
                        yield member, e, "CLI"


def rng_ide(amount: object) -> str | None:
    return ("CLI", "VSCODE", None)[hash(repr(amount)) % 3]


def write_day(db: Path) -> None:
    """The data set, as raw rows in the landing log (no validation: what an older version or
    a damaged client may have stored)."""
    rng = random.Random(10)
    start, _ = aggregate.day_window(DAY)
    rows: list[tuple[object, ...]] = []

    def add(account: str, user: str, member: str, body: dict[str, Any],
            ide: str | None, day_offset: int = 0) -> None:
        rows.append((start + day_offset * aggregate.DAY_US + len(rows), account, user, member,
                     None, None, "OPTIN", None, ide, "test", orjson.dumps(body)))

    # bulk: 1,100 simulated users (two parts of the report), every member
    members = list(WEIGHTS)
    for i in range(1100):
        user = f"user{(i * 7919) % 1100:05d}"
        for member in rng.choices(members, list(WEIGHTS.values()), k=rng.randint(1, 6)):
            body = request_body(member, rng, user_id=user, client_token=False)
            add(ACCOUNT, user, member, body, body["userContext"]["ideCategory"])
    # the edges of every rule, spread over the quirky users
    for member, event, ide in rule_events():
        body = {"telemetryEvent": {member: event}, "userContext": {"ideCategory": ide}}
        add(ACCOUNT, rng.choice(QUIRKY), member, body, ide)
        if rng.random() < 0.2:
            add(OTHER_ACCOUNT, rng.choice(QUIRKY[:8]), member, body, ide)
    # a body whose member object is not an object, and one of another member than the row's
    add(ACCOUNT, "odd", "inlineChatEvent", {"telemetryEvent": {"inlineChatEvent": 5}}, None)
    add(ACCOUNT, "odd", "inlineChatEvent", {"telemetryEvent": {"transformEvent": {}}}, None)
    # the day before and after: not in the day's report
    add(ACCOUNT, "elsewhen", "chatAddMessageEvent",
        {"telemetryEvent": {"chatAddMessageEvent": {}}}, None, -1)
    add(THIRD, "tomorrow", "chatAddMessageEvent",
        {"telemetryEvent": {"chatAddMessageEvent": {}}}, None, 1)
    conn = landing.connect(db)
    try:
        conn.execute("BEGIN")
        conn.executemany(landing.INSERT, rows)
        conn.execute("COMMIT")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def session() -> Iterator[None]:
    """One SparkSession (local mode) for the module."""
    spark.session()
    yield
    spark.stop()


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    db = tmp_path_factory.mktemp("spark") / "landing.db"
    write_day(db)
    archive_dir = db.parent / "archive"
    archive.seal(db, archive_dir, now=datetime(2030, 1, 1, tzinfo=UTC).timestamp())
    out: dict[str, Path] = {}
    for a in ACCOUNTS:  # closed long ago: compacted, one segment each
        files = archive.day_files(db, archive_dir, a, DAY)
        assert len(files) <= 1
        out[a] = files[0] if files else db.parent / f"{a}-empty.parquet"
    first = next(p for p in out.values() if p.exists())
    for path in out.values():  # an account without events: an empty file of the same columns
        if not path.exists():
            duckdb.sql(f"COPY (SELECT * FROM read_parquet('{first}') LIMIT 0) TO '{path}'"
                       " (FORMAT parquet)")
    return out


def test_every_rule_is_reached(sealed: dict[str, Path]) -> None:
    """The data set is what it claims: every metric non-zero for some user, a sum below
    BIGINT's range, more than 1,000 users, and no event at all for the third account."""
    rows, _ = aggregate.aggregate_table(sealed[ACCOUNT])
    assert len(rows) > 1000
    assert all(any(values[i] for _, values in rows) for i in range(len(METRICS)))
    assert min(v for _, values in rows for v in values) < -(2**63)
    assert aggregate.aggregate_table(sealed[THIRD]) == ([], 0)


def test_tables_equal(session: None, sealed: dict[str, Path]) -> None:
    for account in (ACCOUNT, THIRD):
        assert spark.aggregate_table([sealed[account]]) == aggregate.aggregate_table(
            sealed[account])


def test_report_files_equal_byte_for_byte(session: None, sealed: dict[str, Path]) -> None:
    figures = []
    # the layouts differ in column order only: both for the first account, one each else
    cases = [*((ACCOUNT, layout) for layout in LAYOUTS), (OTHER_ACCOUNT, LAYOUTS[1]),
             (THIRD, LAYOUTS[0])]
    for account, layout in cases:
        drops = []
        for cells, events in (aggregate.aggregate_cells(sealed[account], layout),
                              spark.aggregate_cells([sealed[account]], layout)):
            agg = aggregate.DayAggregate(account, DAY, aggregate.day_window(DAY), [], events,
                                         cells, layout)
            drops.append(build_drop(agg, region="us-east-1", prefix="p", layout=layout,
                                    generated_at=GEN))
        duck, sp = drops
        assert [o.key for o in sp.objects] == [o.key for o in duck.objects]
        for a, b in zip(sp.objects, duck.objects, strict=True):
            assert a.data == b.data, a.key
        figures.append((account, layout, duck.users, len(duck.parts)))
    assert (ACCOUNT, "delivered", 1100 + len(QUIRKY) + 1, 2) in figures


def test_an_old_seal_with_unclamped_amounts(session: None, sealed: dict[str, Path],
                                            tmp_path: Path) -> None:
    """A sealed day from before amounts were clamped at sealing: each engine clamps them."""
    old = tmp_path / "old.parquet"
    con = duckdb.connect()
    n = [c for c in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{sealed[ACCOUNT]}')")
         .fetchall() if c[0].startswith("n_")]
    huge = ", ".join(f"CASE WHEN {c[0]} IS NOT NULL THEN 4611686018427387904 END AS {c[0]}"
                     for c in n)
    con.execute(f"COPY (SELECT * REPLACE ({huge}) FROM read_parquet('{sealed[ACCOUNT]}'))"
                f" TO '{old}' (FORMAT parquet)")
    con.close()
    assert spark.aggregate_table([old]) == aggregate.aggregate_table(old)
    assert spark.aggregate_table([]) == ([], 0)


def test_cli_report_build_and_run_with_spark(session: None, tmp_path: Path) -> None:
    """``report build --engine spark`` writes what ``--engine duckdb`` writes (counters, and
    rebuild), minus the manifest's generation time; ``report run`` with the spark engine
    delivers the same files."""
    data = tmp_path / "data"
    setup_accounts(data)
    day = datetime.now(UTC).date() - timedelta(days=1)
    at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()
    rng = random.Random(3)
    records = []
    for i in range(1010):
        user = QUIRKY[i] if i < len(QUIRKY) else f"u{i}"
        for member in rng.choices(list(WEIGHTS), list(WEIGHTS.values()), k=rng.randint(1, 4)):
            body = request_body(member, rng, user_id=user, client_token=False)
            records.append(LandingRecord(ACCOUNT, user, member, None, None, None,
                                         body["userContext"]["ideCategory"], "test",
                                         orjson.dumps(body)))
    log = LandingLog(Config(data_dir=data).landing_db, clock=lambda: at)
    try:
        log.append_sync(records)
    finally:
        log.close()
    assert cli(data, "settings", "set", ACCOUNT, "--enable").returncode == 0

    def build(*args: str) -> tuple[int, str, dict[str, bytes]]:
        out = tmp_path / "-".join(args)
        done = CliRunner().invoke(main, ["--data-dir", str(data), "report", "build", "--account",
                                         ACCOUNT, "--out", str(out), *args])
        return done.exit_code, done.output, files(out) if out.exists() else {}

    # in this process (its SparkSession is warm): a process of its own spends ~30 s of its
    # first query starting and warming a JVM
    started = time.monotonic()
    code, output, with_spark = build("--date", day.isoformat(), "--engine", "spark")
    assert code == 0, output
    print(f"report build --engine spark: {time.monotonic() - started:.1f} s")
    assert len(with_spark) == 3  # two parts and the manifest
    assert with_spark == build("--date", day.isoformat(), "--engine", "duckdb")[2] == build(
        "--date", day.isoformat(), "--engine", "duckdb", "--rebuild")[2]
    assert archive.day_files(data / "landing.db", data / "archive", ACCOUNT, day)  # sealed

    code, output, _ = build("--date", (day + timedelta(days=1)).isoformat(), "--engine",
                            "spark")
    assert code == 1 and "not closed yet" in output

    # report run: the same plan and delivery, with the spark engine (in this process)
    config = replace(Config(data_dir=data), engine="spark")
    outcome = daily.deliver_day(config, ACCOUNT, day, now=time.time)
    assert outcome.state == "delivered", outcome.error
    assert files(data / "reports") == with_spark


def files(root: Path) -> dict[str, bytes]:
    """The files under ``root`` by key, the manifest without its generation time."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".json":
            doc = orjson.loads(data)
            doc.pop("generated_at")
            data = orjson.dumps(doc)
        out[str(path.relative_to(root))] = data
    return out


def test_engine_choice_and_missing_pyspark(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    assert Config.from_environ({"KIRO_ACTIVITY_ENGINE": "spark"}).engine == "spark"
    assert Config().engine == "duckdb"
    with pytest.raises(UsageError, match="not one of duckdb, spark"):
        aggregate.aggregate_day(tmp_path / "landing.db", ACCOUNT, DAY, engine="flink",
                                archive_dir=tmp_path)
    monkeypatch.setitem(sys.modules, "pyspark", None)  # as if not installed
    with pytest.raises(UsageError, match=r"pip install 'kiro-activity\[spark\]'"):
        spark.session()


def test_replicas_segments_count_a_retry_once_in_both_engines(session: None,
                                                               tmp_path: Path) -> None:
    """Several replicas' segments of a day (kiro_activity.replicas): a client's retry that
    reached the other replica (the same user and clientToken) counts once, in both engines;
    events without a clientToken all count."""
    start, _ = aggregate.day_window(DAY)

    def body(token: str | None, message: str) -> bytes:
        out: dict[str, Any] = {"telemetryEvent": {"chatAddMessageEvent": {
            "conversationId": "c", "messageId": message}}, "userContext": {}}
        if token:
            out["clientToken"] = token
        return orjson.dumps(out)

    received = {"a": [("u1", "t1", "m1"), ("u1", None, "m3"), ("u2", "t1", "m4")],
                "b": [("u1", "t1", "m1"), ("u1", "t2", "m2"), ("u1", None, "m3")]}
    paths = []
    for replica, events in received.items():
        db = tmp_path / replica / "landing.db"
        conn = landing.connect(db)
        conn.execute("BEGIN")
        conn.executemany(landing.INSERT, [
            (start + i, ACCOUNT, user, "chatAddMessageEvent", token, None, "OPTIN", None, None,
             "test", body(token, message)) for i, (user, token, message) in enumerate(events)])
        conn.execute("COMMIT")
        conn.close()
        archive.seal(db, tmp_path / "archive", now=datetime(2030, 1, 1, tzinfo=UTC).timestamp(),
                     replica=replica)
        paths += archive.day_files(db, tmp_path / "archive", ACCOUNT, DAY)
    assert [p.name[:6] for p in paths] == ["seg-a-", "seg-b-"]
    sent = aggregate.aggregate_table((paths, aggregate.read_day(tmp_path / "none.db", ACCOUNT,
                                                                 DAY)))
    assert sent[1] == 6  # every row of both segments
    once = aggregate.aggregate_table(aggregate.Once(paths))
    assert once[1] == 5  # u1's retry of t1 once; u2's t1 is another user's; m3 has no token
    assert [user for user, _ in once[0]] == ["u1", "u2"]
    assert spark.aggregate_table(paths, once=True) == once
    layout = "documented"
    assert spark.aggregate_cells(paths, layout, once=True) == aggregate.aggregate_cells(
        aggregate.Once(paths), layout)
