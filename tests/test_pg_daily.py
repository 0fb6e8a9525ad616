"""Every test of the delivery ledger and the schedule (tests/test_daily.py) again, with the
ledger in a real PostgreSQL server instead of SQLite: plans, resumes after a crash, outages,
configuration errors, replacements and missed days mean the same on both back ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import setup_accounts
from kiro_activity.config import Config
from test_daily import *  # noqa: F403 - the same tests, collected here with this fixture


@pytest.fixture
def config(tmp_path: Path, pg_url: str) -> Config:
    cfg = Config(data_dir=tmp_path / "data", database_url=pg_url)
    cfg.data_dir.mkdir(parents=True)  # no control.db in it to create it
    setup_accounts(cfg.data_dir, pg_url)
    return cfg


@pytest.fixture(autouse=True)
def _cli_uses_postgres(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("KIRO_ACTIVITY_DATABASE_URL", pg_url)
