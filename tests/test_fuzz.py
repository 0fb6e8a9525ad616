"""Fuzzing with atheris (libFuzzer, coverage-guided) of the request parser, the S3 URI and
prefix validator, the policy evaluator and the CSV writer (tests/fuzz/targets.py), each started
from a seed corpus of valid inputs. CI runs each for a few seconds; set
``KIRO_ACTIVITY_FUZZ_SECONDS`` (e.g. 300) for a long run. 0 crashes beyond the declared
validation errors, 0 hangs (libFuzzer's ``-timeout``: an input taking over 5 s is one).
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from kiro_activity import location, simulate
from kiro_activity.store import Account

SECONDS = int(os.environ.get("KIRO_ACTIVITY_FUZZ_SECONDS", "8"))
HERE = Path(__file__).parent


def seeds(target: str) -> list[bytes]:
    rng = random.Random(1)
    if target == "request_parser":
        return [orjson.dumps(simulate.request_body(m, rng)) for m in simulate.WEIGHTS]
    if target == "policy_evaluator":
        account = Account("111122223333", "us-east-1",
                          "arn:aws:codewhisperer:us-east-1:111122223333:profile/ABC")
        return [orjson.dumps(location.documented_policy("bucket", "p", account))]
    if target == "s3_uri":
        return [b"s3://bucket/prefix/", b"s3://my-bucket.example/a/b/"]
    return [b"alice\0=bob\0+1\0\t\r\n\"q\",", b"\xff" * 16]


@pytest.mark.parametrize("target", ["request_parser", "s3_uri", "policy_evaluator",
                                    "csv_writer"])
def test_fuzz(target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(seeds(target)):
        (corpus / f"seed{i}").write_bytes(seed)
    done = subprocess.run(
        [sys.executable, str(HERE / "fuzz" / "targets.py"), target, str(corpus),
         f"-max_total_time={SECONDS}", "-timeout=5", "-rss_limit_mb=2048",
         f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=SECONDS + 120, cwd=tmp_path)
    runs = re.search(r"Done (\d+) runs", done.stderr)
    crashes = list(tmp_path.glob("crash-*")) + list(tmp_path.glob("oom-*"))
    hangs = list(tmp_path.glob("timeout-*"))
    print(f"fuzz: target={target} seconds={SECONDS} runs={runs.group(1) if runs else 0} "
          f"crashes={len(crashes)} hangs={len(hangs)} corpus={len(list(corpus.iterdir()))}")
    assert done.returncode == 0 and runs, done.stderr[-3000:]
    assert crashes == [] and hangs == []
