"""A small, pure evaluator of an S3 bucket policy for one request (docs/location-checks.md, 4).

``evaluate(policy, request)`` applies the standard IAM logic: an explicit ``Deny`` that matches
wins; otherwise an ``Allow`` must match; otherwise the request is denied.

Choices where IAM is subtle (never a false "allowed"):

* Statement matching is three-valued. A statement whose principal, action, resource and known
  conditions all match applies; if any of them definitely fails it does not apply; if the only
  obstacle is an operator or key the evaluator does not know, the statement is *undecided*: an
  undecided ``Allow`` does not count and an undecided ``Deny`` counts, each with a warning.
* A condition key is known when it is in the request context, in :data:`MODELLED_KEYS` or in the
  ``known_keys`` argument. A known key absent from the context is *missing*: positive operators
  (``StringEquals``, ``ArnLike``, ``Bool`` ...) do not match, negated operators
  (``StringNotEquals``, ``ArnNotLike`` ...) match (as IAM documents), ``...IfExists`` forms match.
  ``Null`` tests presence. An unknown key is undecided, even under ``IfExists`` or ``Null``.
* ``ForAnyValue:``/``ForAllValues:`` set operators, ``Numeric*``, ``Date*``, ``IpAddress`` ...
  are unknown operators.
* ``ArnEquals`` and ``ArnLike`` are the same test (as in IAM): the colon-separated ARN parts are
  matched one by one with ``*``/``?`` wildcards, case-sensitively.
* Principal: ``"*"`` and ``{"AWS": "*"}`` match anyone; an account id or
  ``arn:aws:iam::ACCOUNT:root`` matches any IAM/STS principal of that account; other ARNs match
  exactly; ``Service`` names match case-insensitively. Other principal kinds never match.
* A malformed statement (not an object, missing/duplicated ``Action``/``NotAction`` ...), or one
  whose ``Effect`` is neither ``Allow`` nor ``Deny``, never allows; a malformed statement whose
  ``Effect`` is ``Deny`` counts as denying (S3 would reject such a policy anyway).
* The confused-deputy warning is given for an ``Allow`` that lets a *service* principal in
  without both an ``aws:SourceAccount`` and an ``aws:SourceArn`` condition.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MODELLED_KEYS", "Request", "Verdict", "evaluate"]

MODELLED_KEYS = frozenset({"aws:sourceaccount", "aws:sourcearn", "aws:securetransport"})
_DEPUTY_KEYS = ("aws:SourceAccount", "aws:SourceArn")
Tri = bool | None  # None: undecided (unknown operator or key)


@dataclass(frozen=True)
class Request:
    action: str
    resource: str
    principal: str
    context: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reasons: list[str]
    warnings: list[str]


class _Malformed(Exception):
    pass


@dataclass
class _Outcome:
    label: str
    effect: str
    applies: Tri
    notes: list[str]
    malformed: str | None = None


def _wild(pattern: str, value: str, ignore_case: bool = False) -> bool:
    """Whether ``value`` matches ``pattern`` with IAM wildcards (``*`` any run, ``?`` one
    character). Greedy, with one pointer back to the last ``*``: no regex, no backtracking tree,
    so at most len(pattern) x len(value) steps (a regex of ``******Z`` took 34 s)."""
    if ignore_case:
        pattern, value = pattern.lower(), value.lower()
    p = v = 0
    star, mark = -1, 0
    n, m = len(pattern), len(value)
    while v < m:
        c = pattern[p] if p < n else ""
        if c == "*":
            while p < n and pattern[p] == "*":  # a run of stars is one star
                p += 1
            if p == n:
                return True
            star, mark = p, v
        elif c and (c == "?" or c == value[v]):
            p += 1
            v += 1
        elif star >= 0:  # retry the text after the last star one character further
            mark += 1
            p, v = star, mark
        else:
            return False
    while p < n and pattern[p] == "*":
        p += 1
    return p == n


def _arn_like(pattern: str, value: str) -> bool:
    parts = pattern.split(":", 5)
    values = value.split(":", len(parts) - 1)
    return len(parts) == len(values) and all(map(_wild, parts, values))


def _and(results: list[Tri]) -> Tri:
    if False in results:
        return False
    return None if None in results else True


def _strings(raw: Any, what: str) -> list[str]:
    items = raw if isinstance(raw, list) else [raw]
    if not all(isinstance(item, str) for item in items):
        raise _Malformed(f"{what} must be a string or a list of strings")
    return list(items)


def _condition_values(raw: Any, where: str) -> list[str]:
    out: list[str] = []
    for item in raw if isinstance(raw, list) else [raw]:
        if isinstance(item, bool):
            out.append("true" if item else "false")
        elif isinstance(item, str | int | float):
            out.append(str(item))
        else:
            raise _Malformed(f"condition {where} has a value that is not a string")
    return out


def _account_of(arn: str) -> str | None:
    parts = arn.split(":", 5)
    if len(parts) == 6 and parts[0] == "arn" and parts[2] in ("iam", "sts") and parts[4]:
        return parts[4]
    return None


def _one_principal(kind: Any, value: str, principal: str) -> bool:
    if kind == "Service":
        return value.lower() == principal.lower()
    if kind != "AWS":
        return False
    if value in ("*", principal):
        return True
    if len(value) == 12 and value.isdigit():
        account: str | None = value
    else:
        account = _account_of(value) if value.endswith(":root") else None
    return account is not None and _account_of(principal) == account


def _principal_matches(spec: Any, principal: str) -> bool:
    if spec == "*":
        return True
    if not isinstance(spec, Mapping):
        raise _Malformed('Principal must be "*" or an object')
    return any(
        _one_principal(kind, value, principal)
        for kind, raw in spec.items()
        for value in _strings(raw, f"Principal {kind}")
    )


def _pick(st: Mapping[str, Any], name: str, negated: str, test: Callable[[Any], bool]) -> bool:
    if (name in st) == (negated in st):
        raise _Malformed(f"needs exactly one of {name} and {negated}")
    return test(st[name]) if name in st else not test(st[negated])


_Test = Callable[[str, str], bool]
_OPERATORS: dict[str, tuple[_Test, bool]] = {
    "StringEquals": (str.__eq__, False),
    "StringNotEquals": (str.__eq__, True),
    "StringLike": (_wild, False),
    "StringNotLike": (_wild, True),
    "ArnEquals": (_arn_like, False),
    "ArnLike": (_arn_like, False),
    "ArnNotEquals": (_arn_like, True),
    "ArnNotLike": (_arn_like, True),
    "Bool": (lambda want, got: want.lower() == got.lower(), False),
}


def _key_result(
    op: str, key: str, values: list[str], ctx: Mapping[str, str], known: Collection[str]
) -> Tri:
    actual = ctx.get(key.lower())
    if op == "Null":
        if actual is None and key.lower() not in known:
            return None
        return any(v.lower() == ("true" if actual is None else "false") for v in values)
    base, if_exists = (op[: -len("IfExists")], True) if op.endswith("IfExists") else (op, False)
    test, negated = _OPERATORS[base]
    if actual is None:
        return None if key.lower() not in known else if_exists or negated
    return any(test(v, actual) for v in values) != negated


def _known_operator(op: str) -> bool:
    base = op[: -len("IfExists")] if op.endswith("IfExists") else op
    return op == "Null" or base in _OPERATORS


def _conditions(
    cond: Any, ctx: Mapping[str, str], known: Collection[str], notes: list[str]
) -> Tri:
    if not isinstance(cond, Mapping):
        raise _Malformed("Condition must be an object")
    results: list[Tri] = []
    for op, block in cond.items():
        if not isinstance(block, Mapping) or not all(isinstance(k, str) for k in block):
            raise _Malformed(f"condition operator {op} must map keys to values")
        if not _known_operator(op):
            notes.append(f"unknown condition operator {op!r}")
            results.append(None)
            continue
        for key, raw in block.items():
            result = _key_result(op, key, _condition_values(raw, f"{op} {key}"), ctx, known)
            if result is None:
                notes.append(f"unknown condition key {key!r} (in {op})")
            results.append(result)
    return _and(results)


def _applies(st: Mapping[str, Any], req: Request, known: Collection[str]) -> tuple[Tri, list[str]]:
    checks = [
        _pick(st, "Principal", "NotPrincipal", lambda s: _principal_matches(s, req.principal)),
        _pick(st, "Action", "NotAction",
              lambda s: any(_wild(p, req.action, True) for p in _strings(s, "Action"))),
        _pick(st, "Resource", "NotResource",
              lambda s: any(_wild(p, req.resource) for p in _strings(s, "Resource"))),
    ]
    notes: list[str] = []
    ctx = {k.lower(): v for k, v in req.context.items()}
    cond = st.get("Condition")
    result = True if cond is None else _conditions(cond, ctx, known, notes)
    return (result if all(checks) else False), notes


def _label(index: int, st: Any) -> str:
    sid = st.get("Sid") if isinstance(st, Mapping) else None
    return f"statement {sid!r}" if isinstance(sid, str) and sid else f"statement #{index + 1}"


def _outcome(index: int, st: Any, req: Request, known: Collection[str]) -> _Outcome:
    label = _label(index, st)
    if not isinstance(st, Mapping):
        return _Outcome(label, "", False, [], "is not an object")
    effect = st.get("Effect")
    effect_name = effect if isinstance(effect, str) else repr(effect)
    try:
        applies, notes = _applies(st, req, known)
    except _Malformed as exc:
        return _Outcome(label, effect_name, None if effect == "Deny" else False, [], str(exc))
    if effect not in ("Allow", "Deny"):
        return _Outcome(label, effect_name, False, notes, f"has Effect {effect!r}")
    return _Outcome(label, effect_name, applies, notes)


def _deputy_warning(o: _Outcome, st: Mapping[str, Any], req: Request) -> str | None:
    if req.principal.lower().startswith("arn:"):
        return None
    cond = st.get("Condition") or {}
    keys = {k.lower() for op, block in cond.items() if op != "Null" for k in block}
    missing = [k for k in _DEPUTY_KEYS if k.lower() not in keys]
    if not missing:
        return None
    return (f"{o.label} allows {req.principal} without a {' or '.join(missing)} condition: "
            "the bucket is exposed to the confused-deputy problem")


def _statements(policy: Any) -> tuple[list[Any], str | None]:
    if not isinstance(policy, Mapping):
        return [], "the policy is not a JSON object"
    raw = policy.get("Statement")
    if raw is None:
        return [], "the policy has no Statement"
    if isinstance(raw, Mapping):
        return [raw], None
    if isinstance(raw, list):
        return raw, None
    return [], "the policy's Statement is neither an object nor a list"


def evaluate(
    policy: Mapping[str, Any], request: Request, *, known_keys: Collection[str] = ()
) -> Verdict:
    """Decide whether ``policy`` allows ``request``; see the module docstring for the rules."""
    statements, problem = _statements(policy)
    if problem is not None:
        return Verdict(False, [problem], [])
    known = MODELLED_KEYS | {k.lower() for k in (*request.context, *known_keys)}
    outcomes = [_outcome(i, st, request, known) for i, st in enumerate(statements)]
    reasons: list[str] = []
    warnings = [f"{o.label}: {note}" for o in outcomes for note in o.notes]
    for o in outcomes:
        if o.malformed is not None:
            text = f"{o.label} {o.malformed}" + (
                "; counted as denying" if o.applies is None else "; it never allows")
            reasons.append(text)
            warnings.append(text)
    what = f"{request.action} on {request.resource} for {request.principal}"
    denies = [o for o in outcomes if o.effect == "Deny" and o.applies is not False]
    if denies:
        reasons += [f"{o.label} explicitly denies {what}" if o.applies else
                    f"{o.label} may deny {what} (undecided, counted as denying)"
                    for o in denies if o.malformed is None]
        return Verdict(False, reasons, warnings)
    allows = [(o, st) for o, st in zip(outcomes, statements, strict=True)
              if o.effect == "Allow" and o.applies is True]
    if not allows:
        reasons += [f"{o.label} would allow {what} but is undecided, so it does not count"
                    for o in outcomes if o.effect == "Allow" and o.applies is None]
        reasons.append(f"no statement allows {what}")
        return Verdict(False, reasons, warnings)
    for o, st in allows:
        reasons.append(f"{o.label} allows {what}")
        deputy = _deputy_warning(o, st, request)
        if deputy is not None:
            warnings.append(deputy)
    return Verdict(True, reasons, warnings)
