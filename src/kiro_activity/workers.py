"""``serve --workers N``: N HTTP worker processes in front of one landing-log process.

One Python process answers HTTP with one core at most (one GIL). With ``--workers N`` the
supervising process binds the listening socket, opens the landing log, runs the daily scheduler,
and starts N copies of ``kiro-activity serve`` that share the listening socket and reach the
landing log through a socket pair each (:mod:`.storelink`). The guarantees do not change: one
writer, one group commit per batch of concurrent requests, one dedupe index, and a 200 only for
what is committed.

A worker that dies is started again; the supervisor stops on SIGTERM or SIGINT after its workers
have finished the requests they hold. If the supervisor itself is killed, every worker answers
503 to what it holds and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace

from .config import Config
from .landing import LandingLog
from .schedule import Scheduler
from .storelink import RemoteLanding, StoreLink

log = logging.getLogger(__name__)
RESTART_DELAY = 1.0  # between restarts of a worker that keeps dying
STOP_TIMEOUT = 30.0  # for a worker to finish its requests on shutdown


def bind(host: str, port: int, wait: float = 10.0, *, reuse_port: bool = False,
         ) -> socket.socket:
    """A listening socket on (host, port); until ``wait`` runs out a port in use is tried
    again (the workers of a supervisor that was killed close theirs within moments)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + wait
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            continue
        sock.listen(2048)
        sock.set_inheritable(True)
        return sock


def listeners(host: str, port: int, n: int) -> list[socket.socket]:
    """One listening socket per worker on the same port (SO_REUSEPORT): the kernel spreads new
    connections evenly over them, where one shared socket lets whichever worker wakes first
    take them all. The supervisor keeps them, so a replaced worker takes over its queue. The
    port is first bound alone, so that a previous run's sockets are surely closed."""
    bind(host, port).close()
    return [bind(host, port, 0, reuse_port=True) for _ in range(n)]


def supervise(config: Config, clock: Callable[[], float], workers: int,
              worker_args: list[str]) -> None:
    """Run the landing log and N workers until SIGTERM or SIGINT."""
    import uvloop

    socks = listeners(config.host, config.port, workers)
    try:
        uvloop.run(_supervise(config, clock, worker_args, socks))
    finally:
        for sock in socks:
            sock.close()


async def _supervise(config: Config, clock: Callable[[], float], worker_args: list[str],
                     socks: list[socket.socket]) -> None:
    loop = asyncio.get_running_loop()
    landing = LandingLog(config.landing_db, clock=clock, max_group=config.max_group_commit,
                         retention_days=config.retention_days)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = []
    if config.schedule:
        tasks.append(asyncio.create_task(Scheduler(config, clock).run(stop, landing.barrier)))

    async def start(listener: socket.socket) -> subprocess.Popen[bytes]:
        ours, theirs = socket.socketpair()
        theirs.set_inheritable(True)
        proc = subprocess.Popen(
            [*worker_args, "--worker-fds", f"{listener.fileno()},{theirs.fileno()}"],
            pass_fds=(listener.fileno(), theirs.fileno()),
        )
        theirs.close()
        await loop.connect_accepted_socket(lambda: StoreLink(landing, loop), ours)
        return proc

    procs = [await start(sock) for sock in socks]
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.2)
            for i, proc in enumerate(procs):
                if proc.poll() is not None and not stop.is_set():
                    log.error("worker %d exited with code %s; starting it again", proc.pid,
                              proc.returncode)
                    await asyncio.sleep(RESTART_DELAY)
                    procs[i] = await start(socks[i])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in procs:  # the store stays up until every worker has answered
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        landing.close()


def run_worker(config: Config, clock: Callable[[], float], fds: str, access_log: bool) -> None:
    """One HTTP worker: the usual app, with the supervisor's landing log behind a socket pair."""
    import uvicorn

    from .fastpath import protocol_for
    from .ingest import create_app

    listen_fd, link_fd = (int(fd) for fd in fds.split(","))
    listener = socket.socket(fileno=listen_fd)
    landing = RemoteLanding(socket.socket(fileno=link_fd))
    app = create_app(replace(config, schedule=False), clock=clock, landing=landing)
    server = uvicorn.Server(uvicorn.Config(
        app, loop="uvloop", http=protocol_for(app) if config.fast_path else "httptools",
        lifespan="on", access_log=access_log, log_level="warning",
    ))
    server.run(sockets=[listener])
