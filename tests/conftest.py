"""Shared fixtures: a real server process on 127.0.0.1 over a temporary data folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from kiro_activity import store
from kiro_activity.config import Config
from kiro_activity.demo import free_port, start_server

ACCOUNT = "111122223333"
REGION = "us-east-1"
PROFILE = f"arn:aws:codewhisperer:{REGION}:{ACCOUNT}:profile/ABCDEFGHIJKL"
OTHER_ACCOUNT = "444455556666"
OTHER_PROFILE = f"arn:aws:codewhisperer:eu-west-1:{OTHER_ACCOUNT}:profile/MNOPQRSTUVWX"
TARGET = "AmazonCodeWhispererService.SendTelemetryEvent"


@dataclass
class Server:
    """A running ``kiro-activity serve`` process and what tests need to talk to it."""

    data_dir: Path
    port: int
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Config:
        return Config(data_dir=self.data_dir)

    def start(self) -> None:
        self.proc = start_server(self.config, self.port, *self.extra)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def token(self, user: str, account: str = ACCOUNT) -> str:
        """A telemetry token for ``user`` (issued once, cached)."""
        key = f"{account}/{user}"
        if key not in self.tokens:
            conn = store.connect(self.config.control_db)
            [(_, tok)] = store.issue_tokens(conn, account, [user], now=time.time())
            conn.close()
            self.tokens[key] = tok
        return self.tokens[key]

    def client(self, user: str = "alice", account: str = ACCOUNT) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"Authorization": f"Bearer {self.token(user, account)}"})


def setup_accounts(data_dir: Path) -> None:
    conn = store.connect(Config(data_dir=data_dir).control_db)
    store.add_account(conn, ACCOUNT, REGION, now=time.time(), profile_arn=PROFILE)
    store.add_account(conn, OTHER_ACCOUNT, "eu-west-1", now=time.time(),
                      profile_arn=OTHER_PROFILE)
    conn.close()


def make_server(data_dir: Path, *extra: str) -> Server:
    setup_accounts(data_dir)
    server = Server(data_dir=data_dir, port=free_port(), extra=extra)
    server.start()
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per test module (its data folder is shared by that module's tests)."""
    s = make_server(tmp_path_factory.mktemp("data"))
    yield s
    s.stop()


def cli(data_dir: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real ``kiro-activity`` command line."""
    env = {**os.environ, "KIRO_ACTIVITY_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "kiro_activity", *args], capture_output=True,
                          text=True, env=env, input=input, timeout=120)
