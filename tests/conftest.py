"""Shared fixtures: a real server process on 127.0.0.1 over a temporary data folder."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    database_url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Config:
        return Config(data_dir=self.data_dir, database_url=self.database_url)

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
            conn = store.connect(self.config.control)
            [(_, tok)] = store.issue_tokens(conn, account, [user], now=time.time(), actor="test")
            conn.close()
            self.tokens[key] = tok
        return self.tokens[key]

    def admin_token(self, name: str, *accounts: str) -> str:
        """A new admin token of ``name`` that administers ``accounts``."""
        conn = store.connect(self.config.control)
        [(_, tok)] = store.issue_tokens(conn, accounts[0], [name], now=time.time(),
                                        actor="test", kind="admin", scopes=accounts[1:])
        conn.close()
        return tok

    def client(self, user: str = "alice", account: str = ACCOUNT) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"Authorization": f"Bearer {self.token(user, account)}"})


def setup_accounts(data_dir: Path, database_url: str = "") -> None:
    conn = store.connect(Config(data_dir=data_dir, database_url=database_url).control)
    store.add_account(conn, ACCOUNT, REGION, now=time.time(), profile_arn=PROFILE)
    store.add_account(conn, OTHER_ACCOUNT, "eu-west-1", now=time.time(),
                      profile_arn=OTHER_PROFILE)
    conn.close()


def make_server(data_dir: Path, *extra: str, database_url: str = "") -> Server:
    setup_accounts(data_dir, database_url)
    server = Server(data_dir=data_dir, port=free_port(), extra=extra, database_url=database_url)
    server.start()
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per test module (its data folder is shared by that module's tests)."""
    s = make_server(tmp_path_factory.mktemp("data"))
    yield s
    s.stop()


def cli(data_dir: Path, *args: str, input: str | None = None,
        database_url: str = "") -> subprocess.CompletedProcess[str]:
    """Run the real ``kiro-activity`` command line."""
    env = {**os.environ, "KIRO_ACTIVITY_DATA_DIR": str(data_dir)}
    if database_url:
        env["KIRO_ACTIVITY_DATABASE_URL"] = database_url
    return subprocess.run([sys.executable, "-m", "kiro_activity", *args], capture_output=True,
                          text=True, env=env, input=input, timeout=120)


def answers(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def _moto_server(*command: str) -> Iterator[str]:
    """Run a moto S3 server command on a free loopback port until the session ends."""
    port = free_port()
    proc = subprocess.Popen([*command, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not answers(port):
            assert proc.poll() is None, f"{command[-1]} exited"
            assert time.monotonic() < deadline, f"{command[-1]} did not answer"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's S3 server as a real process on loopback."""
    yield from _moto_server(sys.executable, "-m", "moto.server")


#: a closed port on loopback: where S3 calls go unless a test points them at moto
NO_S3 = "http://127.0.0.1:9"


@pytest.fixture(scope="session", autouse=True)
def _nothing_leaves_the_machine() -> Iterator[None]:
    """Every boto3 client of the tests and of the servers they start reaches loopback only,
    whatever the machine's AWS configuration says."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL_S3", NO_S3)
        mp.setenv("AWS_ENDPOINT_URL", NO_S3)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials, no profile files, no metadata service: nothing leaves the machine."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", NO_S3)
    monkeypatch.setenv("AWS_ENDPOINT_URL", NO_S3)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


CHROMIUM = os.environ.get("KIRO_ACTIVITY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
#: where the browser tests save a screenshot of each page they check (a CI artifact folder)
SCREENSHOTS = Path(os.environ.get("KIRO_ACTIVITY_SCREENSHOTS",
                                  Path(__file__).parent.parent / "test-artifacts" / "screenshots"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless chromium, driven by Playwright (no browser download); per module,
    since Playwright's sync API keeps an event loop running in the main thread until closed."""
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium package "
                    "(.ci/run and 'make test' do)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="session")
def moto_owner_url() -> Iterator[str]:
    """moto's S3 server that also enforces ExpectedBucketOwner (tests/moto_owner.py)."""
    yield from _moto_server(sys.executable, str(Path(__file__).with_name("moto_owner.py")))


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A private PostgreSQL server on 127.0.0.1 (see tests/pg.py); ``.new_database()`` gives
    each test its own empty database."""
    from pg import running

    with running() as server:
        if server is None:
            if os.environ.get("KIRO_ACTIVITY_TEST_NO_POSTGRES") == "1":
                pytest.skip("PostgreSQL is not installed (KIRO_ACTIVITY_TEST_NO_POSTGRES=1)")
            pytest.fail("PostgreSQL is not installed: run scripts/ensure-postgres (Debian's "
                        "postgresql package), or set KIRO_ACTIVITY_TEST_NO_POSTGRES=1 to skip")
        yield server


@pytest.fixture
def pg_url(postgres: Any) -> str:
    """The URL of a fresh PostgreSQL database of this test's own."""
    return str(postgres.new_database())
