"""How far the single-event target is from what this code can reach, measured in one run.

    python bench/ceiling.py [--seconds 6] [--rounds 4]

Three servers under the same wrk load as ``bench/run.py`` (16 keep-alive connections, the same
body and tokens), rounds alternating:

1. the bare ASGI endpoint (``bench/hello.py``), the issue's reference;
2. kiro-activity with the landing log replaced by a stub that acknowledges at once and stores
   nothing: the whole request path (HTTP fast path, auth, rate limit, JSON parse, validation,
   metric deltas, the record) with no storage at all. Its ratio is the ceiling for any storage
   design in this process;
3. kiro-activity as shipped (durable group commit).

The stub is patched in by this script only (a ``python -c`` launcher); the product has no such
switch.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kiro_activity.demo import free_port
from run import HERE, prepare, write_body, wrk  # bench/run.py, beside this script

STUB = """
import sys
from kiro_activity import landing
def submit(self, records, loop):
    done = loop.create_future()
    done.set_result(len(records))
    return done
landing.LandingLog.submit = submit
from kiro_activity.cli import main
sys.argv[0] = "kiro-activity"
main()
"""


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
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    with tempfile.TemporaryDirectory(prefix="kiro-ceiling-") as tmp:
        work = Path(tmp)
        write_body(work / "body.json")
        servers: dict[str, tuple[subprocess.Popen[bytes], int, Path]] = {}
        try:
            port = free_port()
            servers["bare ASGI endpoint"] = (subprocess.Popen(
                [sys.executable, str(HERE / "hello.py"), str(port)]), port, work / "none.txt")
            (work / "none.txt").write_text("-\n")
            for name, launcher in (("ours, storage stubbed", ["-c", STUB]),
                                   ("ours, durable", ["-m", "kiro_activity"])):
                config, tokens = prepare(work / name.replace(" ", "_").replace(",", ""), 500)
                tokens_file = work / f"{len(servers)}.txt"
                tokens_file.write_text("\n".join(tokens) + "\n")
                port = free_port()
                servers[name] = (subprocess.Popen(
                    [sys.executable, *launcher, "--data-dir", str(config.data_dir), "serve",
                     "--port", str(port), "--rate", "100", "--burst", "1000"],
                    stderr=subprocess.DEVNULL), port, tokens_file)
            for _, port, _ in servers.values():
                wait_health(port)
            results: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
            for _, port, tokens_file in servers.values():
                wrk(port, 1, tokens_file, work / "body.json")
            for _ in range(args.rounds):
                for name, (_, port, tokens_file) in servers.items():
                    results[name].append(wrk(port, args.seconds, tokens_file,
                                             work / "body.json"))
        finally:
            for proc, _, _ in servers.values():
                proc.terminate()
                proc.wait(30)
    reference = statistics.median(r["rps"] for r in results["bare ASGI endpoint"])
    print("\n== single-event requests, wrk -t2 -c16: the ceiling without storage ==")
    for name, runs in results.items():
        rps = statistics.median(r["rps"] for r in runs)
        p99 = statistics.median(r["p99"] for r in runs)
        line = ", ".join(f"{r['rps']:.0f}" for r in runs)
        print(f"{name:24s} median {rps:8.0f} req/s  ratio {rps / reference:.2f}  "
              f"p99 {p99:6.2f} ms   (runs: {line})")


if __name__ == "__main__":
    main()
