"""Duplicate keys in a JSON body, found cheaply (#13).

JSON readers disagree on a repeated key: orjson (the counters) keeps the last value, DuckDB (the
rebuild from the raw events) the first, so a body with one would count differently in the two.
Such bodies are refused. A full scan costs several times the parse, so it is done only when a
cheap test cannot rule duplicates out. Two cheap tests, the first that applies decides:

* colons (#11), for a body without a ``\\u`` escape: outside strings a JSON text has exactly one
  colon per key, and a colon inside a string is then a ``:`` byte of the text (only ``\\u003a``
  could write it otherwise), as it is in what orjson writes. So ``body.count(b":")`` is the
  keys of the text plus the colons of its strings, and the same count over
  ``orjson.dumps(doc)`` the keys of the parsed tree plus the colons of the strings the tree
  kept. The tree keeps one key per distinct key of each object and some of the strings, so the
  two counts are equal if and only if no key is repeated. (orjson does not write a tree nested
  more than 254 deep: the second test then.)
* quoted keys (#13): every key of the text is followed by a colon outside any string; when no
  whitespace comes right before a colon (``" :"`` and the like are absent, as in what clients
  send), every such colon directly follows the key's closing quote, so the text has at most
  ``body.count(b'":')`` keys; the parsed tree has exactly one key per distinct key of each
  object; so when the two counts are equal no key can be repeated.

Otherwise (a repeated key; or, with a ``\\u``, a colon after whitespace or ``":`` inside a
string value) the body is scanned with the standard library's parser, which reports every key
of every object in order, and the first repeated key is named with its path.

Measured with ``python bench/decode.py`` (medians, a loaded 2-vCPU VM): the check costs ~2.4 us
on a typical event (a userTriggerDecisionEvent with userContext and profileArn; ~4.9 us by the
quoted keys alone, as in #13), ~25 us on a body of 200 diagnostics (11 KB; ~100 us), ~3 us on a
chat event with 50 floats (orjson writes them in ~2 us; ~3.7 us). A body with a ``\\u`` escape
takes the quoted keys (~5 us), and the full scan 20-35 us.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["duplicate_key", "key_count"]

_WHITESPACE = bytes.maketrans(b"\n\r\t", b"   ")  # JSON's whitespace, as spaces


def key_count(obj: dict[str, Any]) -> int:
    """The number of keys of a parsed JSON object, its nested objects' included."""
    n = len(obj)
    for v in obj.values():
        t = type(v)
        if t is dict:
            n += key_count(v)
        elif t is list:
            n += _list_keys(v)
    return n


def _list_keys(items: list[Any]) -> int:
    n = 0
    for v in items:
        t = type(v)
        if t is dict:
            n += key_count(v)
        elif t is list:
            n += _list_keys(v)
    return n


def duplicate_key(body: bytes, doc: Any) -> tuple[str, str] | None:
    """``(key, where)`` of the first repeated key of JSON ``body`` (``doc`` is its parse), or
    None; ``where`` is a path such as ``telemetryEvent.userTriggerDecisionEvent``. A body that
    is not an object is left to the validator (which refuses it)."""
    if type(doc) is not dict:
        return None
    if b"\\" not in body or b"\\u" not in body:
        try:
            written = orjson.dumps(doc)
        except orjson.JSONEncodeError:  # nested more than 254 deep
            pass
        else:
            return None if body.count(b":") == written.count(b":") else _scan(body)
    quoted = body.count(b'":')
    if quoted == key_count(doc) and (
            body.count(b":") == quoted or b" :" not in body.translate(_WHITESPACE)):
        return None
    return _scan(body)


class _Pairs(list[tuple[str, Any]]):
    """An object as the parser saw it: every (key, value) pair, repeats included."""


def _scan(body: bytes) -> tuple[str, str] | None:
    try:
        tree = json.loads(body, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        return None  # orjson parsed it: a reader difference, not a duplicate to report
    return _find(tree, "")


def _find(value: Any, path: str) -> tuple[str, str] | None:
    if isinstance(value, _Pairs):
        seen: set[str] = set()
        for key, _ in value:
            if key in seen:
                return key, path or "the top level"
            seen.add(key)
        for key, child in value:
            found = _find(child, f"{path}.{key}" if path else key)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, child in enumerate(value):
            found = _find(child, f"{path}[{i}]")
            if found is not None:
                return found
    return None
