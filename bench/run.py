"""Ingest benchmark: kiro-activity against a bare ASGI endpoint, measured in the same run.

    python bench/run.py [--seconds 10] [--rounds 3] [--bulk-events 1000000]

1. Single-event requests: wrk, 16 keep-alive connections, 2 threads, a realistic ~500-byte
   userTriggerDecisionEvent body (awsJson 1.0), 500 user tokens in rotation, a fresh clientToken
   per request; every 200 is durable (fsync'd group commit). The reference is bench/hello.py, a
   bare ASGI endpoint on the same uvicorn setup. Rounds alternate reference/ours; medians and
   the ratio of medians are printed, with p50/p99 latency. With ``--workers 1,2`` the service
   runs once per worker count (``serve --workers N``), and so does the reference (uvicorn's own
   ``--workers``), all in the same rounds; ratios are given against the one-worker reference
   (the issue's) and against the reference with as many workers.
2. Bulk import: NDJSON batches of 10,000 requests to /v1/batch/SendTelemetryEvent over 2
   concurrent connections; events/s until all are durably stored (checked by counting), once
   per worker count.
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

from kiro_activity import landing, store
from kiro_activity.config import Config
from kiro_activity.demo import free_port, start_server
from kiro_activity.simulate import request_body

HERE = Path(__file__).parent
ACCOUNT, REGION = "111122223333", "us-east-1"


def wrk(port: int, seconds: int, tokens: Path, template: Path) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", "-s", str(HERE / "ingest.lua"),
         f"http://127.0.0.1:{port}/", "--", str(tokens), str(template)],
        capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise SystemExit(f"{non2xx.group(1)} requests failed:\n{out}")
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
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


def single(work: Path, seconds: int, rounds: int, workers: list[int]) -> None:
    body = request_body("userTriggerDecisionEvent", random.Random(1), ts=1764547200.123,
                        profile_arn=None)
    body["clientToken"] = "CLIENT_TOKEN"
    (work / "body.json").write_bytes(orjson.dumps(body))
    (work / "none.txt").write_text("-\n")
    runs: dict[str, tuple[int, Path]] = {}
    procs: list[subprocess.Popen[bytes]] = []
    configs = []
    try:
        for n in workers:
            port = free_port()
            procs.append(subprocess.Popen([sys.executable, str(HERE / "hello.py"), str(port),
                                           str(n)]))
            runs[f"bare, {n} worker{'s' * (n > 1)}"] = (port, work / "none.txt")
        time.sleep(1.5)
        for n in workers:
            config, tokens = prepare(work / f"single{n}", 500)
            (work / f"tokens{n}.txt").write_text("\n".join(tokens) + "\n")
            port = free_port()
            procs.append(start_server(config, port, "--rate", "100", "--burst", "1000",
                                      "--workers", str(n)))
            runs[f"ours, {n} worker{'s' * (n > 1)}"] = (port, work / f"tokens{n}.txt")
            configs.append(config)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
        for port, tokens_file in runs.values():  # warm-up
            wrk(port, 2, tokens_file, work / "body.json")
        for _ in range(rounds):
            for name, (port, tokens_file) in runs.items():
                results[name].append(wrk(port, seconds, tokens_file, work / "body.json"))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
    stored = sum(len(landing.read_events(c.landing_db)) for c in configs)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("rps", "p50", "p99")}
           for k, v in results.items()}
    print("\n== single-event requests, wrk -t2 -c16, keep-alive ==")
    for name in runs:
        line = ", ".join(f"{r['rps']:.0f}" for r in results[name])
        print(f"{name:22s} median {med[name]['rps']:8.0f} req/s  p50 {med[name]['p50']:6.2f} ms"
              f"  p99 {med[name]['p99']:6.2f} ms   (runs: {line})")
    reference = med["bare, 1 worker"]["rps"]
    for n in workers:
        ours = med[f"ours, {n} worker{'s' * (n > 1)}"]["rps"]
        alike = med[f"bare, {n} worker{'s' * (n > 1)}"]["rps"]
        print(f"ours with {n} worker{'s' * (n > 1)}: {ours / reference:.2f}x the one-worker bare "
              f"endpoint, {ours / alike:.2f}x the bare endpoint with as many workers")
    print("target: >= 0.65x the bare endpoint; p99 <= 20 ms")
    print(f"events stored durably during the run: {stored}")


def bulk(work: Path, events: int, workers: int, batch: int = 10_000) -> None:
    config, tokens = prepare(work / f"bulk{workers}", 1)
    rng = random.Random(2)
    lines = [orjson.dumps(request_body("userTriggerDecisionEvent", rng, ts=1764547200.0))
             for _ in range(batch)]
    port = free_port()
    server = start_server(config, port, "--rate", "0", "--workers", str(workers))
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
    counted = len(landing.read_events(config.landing_db))
    print(f"\n== bulk import, NDJSON batches of 10,000, 2 connections, {workers} worker(s) ==")
    print(f"{stored} events stored in {elapsed:.2f} s: {stored / elapsed:,.0f} events/s "
          f"(target >= 100,000); {counted} in the landing log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bulk-events", type=int, default=500_000)
    parser.add_argument("--workers", default="1,2",
                        help="worker counts to measure, comma-separated (1 comes first)")
    args = parser.parse_args()
    workers = sorted({1, *(int(n) for n in args.workers.split(","))})
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    with tempfile.TemporaryDirectory(prefix="kiro-bench-") as tmp:
        single(Path(tmp), args.seconds, args.rounds, workers)
        for n in workers:
            bulk(Path(tmp), args.bulk_events, n)


if __name__ == "__main__":
    main()
