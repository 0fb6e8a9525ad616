"""Every test of the admin HTTP API (tests/test_admin_api.py) again, with the server's control
state in a real PostgreSQL server instead of SQLite: the same authorization, settings, audit,
ledger and token answers from the other back end."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from conftest import Server, make_server
from test_admin_api import *  # noqa: F403 - the same tests, collected here with this fixture


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, postgres: Any) -> Iterator[Server]:
    url = postgres.new_database()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KIRO_ACTIVITY_DATABASE_URL", url)  # the tests' own `kiro-activity` runs
        s = make_server(tmp_path_factory.mktemp("pg-admin"), "--no-schedule", database_url=url)
        yield s
        s.stop()
