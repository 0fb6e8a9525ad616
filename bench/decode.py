"""Micro-benchmark of events.parse_request: the Python path against the compiled one (#11).

``python bench/decode.py [--repeat 15]``: per body, the median of ``--repeat`` timeit runs, in
microseconds, of

* python: what parse_request did before #11: orjson.loads, the duplicate-key check of #13
  (quoted keys against ``key_count``), ``validate_request``;
* compiled: parse_request now: orjson.loads, the colon count of #11, ``validate_compiled``
  (msgspec), the Python validator only for a body it leaves undecided;

and their ratio (python / compiled), then the parts (the two duplicate-key checks, the two
validators) and what building a TelemetryRequest costs as a frozen dataclass (before #11) and as
a frozen msgspec Struct (now, in both paths). All measured in the same run, taking turns.
"""

from __future__ import annotations

import argparse
import random
import statistics
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from dupkeys import CHAT, DIAGS, EXAMPLE
from kiro_activity import events, jsonkeys, simulate
from kiro_activity.errors import ValidationError

DAY = [orjson.dumps(b) for b in simulate.user_day(
    random.Random(11), user_id="u", day_start=1_764_547_200.0, n_events=200,
    profile_arn="arn:aws:codewhisperer:us-east-1:111122223333:profile/ABCDEFGHIJKL")]
BODIES = [
    ("userTriggerDecision + userContext + profileArn", [EXAMPLE]),
    ("chatAddMessage, 50 timeBetweenChunks", [CHAT]),
    ("chatInteractWithMessage, 200 diagnostics", [DIAGS]),
    ("a simulated day (per body, 200 bodies)", DAY),
]


def duplicate_key_13(body: bytes, doc: Any) -> tuple[str, str] | None:
    """The duplicate-key check as #13 left it."""
    if type(doc) is not dict:
        return None
    quoted = body.count(b'":')
    if quoted == jsonkeys.key_count(doc) and (
            body.count(b":") == quoted or b" :" not in body.translate(jsonkeys._WHITESPACE)):
        return None
    return jsonkeys._scan(body)


def python_path(body: bytes) -> events.TelemetryRequest:
    """parse_request before #11 (its error messages left out: these bodies are valid)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ValidationError(f"request body is not valid JSON: {e}") from None
    if duplicate_key_13(body, doc) is not None:
        raise ValidationError("a repeated key")
    return events.validate_request(doc)


@dataclass(frozen=True, slots=True)
class FrozenRequest:
    """TelemetryRequest as it was before #11."""

    member: str
    event: dict[str, Any]
    client_token: str | None
    opt_out: str | None
    profile_arn: str | None
    user_id: str | None
    client_timestamp: float | None
    ide_category: str | None


def medians_us(fns: list[Callable[[], object]], repeat: int, n_bodies: int) -> list[float]:
    """Per ``fn``, the median of ``repeat`` timeit runs (each ~20 ms; the fns take turns, so
    that a change of the machine's load hits them alike), per body, in microseconds."""
    numbers = [max(1, int(0.02 / max(min(timeit.repeat(fn, number=1, repeat=3)), 1e-7)))
               for fn in fns]
    runs: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, number, out in zip(fns, numbers, runs, strict=True):
            out.append(timeit.timeit(fn, number=number) / number)
    return [statistics.median(r) / n_bodies * 1e6 for r in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    rows = []
    for name, bodies in BODIES:
        docs = [orjson.loads(b) for b in bodies]
        for b in bodies:
            assert events.parse_request(b) == python_path(b)
        undecided = sum(events.validate_compiled(d) is None for d in docs)

        def each(fn: Callable[[bytes], object], items: list[Any]) -> Callable[[], None]:
            def run() -> None:
                for x in items:
                    fn(x)
            return run

        pairs = list(zip(bodies, docs, strict=True))
        fns = [each(python_path, bodies), each(events.parse_request, bodies),
               each(lambda p: duplicate_key_13(*p), pairs),
               each(lambda p: jsonkeys.duplicate_key(*p), pairs),
               each(events.validate_request, docs), each(events.validate_compiled, docs)]
        rows.append((name, sum(map(len, bodies)) // len(bodies), undecided, len(bodies),
                     medians_us(fns, args.repeat, len(bodies))))
    print(f"{'body':<48} {'bytes':>6} {'python':>8} {'compiled':>9} {'ratio':>6}"
          f"   {'dup #13':>7} {'dup #11':>7}   {'validate':>8} {'compiled':>8}")
    for name, size, undecided, n, (py, new, d13, d11, vpy, vms) in rows:
        note = f"   ({undecided} of {n} left to Python)" if undecided else ""
        print(f"{name:<48} {size:>6} {py:>8.2f} {new:>9.2f} {py / new:>6.2f}"
              f"   {d13:>7.2f} {d11:>7.2f}   {vpy:>8.2f} {vms:>8.2f}{note}")
    fields = ("m", {}, "t", "OPTIN", None, None, 1.0, "VSCODE")
    frozen, struct = medians_us([lambda: FrozenRequest(*fields),
                                 lambda: events.TelemetryRequest(*fields)], args.repeat, 1)
    print(f"TelemetryRequest: frozen dataclass {frozen:.2f} us, frozen msgspec Struct "
          f"{struct:.2f} us (in both columns above: the Struct)")


if __name__ == "__main__":
    main()
