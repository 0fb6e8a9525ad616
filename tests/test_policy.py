"""Tests for the bucket-policy evaluator (check 4 of docs/location-checks.md)."""

from __future__ import annotations

import copy
import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiro_activity.policy import Request, Verdict, _wild, evaluate

ACCOUNT = "111122223333"
OTHER = "444455556666"
PROFILE = f"arn:aws:codewhisperer:us-east-1:{ACCOUNT}:profile/ABCDEFGHIJKL"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/report-writer"
KEY = (
    "arn:aws:s3:::amzn-s3-demo-bucket/user-activity-reports/AWSLogs/111122223333/KiroLogs/"
    "by_user_analytic/us-east-1/2025/01/02/00/111122223333_by_user_analytic_1.csv"
)
CONTEXT = {"aws:SourceAccount": ACCOUNT, "aws:SourceArn": PROFILE, "aws:SecureTransport": "true"}
REQ = Request("s3:PutObject", KEY, "q.amazonaws.com", CONTEXT)
ROLE_REQ = Request("s3:PutObject", KEY, ROLE, CONTEXT)

DOC_STATEMENT: dict[str, Any] = {
    "Sid": "QDeveloperLogsWrite",
    "Effect": "Allow",
    "Principal": {"Service": "q.amazonaws.com"},
    "Action": ["s3:PutObject"],
    "Resource": ["arn:aws:s3:::amzn-s3-demo-bucket/user-activity-reports/*"],
    "Condition": {
        "StringEquals": {"aws:SourceAccount": ACCOUNT},
        "ArnLike": {"aws:SourceArn": f"arn:aws:codewhisperer:us-east-1:{ACCOUNT}:*"},
    },
}
DENY_INSECURE: dict[str, Any] = {
    "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
    "Resource": ["arn:aws:s3:::amzn-s3-demo-bucket", "arn:aws:s3:::amzn-s3-demo-bucket/*"],
    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
}


def stmt(**changes: Any) -> dict[str, Any]:
    """The documented statement with keys replaced (a value of None removes the key)."""
    out = copy.deepcopy(DOC_STATEMENT)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def pol(*statements: Any) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def deny(**changes: Any) -> dict[str, Any]:
    base = {"Sid": "DenyIt", "Effect": "Deny", "Principal": "*", "Action": "*", "Resource": "*"}
    merged = {**base, **changes}
    return {k: v for k, v in merged.items() if v is not None}


def ctx(**values: str) -> dict[str, str]:
    out = dict(CONTEXT)
    for key, value in values.items():
        name = {"account": "aws:SourceAccount", "arn": "aws:SourceArn",
                "tls": "aws:SecureTransport"}[key]
        if value == "-":
            del out[name]
        else:
            out[name] = value
    return out


# (id, policy, request, allowed, substring expected in a warning or None for no warnings)
CASES: list[tuple[str, Any, Request, bool, str | None]] = [
    ("documented", pol(DOC_STATEMENT), REQ, True, None),
    ("documented-dict-statement", {"Statement": DOC_STATEMENT}, REQ, True, None),
    ("no-conditions", pol(stmt(Condition=None)), REQ, True, "confused-deputy"),
    ("only-account", pol(stmt(Condition={"StringEquals": {"aws:SourceAccount": ACCOUNT}})),
     REQ, True, "aws:SourceArn condition"),
    ("role-no-conditions-no-deputy-warning",
     pol(stmt(Principal={"AWS": ROLE}, Condition=None)), ROLE_REQ, True, None),
    ("other-prefix", pol(stmt(Resource="arn:aws:s3:::amzn-s3-demo-bucket/other/*")),
     REQ, False, None),
    ("other-account-in-policy",
     pol(stmt(Condition={"StringEquals": {"aws:SourceAccount": OTHER}})), REQ, False, None),
    ("other-account-in-context", pol(DOC_STATEMENT),
     Request("s3:PutObject", KEY, "q.amazonaws.com", ctx(account=OTHER)), False, None),
    ("explicit-deny-wins", pol(DOC_STATEMENT, deny()), REQ, False, None),
    ("deny-first-still-wins", pol(deny(), DOC_STATEMENT), REQ, False, None),
    ("deny-insecure-transport-does-not-block", pol(DENY_INSECURE, DOC_STATEMENT), REQ, True, None),
    ("deny-insecure-transport-blocks-http", pol(DENY_INSECURE, DOC_STATEMENT),
     Request("s3:PutObject", KEY, "q.amazonaws.com", ctx(tls="false")), False, None),
    ("not-action-allows", pol(stmt(Action=None, NotAction="s3:GetObject")), REQ, True, None),
    ("not-action-excludes", pol(stmt(Action=None, NotAction=["s3:Get*", "s3:Put*"])),
     REQ, False, None),
    ("not-resource-deny-elsewhere", pol(DOC_STATEMENT, deny(
        Resource=None, NotResource="arn:aws:s3:::amzn-s3-demo-bucket/user-activity-reports/*")),
     REQ, True, None),
    ("not-resource-deny-here", pol(DOC_STATEMENT, deny(
        Resource=None, NotResource="arn:aws:s3:::amzn-s3-demo-bucket/other/*")),
     REQ, False, None),
    ("not-principal-spares-writer", pol(DOC_STATEMENT, deny(
        Principal=None, NotPrincipal={"Service": "q.amazonaws.com"})), REQ, True, None),
    ("not-principal-hits-writer", pol(DOC_STATEMENT, deny(
        Principal=None, NotPrincipal={"AWS": ROLE})), REQ, False, None),
    ("not-principal-allow", pol(stmt(Principal=None, NotPrincipal={"AWS": ROLE})),
     REQ, True, None),
    ("principal-star", pol(stmt(Principal="*")), REQ, True, None),
    ("principal-aws-star", pol(stmt(Principal={"AWS": "*"})), ROLE_REQ, True, None),
    ("principal-account-id", pol(stmt(Principal={"AWS": ACCOUNT})), ROLE_REQ, True, None),
    ("principal-account-root", pol(stmt(Principal={"AWS": f"arn:aws:iam::{ACCOUNT}:root"})),
     ROLE_REQ, True, None),
    ("principal-other-account", pol(stmt(Principal={"AWS": OTHER})), ROLE_REQ, False, None),
    ("principal-role-list", pol(stmt(Principal={"AWS": [f"arn:aws:iam::{OTHER}:role/x", ROLE]})),
     ROLE_REQ, True, None),
    ("principal-other-role", pol(stmt(Principal={"AWS": f"arn:aws:iam::{ACCOUNT}:role/other"})),
     ROLE_REQ, False, None),
    ("principal-account-not-service", pol(stmt(Principal={"AWS": ACCOUNT})), REQ, False, None),
    ("principal-service-list",
     pol(stmt(Principal={"Service": ["logging.s3.amazonaws.com", "q.amazonaws.com"]})),
     REQ, True, None),
    ("principal-other-service", pol(stmt(Principal={"Service": "logging.s3.amazonaws.com"})),
     REQ, False, None),
    ("action-star", pol(stmt(Action="*")), REQ, True, None),
    ("action-s3-star", pol(stmt(Action="s3:*")), REQ, True, None),
    ("action-put-star", pol(stmt(Action=["s3:GetObject", "s3:Put*"])), REQ, True, None),
    ("action-case-insensitive", pol(stmt(Action="S3:PUTOBJECT")), REQ, True, None),
    ("action-question", pol(stmt(Action="s3:PutObjec?")), REQ, True, None),
    ("action-question-too-long", pol(stmt(Action="s3:PutObject?")), REQ, False, None),
    ("action-other", pol(stmt(Action="s3:Get*")), REQ, False, None),
    ("resource-star", pol(stmt(Resource="*")), REQ, True, None),
    ("resource-bucket-star", pol(stmt(Resource="arn:aws:s3:::amzn-s3-demo-bucket/*")),
     REQ, True, None),
    ("resource-question",
     pol(stmt(Resource="arn:aws:s3:::amzn-s3-demo-bucke?/user-activity-reports/*")),
     REQ, True, None),
    ("resource-case-sensitive", pol(stmt(Resource="arn:aws:s3:::AMZN-S3-DEMO-BUCKET/*")),
     REQ, False, None),
    ("resource-bucket-only", pol(stmt(Resource="arn:aws:s3:::amzn-s3-demo-bucket")),
     REQ, False, None),
    ("unknown-operator-in-allow",
     pol(stmt(Condition={**DOC_STATEMENT["Condition"], "NumericLessThan": {"s3:max-keys": "5"}})),
     REQ, False, "NumericLessThan"),
    ("set-operator-in-allow",
     pol(stmt(Condition={**DOC_STATEMENT["Condition"],
                         "ForAnyValue:StringLike": {"aws:SourceArn": "*"}})),
     REQ, False, "ForAnyValue:StringLike"),
    ("unknown-key-in-allow",
     pol(stmt(Condition={**DOC_STATEMENT["Condition"],
                         "StringEquals": {"aws:PrincipalOrgID": "o-123"}})),
     REQ, False, "aws:PrincipalOrgID"),
    ("unknown-operator-in-deny",
     pol(DOC_STATEMENT, deny(Condition={"DateGreaterThan": {"aws:CurrentTime": "2020-01-01"}})),
     REQ, False, "DateGreaterThan"),
    ("unknown-key-in-deny-with-false-known-condition", pol(DOC_STATEMENT, deny(Condition={
        "StringNotEquals": {"aws:PrincipalOrgID": "o-1"},
        "Bool": {"aws:SecureTransport": "false"}})), REQ, True, "aws:PrincipalOrgID"),
    ("no-statement", {"Version": "2012-10-17"}, REQ, False, None),
    ("empty-statement-list", pol(), REQ, False, None),
    ("not-an-object", ["nope"], REQ, False, None),
    ("statement-not-list", {"Statement": "Allow"}, REQ, False, None),
    ("bad-effect", pol(stmt(Effect="Permit")), REQ, False, "Permit"),
    ("missing-action", pol(stmt(Action=None)), REQ, False, "Action"),
    ("both-resource-forms", pol(stmt(NotResource="*")), REQ, False, "NotResource"),
    ("statement-not-object", pol("Allow", DOC_STATEMENT), REQ, True, "not an object"),
    ("malformed-deny-counts", pol(DOC_STATEMENT, deny(Action=None)), REQ, False,
     "counted as denying"),
    ("malformed-principal", pol(stmt(Principal=["*"])), REQ, False, "Principal"),
    ("malformed-condition-value", pol(stmt(Condition={"StringEquals": {"aws:SourceAccount": {}}})),
     REQ, False, "value"),
]


@pytest.mark.parametrize(
    ("policy", "request_", "allowed", "warning"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_verdicts(policy: Any, request_: Request, allowed: bool, warning: str | None) -> None:
    verdict = evaluate(policy, request_)
    assert isinstance(verdict, Verdict)
    assert verdict.allowed is allowed, verdict
    assert verdict.reasons, verdict
    if warning is None:
        assert verdict.warnings == [], verdict
    else:
        assert any(warning in w for w in verdict.warnings), verdict


def test_reasons_name_statements() -> None:
    assert "'QDeveloperLogsWrite' allows" in evaluate(pol(DOC_STATEMENT), REQ).reasons[0]
    denied = evaluate(pol(DOC_STATEMENT, deny()), REQ)
    assert any("'DenyIt' explicitly denies" in r for r in denied.reasons)
    nothing = evaluate(pol(stmt(Action="s3:GetObject", Sid=None)), REQ)
    assert nothing.reasons == [f"no statement allows s3:PutObject on {KEY} for q.amazonaws.com"]
    undecided = evaluate(pol(stmt(Condition={"NumericLessThan": {"s3:max-keys": "5"}})), REQ)
    assert any("undecided" in r for r in undecided.reasons)
    assert evaluate(pol("x"), REQ).reasons[0].startswith("statement #1 is not an object")


ARN_PAT = f"arn:aws:codewhisperer:us-east-1:{ACCOUNT}:*"
OTHER_ARN = f"arn:aws:codewhisperer:us-east-1:{OTHER}:profile/X"
SA, SARN, TLS = "aws:SourceAccount", "aws:SourceArn", "aws:SecureTransport"

# (operator, key, policy values, context changes, expected match)
CONDITIONS: list[tuple[str, str, Any, dict[str, str], bool]] = [
    ("StringEquals", SA, ACCOUNT, {}, True),
    ("StringEquals", SA, OTHER, {}, False),
    ("StringEquals", SA, ACCOUNT, {"account": "-"}, False),
    ("StringEqualsIfExists", SA, ACCOUNT, {"account": "-"}, True),
    ("StringEqualsIfExists", SA, OTHER, {}, False),
    ("StringEquals", "AWS:SOURCEACCOUNT", ACCOUNT, {}, True),
    ("StringEquals", SARN, PROFILE.upper(), {}, False),
    ("StringNotEquals", SA, ACCOUNT, {}, False),
    ("StringNotEquals", SA, OTHER, {}, True),
    ("StringNotEquals", SA, OTHER, {"account": "-"}, True),
    ("StringNotEqualsIfExists", SA, ACCOUNT, {"account": "-"}, True),
    ("StringNotEqualsIfExists", SA, ACCOUNT, {}, False),
    ("StringLike", SA, "1111*", {}, True),
    ("StringLike", SA, "11112222333?", {}, True),
    ("StringLike", SA, "4444*", {}, False),
    ("StringLike", SA, "1111*", {"account": "-"}, False),
    ("StringLikeIfExists", SA, "1111*", {"account": "-"}, True),
    ("StringLikeIfExists", SA, "4444*", {}, False),
    ("StringNotLike", SA, "1111*", {}, False),
    ("StringNotLike", SA, "4444*", {}, True),
    ("StringNotLike", SA, "1111*", {"account": "-"}, True),
    ("StringNotLikeIfExists", SA, "1111*", {"account": "-"}, True),
    ("StringNotLikeIfExists", SA, "1111*", {}, False),
    ("ArnEquals", SARN, PROFILE, {}, True),
    ("ArnEquals", SARN, OTHER_ARN, {}, False),
    ("ArnEquals", SARN, PROFILE, {"arn": "-"}, False),
    ("ArnEqualsIfExists", SARN, PROFILE, {"arn": "-"}, True),
    ("ArnEqualsIfExists", SARN, OTHER_ARN, {}, False),
    ("ArnLike", SARN, ARN_PAT, {}, True),
    ("ArnLike", SARN, f"arn:aws:codewhisperer:*:{ACCOUNT}:profile/*", {}, True),
    ("ArnLike", SARN, "arn:aws:codewhisperer:*:profile/ABCDEFGHIJKL", {}, False),
    ("ArnLike", SARN, "*", {}, True),
    ("ArnLike", SARN, f"arn:aws:codewhisperer:us-east-1:{OTHER}:*", {}, False),
    ("ArnLike", SARN, ARN_PAT, {"arn": "-"}, False),
    ("ArnLikeIfExists", SARN, ARN_PAT, {"arn": "-"}, True),
    ("ArnLikeIfExists", SARN, OTHER_ARN, {}, False),
    ("ArnNotEquals", SARN, PROFILE, {}, False),
    ("ArnNotEquals", SARN, OTHER_ARN, {}, True),
    ("ArnNotEquals", SARN, PROFILE, {"arn": "-"}, True),
    ("ArnNotEqualsIfExists", SARN, PROFILE, {"arn": "-"}, True),
    ("ArnNotEqualsIfExists", SARN, PROFILE, {}, False),
    ("ArnNotLike", SARN, ARN_PAT, {}, False),
    ("ArnNotLike", SARN, "arn:aws:s3:::*", {}, True),
    ("ArnNotLike", SARN, ARN_PAT, {"arn": "-"}, True),
    ("ArnNotLikeIfExists", SARN, ARN_PAT, {"arn": "-"}, True),
    ("ArnNotLikeIfExists", SARN, ARN_PAT, {}, False),
    ("Bool", TLS, "true", {}, True),
    ("Bool", TLS, True, {}, True),
    ("Bool", TLS, "false", {}, False),
    ("Bool", TLS, "true", {"tls": "-"}, False),
    ("BoolIfExists", TLS, "true", {"tls": "-"}, True),
    ("BoolIfExists", TLS, "false", {}, False),
    ("Null", SARN, "true", {"arn": "-"}, True),
    ("Null", SARN, "true", {}, False),
    ("Null", SARN, "false", {}, True),
    ("Null", SARN, "false", {"arn": "-"}, False),
    # several values: any-match, negated operators none-match
    ("StringEquals", SA, [OTHER, ACCOUNT], {}, True),
    ("StringNotEquals", SA, [OTHER, ACCOUNT], {}, False),
    ("StringNotEquals", SA, [OTHER, "999999999999"], {}, True),
    ("StringLike", SA, ["4444*", "1111*"], {}, True),
    ("StringNotLike", SA, ["4444*", "1111*"], {}, False),
    ("ArnLike", SARN, ["arn:aws:s3:::*", ARN_PAT], {}, True),
    ("ArnNotLike", SARN, ["arn:aws:s3:::*", ARN_PAT], {}, False),
    ("ArnNotEquals", SARN, [OTHER_ARN, "arn:aws:s3:::b"], {}, True),
]


@pytest.mark.parametrize(
    ("operator", "key", "values", "changes", "expected"),
    CONDITIONS,
    ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[3]}" for c in CONDITIONS],
)
def test_condition_operators(
    operator: str, key: str, values: Any, changes: dict[str, str], expected: bool
) -> None:
    policy = pol(stmt(Principal={"AWS": ROLE}, Condition={operator: {key: values}}))
    verdict = evaluate(policy, Request("s3:PutObject", KEY, ROLE, ctx(**changes)))
    assert verdict.allowed is expected, verdict
    assert verdict.warnings == []


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"StringEquals": {SA: ACCOUNT, SARN: PROFILE}}, True),
        ({"StringEquals": {SA: ACCOUNT, SARN: OTHER_ARN}}, False),
        ({"StringEquals": {SA: ACCOUNT}, "ArnLike": {SARN: ARN_PAT}}, True),
        ({"StringEquals": {SA: ACCOUNT}, "ArnLike": {SARN: OTHER_ARN}}, False),
        ({"StringEquals": {SA: ACCOUNT}, "Bool": {TLS: "false"}}, False),
    ],
)
def test_keys_and_blocks_all_must_match(condition: dict[str, Any], expected: bool) -> None:
    assert evaluate(pol(stmt(Condition=condition)), REQ).allowed is expected


def test_known_keys_make_a_missing_key_decidable() -> None:
    policy = pol(DOC_STATEMENT, deny(Condition={"StringNotEquals": {"s3:x-amz-acl": "private"}}))
    undecided = evaluate(policy, REQ)
    assert not undecided.allowed
    assert any("s3:x-amz-acl" in w for w in undecided.warnings)
    # With the key modelled, its absence makes the negated Deny condition true (IAM semantics).
    assert not evaluate(policy, REQ, known_keys=["s3:x-amz-acl"]).allowed
    acl_ok = Request("s3:PutObject", KEY, "q.amazonaws.com", {**CONTEXT, "s3:x-amz-acl": "private"})
    assert evaluate(policy, acl_ok).allowed


# --- properties -------------------------------------------------------------------------------

_conditions = st.sampled_from([
    None,
    DOC_STATEMENT["Condition"],
    {"Bool": {TLS: "false"}},
    {"StringNotEquals": {SA: ACCOUNT}},
    {"NumericLessThan": {"s3:max-keys": "5"}},
    {"StringEquals": {"aws:PrincipalOrgID": "o-1"}},
    {"Null": {SARN: "true"}},
    {"ArnNotLikeIfExists": {SARN: ARN_PAT}},
])
_statement = st.fixed_dictionaries(
    {
        "Effect": st.sampled_from(["Allow", "Deny", "Permit"]),
        "Principal": st.sampled_from(["*", {"Service": "q.amazonaws.com"}, {"AWS": ACCOUNT},
                                      {"AWS": ROLE}, {"Service": ["s3.amazonaws.com"]}]),
        "Action": st.sampled_from(["*", "s3:PutObject", "s3:Get*", ["s3:Put*", "s3:List*"]]),
        "Resource": st.sampled_from(["*", "arn:aws:s3:::amzn-s3-demo-bucket/*",
                                     "arn:aws:s3:::amzn-s3-demo-bucket/other/*"]),
    },
    optional={"Condition": _conditions, "Sid": st.sampled_from(["A", "B", ""])},
)
_policies = st.lists(_statement, max_size=5).map(lambda s: pol(*s))
_requests = st.sampled_from([REQ, ROLE_REQ, Request("s3:PutObject", KEY, "q.amazonaws.com",
                                                    ctx(account=OTHER, tls="false"))])
_matching_denies = st.sampled_from([
    deny(),
    deny(Principal={"Service": "q.amazonaws.com", "AWS": ROLE}, Action="s3:Put*", Resource=KEY),
    deny(Action=None, NotAction="s3:GetObject", Principal={"AWS": ["*"]}),
    deny(Resource=None, NotResource="arn:aws:s3:::other-bucket/*"),
    deny(Condition={"Null": {"aws:SourceAccount": "false"}}),
    deny(Condition={"NumericLessThan": {"s3:max-keys": "5"}}),
])


@settings(max_examples=300, deadline=None)
@given(_policies, _requests, _matching_denies, st.integers(min_value=0))
def test_adding_a_matching_deny_always_denies(
    policy: dict[str, Any], request_: Request, extra: dict[str, Any], position: int
) -> None:
    before = evaluate(policy, request_)
    statements = list(policy["Statement"])
    statements.insert(position % (len(statements) + 1), extra)
    after = evaluate({**policy, "Statement": statements}, request_)
    assert after.allowed is False
    assert not (before.allowed is False and after.allowed)


@settings(max_examples=200, deadline=None)
@given(_policies, _requests, st.randoms(use_true_random=False))
def test_statement_order_does_not_matter(
    policy: dict[str, Any], request_: Request, rnd: Any
) -> None:
    shuffled = list(policy["Statement"])
    rnd.shuffle(shuffled)
    reordered = evaluate({**policy, "Statement": shuffled}, request_)
    assert reordered.allowed is evaluate(policy, request_).allowed


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    | st.sampled_from(["*", "Allow", "Deny", "Principal", "Action", "Resource", "Condition"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["Effect", "Principal", "Action", "NotAction", "Resource",
                                       "Condition", "Statement", "AWS", "Service", "Sid",
                                       "StringEquals", "Null", SA]), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_arbitrary_json_never_raises(policy: Any) -> None:
    verdict = evaluate(policy, REQ)
    assert isinstance(verdict.allowed, bool)
    assert verdict.reasons


def _regex_wild(pattern: str, value: str) -> bool:
    """The regex translation of IAM wildcards the evaluator used before #13 (the reference)."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(body, value, re.DOTALL) is not None


@settings(max_examples=2000, deadline=None)
@given(st.text("ab*?:", max_size=10), st.text("ab:", max_size=10))
def test_wildcards_match_like_the_regex_translation(pattern: str, value: str) -> None:
    assert _wild(pattern, value) is _regex_wild(pattern, value)
    assert _wild(pattern.upper(), value, True) is _regex_wild(pattern, value)


def test_a_star_pattern_evaluates_in_milliseconds() -> None:
    """#13: "arn:aws:s3:::******Z" against a report key took 34 s with the regex."""
    for stars in (6, 30, 200):
        policy = {"Statement": [{**DOC_STATEMENT, "Resource": "arn:aws:s3:::" + "*" * stars + "Z"},
                                {**DENY_INSECURE, "Resource": "*?" * stars + "Z"}]}
        start = time.perf_counter()
        verdict = evaluate(policy, REQ)
        assert time.perf_counter() - start < 0.05
        assert not verdict.allowed
