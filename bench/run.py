"""Ingest benchmark: kiro-activity against a bare ASGI endpoint, measured in the same run.

    python bench/run.py [--seconds 10] [--rounds 3] [--bulk-events 1000000]

1. Single-event requests: wrk, 16 keep-alive connections, 2 threads, a realistic ~500-byte
   userTriggerDecisionEvent body (awsJson 1.0), 500 user tokens in rotation, a fresh clientToken
   per request; every 200 is durable (fsync'd group commit). The reference is bench/hello.py, a
   bare ASGI endpoint on the same uvicorn setup. Rounds alternate reference/ours; medians and
   the ratio of medians are printed, with p50/p99 latency.
2. Bulk import: NDJSON batches of 10,000 requests to /v1/batch/SendTelemetryEvent over 2
   concurrent connections; events/s until all are durably stored (checked by counting).
"""

from __future__ import annotations

import argparse
import http.client
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from kiro_activity import landing, logrows, store
from kiro_activity.config import Config
from kiro_activity.demo import free_port, start_server
from kiro_activity.simulate import request_body

HERE = Path(__file__).parent
ACCOUNT, REGION = "111122223333", "us-east-1"


def wrk(port: int, seconds: int, tokens: Path, template: Path,
        connections: int = 16) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s",
         str(HERE / "ingest.lua"), f"http://127.0.0.1:{port}/", "--", str(tokens), str(template)],
        capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise SystemExit(f"{non2xx.group(1)} requests failed:\n{out}")
    return {"requests": float(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "p50": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
            "p99": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1))}  # type: ignore[union-attr]


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def prepare(data_dir: Path, users: int) -> tuple[Config, list[str]]:
    config = Config(data_dir=data_dir)
    conn = store.connect(config.control_db)
    store.add_account(conn, ACCOUNT, REGION, now=time.time())
    tokens = [t for _, t in store.issue_tokens(conn, ACCOUNT, [f"u{i}" for i in range(users)],
                                                now=time.time(), actor="bench")]
    conn.close()
    return config, tokens


def write_body(path: Path) -> None:
    """The realistic single-event body wrk sends (ingest.lua gives each request its own
    clientToken in place of CLIENT_TOKEN)."""
    body = request_body("userTriggerDecisionEvent", random.Random(1), ts=1764547200.123,
                        profile_arn=None)
    body["clientToken"] = "CLIENT_TOKEN"
    path.write_bytes(orjson.dumps(body))


def single(work: Path, seconds: int, rounds: int) -> None:
    config, tokens = prepare(work / "single", 500)
    (work / "tokens.txt").write_text("\n".join(tokens) + "\n")
    write_body(work / "body.json")
    hello_port, port = free_port(), free_port()
    hello = subprocess.Popen([sys.executable, str(HERE / "hello.py"), str(hello_port)])
    ours = start_server(config, port, "--rate", "100", "--burst", "1000")
    time.sleep(1)
    results: dict[str, list[dict[str, float]]] = {"hello": [], "ours": []}
    try:
        wrk(hello_port, 2, work / "tokens.txt", work / "body.json")  # warm-up
        wrk(port, 2, work / "tokens.txt", work / "body.json")
        for _ in range(rounds):
            for name, p in (("hello", hello_port), ("ours", port)):
                results[name].append(wrk(p, seconds, work / "tokens.txt", work / "body.json"))
    finally:
        hello.terminate()
        ours.terminate()
        ours.wait(30)
    conn = landing.connect(config.landing_db)
    stored = logrows.count(conn)
    conn.close()
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("rps", "p50", "p99")}
           for k, v in results.items()}
    print("\n== single-event requests, wrk -t2 -c16, keep-alive ==")
    for name, label in (("hello", "bare ASGI hello-world"), ("ours", "kiro-activity ingest")):
        runs = ", ".join(f"{r['rps']:.0f}" for r in results[name])
        print(f"{label:24s} median {med[name]['rps']:8.0f} req/s  p50 {med[name]['p50']:6.2f} ms"
              f"  p99 {med[name]['p99']:6.2f} ms   (runs: {runs})")
    ratio = med["ours"]["rps"] / med["hello"]["rps"]
    print(f"ratio ours/bare: {ratio:.2f}  (target >= 0.5; p99 target <= 10 ms)")
    print(f"events stored durably during the run: {stored}")


def bulk(work: Path, events: int, batch: int = 10_000, quiet: bool = False) -> float:
    """Import ``events`` events; the rate (events/s) until all are durably stored."""
    config, tokens = prepare(work / "bulk", 1)
    rng = random.Random(2)
    lines = [orjson.dumps(request_body("userTriggerDecisionEvent", rng, ts=1764547200.0))
             for _ in range(batch)]
    port = free_port()
    server = start_server(config, port, "--rate", "0", "--events-rate", "0")
    payloads = []
    for i in range(events // batch):  # fresh clientTokens per batch so that nothing dedupes
        tag = f"{i:06d}".encode()
        payloads.append(b"\n".join(line.replace(b'"clientToken":"', b'"clientToken":"' + tag)
                                   for line in lines))

    def send(chunk: list[bytes]) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        stored = 0
        for payload in chunk:
            conn.request("POST", "/v1/batch/SendTelemetryEvent", payload,
                         {"Authorization": f"Bearer {tokens[0]}",
                          "Content-Type": "application/x-ndjson"})
            response = conn.getresponse()
            stored += orjson.loads(response.read())["stored"]
        conn.close()
        return stored

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            stored = sum(pool.map(send, [payloads[0::2], payloads[1::2]]))
        elapsed = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(60)
    conn = landing.connect(config.landing_db)
    counted = logrows.count(conn)
    conn.close()
    if counted != events:
        raise SystemExit(f"{events} events sent, {counted} in the landing log")
    if not quiet:
        print("\n== bulk import, NDJSON batches of 10,000, 2 connections ==")
        print(f"{stored} events stored in {elapsed:.2f} s: {stored / elapsed:,.0f} events/s "
              f"(target >= 100,000); {counted} in the landing log")
    return stored / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bulk-events", type=int, default=500_000)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    with tempfile.TemporaryDirectory(prefix="kiro-bench-") as tmp:
        single(Path(tmp), args.seconds, args.rounds)
        bulk(Path(tmp), args.bulk_events)


if __name__ == "__main__":
    main()
