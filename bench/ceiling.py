"""Where the single-event target is lost: the durable path taken apart layer by layer, in one run.

    python bench/ceiling.py [--seconds 6] [--rounds 4] [--connections 16[,64]] [--only A,B]

Servers under the same wrk load as ``bench/run.py`` (keep-alive connections, the same body and
500 tokens), rounds alternating, each a layer more of what a durable answer costs:

1. ``bare``: the bare ASGI endpoint (``bench/hello.py``), the issue's reference;
2. ``stubbed``: kiro-activity with the landing log replaced by a stub that acknowledges at once
   and stores nothing: the whole request path (HTTP fast path, auth, rate limit, JSON parse,
   validation, metric deltas, the record), no writer process. The ceiling for any storage
   design that leaves this process;
3. ``journal``: the stub, but each turn's requests are appended to a preallocated file and
   ``fdatasync``'d on the event loop before they are answered (no dedupe, no SQLite, no writer
   process): the bound for a design that keeps only an fsync'd journal on the request's path
   and does SQLite's work somewhere else on the same machine;
4. ``link``: the real landing log and writer process, but the writer stores nothing (its
   insert answers at once): what the group, its pickle and the round trip to a second process
   cost;
5. ``no-fsync``: the writer inserts and commits as shipped, with ``synchronous=NORMAL`` (no
   fsync per commit; not durable): what the SQLite work costs apart from the disk's flush;
6. ``durable``: kiro-activity as shipped (every 200 fsync'd).

With ``--connections 16,64`` every server is measured at each count: a closed loop of 16
connections is bound by the round trip, so what the machine could do at all shows with more.

CPU per request is read around every wrk run: the server process (its event loop), its child
processes (the landing writer, the batch checkers), wrk (``getrusage`` of this script's
children), and the whole machine (``/proc/stat``). ``bound`` is the ratio the server would
reach if every core were busy at that cost per request (cores / machine CPU per request,
against the bare endpoint's measured rate): no scheduling or overlap can do better than it
without less CPU per request.

The variants are patched in by this script only (``python -c`` launchers that replace a function
before the service starts; for ``link`` and ``no-fsync`` also in the writer process, whose
command the launcher rewrites); the product has no such switch.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kiro_activity.demo import free_port
from run import HERE, prepare, write_body, wrk  # bench/run.py, beside this script

SERVE = """
import sys
{patch}
from kiro_activity.cli import main
sys.argv[0] = "kiro-activity"
main()
"""

STUB = """
from kiro_activity import landing
def submit(self, records, loop, then=None):
    done = loop.create_future()
    done.set_result(len(records))
    if then is not None:  # as the log calls it: once resolved, not from inside the parser
        loop.call_soon(then, done)
    return done
landing.LandingLog.submit = submit
"""

#: the stub's answers held until each turn's requests are in a file, fdatasync'd on the loop
JOURNAL = """
import os
from kiro_activity import landing
SIZE = 64 << 20  # written once with zeros: every later fdatasync overwrites, as the WAL's do
state = {}
def submit(self, records, loop, then=None):
    fut = loop.create_future()
    if not state:
        fd = os.open(str(self.path) + ".bench-journal", os.O_RDWR | os.O_CREAT, 0o600)
        zeros = bytes(1 << 20)
        for i in range(SIZE >> 20):
            os.pwrite(fd, zeros, i << 20)
        os.fsync(fd)
        state.update(fd=fd, at=0, pending=[], scheduled=False)
    state["pending"].append((records, fut, then))
    if not state["scheduled"]:
        state["scheduled"] = True
        loop.call_soon(flush)
    return fut
def flush():
    state["scheduled"] = False
    items, state["pending"] = state["pending"], []
    data = b"".join(r.body for records, _, _ in items for r in records)
    if state["at"] + len(data) > SIZE:
        state["at"] = 0
    os.pwrite(state["fd"], data, state["at"])
    state["at"] += len(data)
    os.fdatasync(state["fd"])
    for records, fut, then in items:
        fut.set_result(len(records))
        if then is not None:
            then(fut)
landing.LandingLog.submit = submit
"""

#: the service starts its writer as ``python -m kiro_activity.writer DB FD``: this runs WRITER
#: (with the same DB FD arguments) instead
WRITER_COMMAND = """
import subprocess, types
from kiro_activity import landing
WRITER = {writer!r}
def popen(args, **kwargs):
    if list(args[1:3]) == ["-m", "kiro_activity.writer"]:
        args = [args[0], "-c", WRITER, *args[3:]]
    return subprocess.Popen(args, **kwargs)
landing.subprocess = types.SimpleNamespace(Popen=popen, TimeoutExpired=subprocess.TimeoutExpired)
"""

NULL_WRITER = """
from kiro_activity import landing, writer
last = 0
def insert_rows(conn, rows):
    global last
    last += landing.events_of_rows(rows)
    return last
landing.insert_rows = insert_rows
writer.main()
"""

NO_FSYNC_WRITER = """
from kiro_activity import landing, writer
connect = landing.connect
def without_fsync(path, **kwargs):
    conn = connect(path, **kwargs)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn
landing.connect = without_fsync
writer.main()
"""

#: name -> (what it is, the python arguments that start it)
SERVERS: dict[str, tuple[str, list[str]]] = {
    "stubbed": ("storage stubbed out", ["-c", SERVE.format(patch=STUB)]),
    "journal": ("an fsync'd file, no SQLite", ["-c", SERVE.format(patch=JOURNAL)]),
    "link": ("writer stores nothing", [
        "-c", SERVE.format(patch=WRITER_COMMAND.format(writer=NULL_WRITER))]),
    "no-fsync": ("commits not fsync'd", [
        "-c", SERVE.format(patch=WRITER_COMMAND.format(writer=NO_FSYNC_WRITER))]),
    "durable": ("as shipped", ["-m", "kiro_activity"]),
}


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _process_cpu() -> dict[int, tuple[int, float]]:
    """Every process's parent and CPU seconds so far (user + system)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = text[text.rindex(")") + 2:].split()  # after the command, which may hold spaces
        out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return out


def cpu_now(pid: int) -> tuple[float, float, float, float]:
    """CPU seconds so far of the server ``pid``, of its descendants, of this script's waited-for
    children (the wrk runs), and busy seconds of the whole machine (all cores)."""
    procs = _process_cpu()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in procs.items():
        children.setdefault(parent, []).append(child)
    below, todo = 0.0, list(children.get(pid, []))
    while todo:
        child = todo.pop()
        below += procs[child][1]
        todo += children.get(child, [])
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLOCK_TICKS  # all but idle and iowait
    return procs.get(pid, (0, 0.0))[1], below, usage.ru_utime + usage.ru_stime, busy


def measured(proc: subprocess.Popen[bytes], port: int, tokens: Path, body: Path, seconds: int,
             connections: int) -> dict[str, float]:
    """One wrk run with the CPU per request of each part (microseconds) and the machine's use."""
    before, start = cpu_now(proc.pid), time.monotonic()
    run = wrk(port, seconds, tokens, body, connections=connections)
    after, elapsed = cpu_now(proc.pid), time.monotonic() - start
    server, below, client, busy = (b - a for a, b in zip(before, after, strict=True))
    n = max(run["requests"], 1.0)
    return {**run, "server_us": server / n * 1e6, "children_us": below / n * 1e6,
            "wrk_us": client / n * 1e6, "machine_us": busy / n * 1e6,
            "busy": busy / elapsed / (os.cpu_count() or 1)}


def wait_health(port: int) -> None:
    import http.client
    for _ in range(300):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/health")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"no server on port {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--connections", default="16",
                        help="wrk's keep-alive connections; several: comma-separated")
    parser.add_argument("--only", default=",".join(SERVERS),
                        help=f"which of {', '.join(SERVERS)} besides the bare endpoint")
    args = parser.parse_args()
    counts = [int(c) for c in args.connections.split(",")]
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SERVERS))
    if unknown:
        raise SystemExit(f"unknown server {', '.join(unknown)}; choose from {', '.join(SERVERS)}")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    with tempfile.TemporaryDirectory(prefix="kiro-ceiling-") as tmp:
        work = Path(tmp)
        write_body(work / "body.json")
        servers: dict[str, tuple[subprocess.Popen[bytes], int, Path]] = {}
        try:
            port = free_port()
            servers["bare"] = (subprocess.Popen(
                [sys.executable, str(HERE / "hello.py"), str(port)]), port, work / "none.txt")
            (work / "none.txt").write_text("-\n")
            for name in chosen:
                config, tokens = prepare(work / name, 500)
                tokens_file = work / f"{name}.txt"
                tokens_file.write_text("\n".join(tokens) + "\n")
                port = free_port()
                servers[name] = (subprocess.Popen(
                    [sys.executable, *SERVERS[name][1], "--data-dir", str(config.data_dir),
                     "serve", "--port", str(port), "--rate", "100", "--burst", "1000"],
                    stderr=subprocess.DEVNULL), port, tokens_file)
            for _, port, _ in servers.values():
                wait_health(port)
            results: dict[tuple[int, str], list[dict[str, float]]] = {
                (c, name): [] for c in counts for name in servers}
            for _, port, tokens_file in servers.values():
                wrk(port, 1, tokens_file, work / "body.json")
            for _ in range(args.rounds):
                for c in counts:
                    for name, (proc, port, tokens_file) in servers.items():
                        results[c, name].append(measured(proc, port, tokens_file,
                                                         work / "body.json", args.seconds, c))
        finally:
            for proc, _, _ in servers.values():
                proc.terminate()
                proc.wait(30)
    cores = os.cpu_count() or 1
    for c in counts:
        reference = statistics.median(r["rps"] for r in results[c, "bare"])
        print(f"\n== single-event requests, wrk -t2 -c{c}: the durable path layer by layer ==")
        for name in servers:
            runs = results[c, name]
            rps = statistics.median(r["rps"] for r in runs)
            p99 = statistics.median(r["p99"] for r in runs)
            line = ", ".join(f"{r['rps']:.0f}" for r in runs)
            label = "bare ASGI endpoint" if name == "bare" else f"{name} ({SERVERS[name][0]})"
            print(f"{label:34s} median {rps:8.0f} req/s  ratio {rps / reference:.2f}  "
                  f"p99 {p99:6.2f} ms   (runs: {line})")
        print(f"\nCPU per request, medians (us; {cores} cores; bound = the ratio at every core "
              "busy at this cost)")
        print(f"{'':12s} {'server':>7s} {'children':>9s} {'wrk':>6s} {'machine':>8s} "
              f"{'busy':>5s} {'bound':>6s}")
        for name in servers:
            runs = results[c, name]
            med = {k: statistics.median(r[k] for r in runs)
                   for k in ("server_us", "children_us", "wrk_us", "machine_us", "busy")}
            bound = cores / (med["machine_us"] * 1e-6) / reference
            print(f"{name:12s} {med['server_us']:7.1f} {med['children_us']:9.1f} "
                  f"{med['wrk_us']:6.1f} {med['machine_us']:8.1f} {med['busy']:5.0%} "
                  f"{bound:6.2f}")


if __name__ == "__main__":
    main()
