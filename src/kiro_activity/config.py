"""Configuration, read once at the edge (CLI or test) and passed down.

``Config.from_environ`` reads ``KIRO_ACTIVITY_*`` variables; every field has a default that runs
the embedded service with no setup.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

MIB = 1024 * 1024
#: what computes a rebuild: DuckDB in this process (the default), or Spark (:mod:`.spark`),
#: which reads the sealed day
ENGINES = ("duckdb", "spark")


@dataclass(frozen=True)
class Config:
    """Everything the service needs to know; tests build their own."""

    data_dir: Path = Path("kiro-data")
    host: str = "127.0.0.1"
    port: int = 8080
    #: largest request body, after gzip decompression too (spec: 1 MiB by default)
    max_body_bytes: int = MIB
    #: largest body of one bulk-import call (NDJSON), after decompression
    max_batch_bytes: int = 64 * MIB
    #: most lines in one bulk-import call
    max_batch_lines: int = 100_000
    #: worker processes that check the lines of large bulk-import calls (:mod:`.batchcheck`;
    #: started at the first such call; 0: on the event loop). Two: with the event loop and
    #: the landing writer, they keep both cores of a small machine busy (bench/RESULTS.md)
    batch_workers: int = 2
    #: per-token sustained rate (requests/s) and burst (bucket size)
    rate_per_token: float = 100.0
    burst_per_token: float = 1000.0
    #: per-token sustained rate and burst of events: a bulk call of N lines costs N (the burst
    #: covers one bulk call of the most lines)
    events_per_token: float = 1000.0
    events_burst_per_token: float = 100_000.0
    #: slow clients: seconds to send a request's headers (from its first byte, or from the
    #: connection's start), then its body; seconds an idle keep-alive connection is kept; most
    #: open connections (more are answered 503 and closed)
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 4096
    #: lingering close: a connection closed while its request is still arriving (a body over a
    #: limit, answered at once) is half-closed and the rest read and discarded, for at most
    #: ``linger_time`` seconds in all, ``linger_timeout`` seconds without data, ``linger_bytes``
    #: bytes; so the client reads the answer instead of a reset (0 s: close at once)
    linger_time: float = 30.0
    linger_timeout: float = 5.0
    linger_bytes: int = 256 * MIB
    #: failed authentications (bad bearer tokens, refused logins) allowed per source address
    #: within the window; then its requests are answered 429 (0: no limit)
    auth_failures_per_source: int = 100
    auth_failure_window: float = 60.0
    #: how long a clientToken is recognised, and raw events stay in the landing log (after
    #: that they leave it once archived: :mod:`.retention`)
    dedupe_days: int = 30
    #: how long the archive, the counters, the dashboard's snapshots and the delivery ledger
    #: keep a day, and how far back missed days are caught up
    retention_days: int = 90
    #: most requests the writer commits in one transaction
    max_group_commit: int = 4096
    #: produce and deliver reports at 00:00 UTC from the running service
    schedule: bool = True
    #: seconds between two runs of the archive's sealing in the running service (:mod:`.archive`)
    seal_interval: float = 300.0
    #: the principal the bucket policy must let put report objects (docs/location-checks.md,
    #: check 4): the service principal of the product documentation, or a self-hosted writer's
    #: IAM role ARN
    writer_principal: str = "q.amazonaws.com"
    #: answer single telemetry events straight from the HTTP parser (:mod:`.fastpath`)
    fast_path: bool = True
    #: what rebuilds a day from its raw events: "duckdb" in this process, or "spark" (Apache
    #: Spark over the sealed day, always rebuilt; needs ``kiro-activity[spark]``, and
    #: ``KIRO_ACTIVITY_SPARK_MASTER`` for a cluster: docs/scaling.md)
    engine: str = "duckdb"
    #: the control state (accounts, tokens, settings, delivery ledger, audit, sessions) in
    #: PostgreSQL, shared by replicas (``postgresql://user:password@host:port/database``);
    #: empty: SQLite in the data folder (docs/scaling.md)
    database_url: str = ""
    #: this replica's name when several serve processes share one PostgreSQL control database
    #: and one archive folder (a letter, then letters, digits, "-" or "_"; at most 40); empty:
    #: the only one. Each account's day is then produced once, by whichever replica claims
    #: it, from every replica's sealed segments (:mod:`.replicas`, docs/scaling.md)
    replica: str = ""
    #: the telemetry archive's folder (shared by the replicas); empty: ``DATA_DIR/archive``
    archive_folder: str = ""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Config:
        """Read ``KIRO_ACTIVITY_<FIELD>`` variables, then apply explicit ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f"KIRO_ACTIVITY_{f.name.upper()}")
            if raw is None:
                continue
            kind = type(getattr(cls, f.name))
            if kind is bool:
                values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            else:
                values[f.name] = Path(raw) if kind is type(Path()) else kind(raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)  # type: ignore[arg-type]

    @property
    def control_db(self) -> Path:
        return self.data_dir / "control.db"

    @property
    def control(self) -> Path | str:
        """Where the control state is: the PostgreSQL URL when set, else ``control.db``."""
        return self.database_url or self.control_db

    @property
    def landing_db(self) -> Path:
        return self.data_dir / "landing.db"

    @property
    def archive_dir(self) -> Path:
        """The telemetry archive: typed Parquet segments of every event (:mod:`.archive`)."""
        return Path(self.archive_folder) if self.archive_folder else self.data_dir / "archive"
