"""Every test of the admin web pages (tests/test_web.py) again, with the server's control state
(sessions included) in a real PostgreSQL server instead of SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from conftest import Server, make_server
from test_web import *  # noqa: F403 - the same tests, collected here with this fixture


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, bucket: tuple[str, dict[str, str]],
           postgres: Any) -> Iterator[Server]:
    url = postgres.new_database()
    with pytest.MonkeyPatch.context() as mp:
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(key, raising=False)
        for key, value in bucket[1].items():
            mp.setenv(key, value)
        mp.setenv("KIRO_ACTIVITY_DATABASE_URL", url)
        s = make_server(tmp_path_factory.mktemp("pg-web"), "--no-schedule", database_url=url)
        yield s
        s.stop()
