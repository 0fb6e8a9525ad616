"""The 44 metrics per user computed by Apache Spark over sealed days: the distributed engine.

The same pivot as :func:`.aggregate.pivot_sql`, generated from the same rule table of
:mod:`.metrics` (Spark column expressions instead of DuckDB SQL), over the same input: a closed
day's typed Parquet segments of the archive (:mod:`.archive`). Each rule keeps DuckDB's exact
semantics, so both engines give the same report byte for byte (``tests/test_spark.py``):

* a count is ``count(*) FILTER (WHERE cond)``: a condition that is NULL does not count;
* a sum clamps each amount at ``AMOUNT_MAX``, adds them as ``DECIMAL(38, 0)`` (DuckDB sums
  BIGINT into HUGEINT: no overflow), is 0 when nothing matched and at most ``SUM_MAX``;
* a distinct count counts distinct *structs* of the key fields: a struct whose fields are all
  NULL is one value (as in DuckDB, and :func:`.metrics.evaluate`), not skipped as Spark's
  ``count(DISTINCT a, b)`` would;
* users come in code-point order (Spark, like DuckDB, compares strings by their UTF-8 bytes),
  and cells are the values cast to strings joined by ``,``.

pyspark is optional (``pip install 'kiro-activity[spark]'``) and imported only when this engine
runs. The session is created once per process, in local mode (``local[2]``, bound to 127.0.0.1,
no UI) unless ``KIRO_ACTIVITY_SPARK_MASTER`` names a cluster, or ``spark-submit`` started the
process (then its ``--master`` and ``--conf`` apply). ``python -m kiro_activity.spark`` (or the
file, for ``spark-submit``) writes a day's report files from sealed Parquet paths; see
docs/scaling.md.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

# absolute imports: spark-submit runs this file as a script, not as a module of the package
from kiro_activity.aggregate import MEMBER_IDS
from kiro_activity.errors import UsageError
from kiro_activity.metrics import AMOUNT_MAX, METRICS, SUM_MAX, Rule, column_order

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

#: the Spark master of the session (e.g. ``spark://host:7077``); local mode when not set
MASTER_ENV = "KIRO_ACTIVITY_SPARK_MASTER"
LOCAL_MASTER = "local[2]"
INSTALL_HINT = "the spark engine needs pyspark: pip install 'kiro-activity[spark]'"
#: how sums are added: wide enough for any sum of BIGINTs a day can hold (DuckDB: HUGEINT)
WIDE = "decimal(38,0)"

_session: SparkSession | None = None
_lock = threading.Lock()


def _require_pyspark() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise UsageError(INSTALL_HINT) from None


def _under_spark_submit() -> bool:
    """Whether spark-submit started this process (its JVM is already there, with its conf)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def session() -> SparkSession:
    """The process's SparkSession, created on first use."""
    global _session
    _require_pyspark()
    from pyspark.sql import SparkSession

    with _lock:
        if _session is None:
            builder = SparkSession.builder.appName("kiro-activity")
            master = os.environ.get(MASTER_ENV) or (
                None if _under_spark_submit() else LOCAL_MASTER)
            if master is not None:
                builder = builder.master(master)
            if master is not None and master.startswith("local"):
                # one machine: loopback only, no UI, as few shuffle partitions as cores
                os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
                for key, value in (("spark.driver.host", "127.0.0.1"),
                                   ("spark.driver.bindAddress", "127.0.0.1"),
                                   ("spark.ui.enabled", "false"),
                                   ("spark.sql.shuffle.partitions", "2")):
                    builder = builder.config(key, value)
            builder = (builder.config("spark.ui.showConsoleProgress", "false")
                       .config("spark.log.level", "ERROR"))
            _session = builder.getOrCreate()
        return _session


def stop() -> None:
    """Stop the process's SparkSession (a later :func:`session` starts a new one)."""
    global _session
    with _lock:
        if _session is not None:
            _session.stop()
            _session = None


def _condition(rule: Rule) -> Column:
    """The rule's filter, as :func:`.aggregate._condition` writes it for DuckDB."""
    from pyspark.sql import functions as F

    cond = F.col("member_id").isin(sorted(MEMBER_IDS[m] for m in rule.members))
    if rule.not_cli:
        cond = cond & ~F.col("ide_category").eqNullSafe("CLI")
    for field, values in rule.where:
        cond = cond & F.col(f"s_{field}").isin(sorted(values))
    return cond


def _expression(rule: Rule) -> Column:
    """The rule's aggregate, as :func:`.aggregate._expression` writes it for DuckDB."""
    from pyspark.sql import functions as F

    cond = _condition(rule)
    if rule.agg == "count":
        return F.count(F.when(cond, F.lit(1)))
    if rule.agg == "sum":
        n = F.col(f"n_{rule.field}")
        amount = F.when(n > AMOUNT_MAX, F.lit(AMOUNT_MAX)).otherwise(n).cast(WIDE)
        total = F.coalesce(F.sum(F.when(cond, amount)), F.lit(0).cast(WIDE))
        return F.least(total, F.lit(SUM_MAX).cast(WIDE))
    key = F.struct(*[F.col(f"s_{f}").alias(f) for f in rule.distinct_on])
    return F.count_distinct(F.when(cond, key))


def pivot(paths: Sequence[Path | str], once: bool = False) -> DataFrame:
    """Per user ``user_id``, ``events`` and the metrics ``m0``..``m43`` in METRICS order
    (``once``: each (user, clientToken) once, as :func:`.aggregate.once_sql`)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    events = session().read.parquet(*[str(p) for p in paths])
    if once:
        token = F.get_json_object("body", "$.clientToken")
        first = Window.partitionBy("user_id", token).orderBy("received_us", "seq")
        events = (events.withColumn("_nth", F.row_number().over(first))
                  .where(token.isNull() | (F.col("_nth") == 1)).drop("_nth"))
    return events.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("events"),
        *[_expression(m.rule).alias(f"m{i}") for i, m in enumerate(METRICS)])


def _ordered(frame: DataFrame, *columns: Column | str) -> list[Any]:
    from pyspark.sql import functions as F

    return frame.select(*columns).orderBy(F.col("user_id").asc_nulls_last()).collect()


def aggregate_table(paths: Sequence[Path | str],
                    once: bool = False) -> tuple[list[tuple[str, list[int]]], int]:
    """Per user (code-point order) the metrics in METRICS order, and the number of events:
    :func:`.aggregate.aggregate_table` of the same sealed files, computed by Spark."""
    if not paths:
        return [], 0
    result = _ordered(pivot(paths, once), "user_id", "events",
                      *[f"m{i}" for i in range(len(METRICS))])
    rows = [(r[0], [int(v) for v in r[2:]]) for r in result]
    return rows, sum(int(r[1]) for r in result)


def aggregate_cells(paths: Sequence[Path | str], layout: str,
                    once: bool = False) -> tuple[list[tuple[str, str]], int]:
    """Like :func:`aggregate_table`, each user's cells joined by Spark in the layout's column
    order: :func:`.aggregate.aggregate_cells` of the same sealed files."""
    from pyspark.sql import functions as F

    if not paths:
        return [], 0
    frame = pivot(paths, once)  # first: columns need the session
    cells = F.concat_ws(",", *[F.col(f"m{i}").cast("string") for i in column_order(layout)])
    result = _ordered(frame, "user_id", "events", cells.alias("cells"))
    return [(r[0], r[2]) for r in result], sum(int(r[1]) for r in result)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m kiro_activity.spark`` / ``spark-submit spark.py``: write one account's day
    of report files, computed by Spark from sealed Parquet paths (local paths, or any URI the
    cluster's Hadoop file systems read, such as ``s3a://``), under ``--out`` at their keys."""
    import click

    from kiro_activity.aggregate import DayAggregate, day_window
    from kiro_activity.daily import check_day
    from kiro_activity.metrics import DEFAULT_LAYOUT, LAYOUTS
    from kiro_activity.report import build_drop

    @click.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--account", "account_id", required=True)
    @click.option("--date", "day", required=True, help="The UTC day, YYYY-MM-DD.")
    @click.option("--region", required=True, help="Region of the account's profile.")
    @click.option("--layout", type=click.Choice(LAYOUTS), default=DEFAULT_LAYOUT,
                  show_default=True)
    @click.option("--prefix", default="", help="The S3 prefix the keys start with.")
    @click.option("--out", type=click.Path(path_type=Path), required=True,
                  help="Folder to write the files under, at their keys.")
    @click.argument("paths", nargs=-1, required=True)
    def command(account_id: str, day: str, region: str, layout: str, prefix: str, out: Path,
                paths: tuple[str, ...]) -> None:
        """Write the report files of ACCOUNT's DATE from its sealed day(s) PATHS."""
        try:
            when = check_day(day)
            cells, events = aggregate_cells(list(paths), layout)
        except UsageError as exc:
            raise click.ClickException(str(exc)) from None
        agg = DayAggregate(account_id, when, day_window(when), [], events, cells, layout)
        drop = build_drop(agg, region=region, prefix=prefix, layout=layout,
                          generated_at=datetime.now(UTC))
        for obj in drop.objects:
            path = out / obj.key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(obj.data)
            click.echo(str(path))
        click.echo(f"{drop.users} users, {drop.events} events, {len(drop.parts)} part(s)",
                   err=True)

    try:
        command.main(args=list(sys.argv[1:] if argv is None else argv),
                     prog_name="python -m kiro_activity.spark")
    finally:
        stop()


if __name__ == "__main__":
    main()
