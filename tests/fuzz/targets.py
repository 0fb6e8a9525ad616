"""atheris fuzz targets of the parts that take input from outside: the request parser, the S3
URI and prefix validator, the bucket-policy evaluator and the CSV writer. Each target raises
nothing but the declared validation error (a crash is any other exception), and checks its own
invariant on what it accepts. Run one with ``python tests/fuzz/targets.py NAME [libFuzzer args]``;
tests/test_fuzz.py runs each for a short while in CI, longer with KIRO_ACTIVITY_FUZZ_SECONDS.
"""

from __future__ import annotations

import csv
import io
import sys
from datetime import date

import atheris

with atheris.instrument_imports():
    import orjson

    from kiro_activity import events, policy, report, s3uri
    from kiro_activity.errors import ValidationError

DAY = date(2026, 12, 2)
REQ = policy.Request("s3:PutObject", "arn:aws:s3:::bucket/p/AWSLogs/111122223333/x.csv",
                     "q.amazonaws.com", {"aws:SourceAccount": "111122223333",
                                         "aws:SourceArn": "arn:aws:codewhisperer:us-east-1:"
                                                          "111122223333:profile/ABC"})


def request_parser(data: bytes) -> None:
    try:
        req = events.parse_request(data)
    except ValidationError:
        return
    assert req.member in events.MEMBERS


def s3_uri(data: bytes) -> None:
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(300)
    problems = s3uri.uri_problems(text, account_id="111122223333", region="us-east-1")
    assert all(isinstance(p, str) and p for p in problems)
    if not problems:  # an accepted URI names a bucket and a non-empty prefix
        assert text.startswith("s3://") and text.rstrip("/").count("/") >= 3


def policy_evaluator(data: bytes) -> None:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    if not isinstance(doc, dict):
        return
    verdict = policy.evaluate(doc, REQ)
    assert isinstance(verdict.allowed, bool)
    assert verdict.allowed or verdict.reasons  # a refusal always says why


def csv_writer(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    ids = sorted({fdp.ConsumeUnicodeNoSurrogates(40) or "x"
                  for _ in range(fdp.ConsumeIntInRange(1, 8))})
    rows = [(u, ",".join(["1"] * 44)) for u in ids]
    body, _ = report.render_part(rows, DAY, "delivered")
    parsed = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))[1:]
    assert len(parsed) == len(ids)
    for (user, _), row in zip(rows, parsed, strict=True):
        assert not row[0].startswith(report.FORMULA_STARTS)
        assert row[0] in (user, "'" + user)


TARGETS = {f.__name__: f for f in (request_parser, s3_uri, policy_evaluator, csv_writer)}

if __name__ == "__main__":
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()
