"""location: the URI rules (pure) and checks 2-4 on real buckets of moto's S3 server over HTTP.

The server is ``tests/moto_owner.py`` (moto plus ExpectedBucketOwner). Buckets are created as
account ACCOUNT (or OTHER) with moto's ``x-moto-account-id`` header; the admin's client used by
``check_location`` is a plain boto3 client, as an administrator's would be.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from hypothesis import given
from hypothesis import strategies as st

from conftest import free_port
from kiro_activity.location import (
    DEFAULT_WRITER,
    Finding,
    LocationReport,
    check_location,
    documented_policy,
    uri_problems,
)
from kiro_activity.report import longest_key_bytes
from kiro_activity.store import Account

ACCOUNT = "111122223333"
OTHER = "999988887777"
REGION = "us-east-1"
PROFILE = f"arn:aws:codewhisperer:{REGION}:{ACCOUNT}:profile/ABCDEFGHIJKL"
ACCT = Account(ACCOUNT, REGION, PROFILE)
DAY = date(2026, 11, 30)
PREFIX = "reports"
KMS_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
MakeBucket = Callable[..., str]


def messages(findings: list[Finding], check: str | None = None) -> list[str]:
    return [f.message for f in findings if check is None or f.check == check]


def only(findings: list[Finding], check: str) -> str:
    [message] = messages(findings, check)
    return message


# --- check 1: the URI, pure -------------------------------------------------------------------


def problems_of(uri: str) -> list[str]:
    return uri_problems(uri, account_id=ACCOUNT, region=REGION)


def prefix_of_length(total_key_bytes: int) -> str:
    """A prefix whose longest key is exactly ``total_key_bytes`` long."""
    base = longest_key_bytes("p", ACCOUNT, REGION) - 1
    return "p" * (total_key_bytes - base)


ROOT = "the CSV file cannot be saved in the root of the bucket"


@pytest.mark.parametrize(("uri", "expected"), [
    ("https://bucket/reports/", "must start with s3://"),
    ("s3:/bucket/reports/", "must start with s3://"),
    ("s3://bucket", ROOT),
    ("s3://bucket/", ROOT),
    ("s3:///reports/", "the URI names no bucket"),
    ("s3://192.168.5.4/reports/", "'192.168.5.4' is shaped like an IP address"),
    ("s3://MyBucket/reports/", "(upper-case letters are not allowed)"),
    ("s3://my_bucket/reports/", "characters not allowed in a bucket name: '_'"),
    ("s3://ab/reports/", "bucket name 'ab' has 2 characters: a bucket name has 3 to 63"),
    (f"s3://{'a' * 64}/reports/", "has 64 characters: a bucket name has 3 to 63"),
    ("s3://-bucket/reports/", "must start and end with a letter or a digit, not '.' or '-'"),
    ("s3://bucket./reports/", "must start and end with a letter or a digit, not '.' or '-'"),
    ("s3://my..bucket/reports/", "'my..bucket' has '..': periods in a bucket name cannot"),
    ("s3://xn--bucket/reports/", "uses a prefix or suffix that S3 reserves"),
    ("s3://bucket/a//b/", "the prefix 'a//b' has an empty path segment ('//')"),
    ("s3://bucket//a/", "the prefix '/a' has an empty path segment"),
    ("s3://bucket/a/./b/", "the prefix 'a/./b' has a '.' segment"),
    ("s3://bucket/a/../b/", "the prefix 'a/../b' has a '..' segment"),
    ("s3://bucket/a/./../b", "has a '.' and a '..' segment"),
    ("s3://bucket/re\nports/", "control characters (U+000A at position 14): remove them"),
    ("s3://bucket/re\x85ports/", "control characters (U+0085 at position 14)"),
    ("s3://bucket/re\udc80ports/", "not valid UTF-8: lone surrogates (U+DC80 at position 14)"),
    (f"s3://bucket/{prefix_of_length(1025)}/",
     "the longest object key would be 1,025 bytes, over S3's limit of 1,024; shorten the "
     "prefix by at least 1 bytes"),
])
def test_uri_rule(uri: str, expected: str) -> None:
    found = problems_of(uri)
    assert any(expected in p for p in found), found


def test_root_is_refused_with_the_documented_phrase() -> None:
    [problem] = problems_of("s3://bucket/")
    assert problem == ("a prefix is required: the CSV file cannot be saved in the root of the "
                       "bucket (use s3://bucket/prefix/)")


def test_key_length_limit_is_in_bytes_and_inclusive() -> None:
    assert problems_of(f"s3://bucket/{prefix_of_length(1024)}/") == []
    two_byte = "é" * 300  # 600 bytes of a 300-character prefix
    assert longest_key_bytes(two_byte * 2, ACCOUNT, REGION) > 1024
    assert "bytes, over S3's limit" in problems_of(f"s3://bucket/{two_byte * 2}/")[0]


def test_every_problem_is_listed() -> None:
    assert problems_of("s3://My..Bucket/a//./b\x07/") == [
        "bucket name 'My..Bucket' has characters not allowed in a bucket name: 'B' 'M' "
        "(upper-case letters are not allowed); use only lower-case letters, digits, '.' and '-'",
        "bucket name 'My..Bucket' has '..': periods in a bucket name cannot be adjacent",
        "the prefix 'a//./b\\x07' has an empty path segment ('//'): remove the doubled or "
        "leading slash",
        "the prefix 'a//./b\\x07' has a '.' segment, which clients rewrite or reject: name the "
        "folders without them",
        "the URI has control characters (U+0007 at position 22): remove them",
    ]
    assert problems_of("s3://b\u00e9cket/x") == [
        "bucket name 'bécket' has characters not allowed in a bucket name: 'é'; use only "
        "lower-case letters, digits, '.' and '-'"]


@pytest.mark.parametrize("uri", [
    "s3://bucket/reports", "s3://my.bucket-1/a/b/c", "s3://bucket/a//b", "s3://bucket/.",
    "s3://Bucket/x", "s3://bucket",
])
def test_trailing_slash_is_optional(uri: str) -> None:
    assert problems_of(uri + "/") == problems_of(uri)


def test_valid_uris() -> None:
    for uri in ("s3://bucket/reports/", "s3://my.bucket-1/team/kiro", "s3://b12/é/x"):
        assert problems_of(uri) == [], uri


@given(st.text(max_size=80))
def test_uri_problems_never_raise(tail: str) -> None:
    for uri in (tail, "s3://" + tail, "s3://bucket/" + tail):
        assert isinstance(problems_of(uri), list)


def test_bad_uri_stops_before_any_network() -> None:
    class NoNetwork:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"S3 was called: {name}")

    report = check_location("s3://bucket/", ACCT, client=NoNetwork(), today=DAY)
    assert [f.check for f in report.problems] == ["uri"]
    assert not report.valid and report.region is None


# --- S3 on moto ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_real_aws(aws_env: None) -> None:
    """Every test here runs with fake credentials (see conftest.aws_env)."""


def _as_account(request: Any, account: str, **_: Any) -> None:
    request.headers["x-moto-account-id"] = account


def client_of(url: str, account: str | None = None, region: str = REGION) -> Any:
    """A boto3 client on moto; with ``account``, acting as that moto account."""
    client = boto3.session.Session().client(
        "s3", region_name=region, endpoint_url=url, aws_access_key_id="testing",
        aws_secret_access_key="testing")
    if account is not None:
        client.meta.events.register("before-sign.s3", partial(_as_account, account=account))
    return client


@pytest.fixture
def admin(moto_owner_url: str) -> Iterator[Any]:
    """The administrator's own client, as check_location would get it."""
    client = client_of(moto_owner_url)
    yield client
    client.close()


@pytest.fixture
def make_bucket(moto_owner_url: str) -> Iterator[MakeBucket]:
    clients: list[Any] = []

    def make(policy: Callable[[str], dict[str, Any]] | None = None, *, owner: str = ACCOUNT,
             region: str = REGION) -> str:
        """A new bucket of ``owner`` in ``region``, with ``policy(name)`` when given."""
        client = client_of(moto_owner_url, owner, region)
        clients.append(client)
        name = f"kiro-loc-{uuid.uuid4().hex[:12]}"
        extra = {} if region == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": region}}
        client.create_bucket(Bucket=name, **extra)
        if policy is not None:
            client.put_bucket_policy(Bucket=name, Policy=json.dumps(policy(name)))
        return name

    yield make
    for client in clients:
        client.close()


class PolicyBlind:
    """The admin's client where GetBucketPolicy is denied (HeadBucket allowed): the case in
    which a given copy of the policy is what gets checked."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def get_bucket_policy(self, **kw: Any) -> Any:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"},
                           "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetBucketPolicy")


@pytest.fixture
def blind(admin: Any) -> Any:
    return PolicyBlind(admin)


def check(bucket: str, client: Any, **kw: Any) -> LocationReport:
    return check_location(f"s3://{bucket}/{PREFIX}/", ACCT, client=client, today=DAY, **kw)


def documented(bucket: str, prefix: str = PREFIX, account: Account = ACCT) -> dict[str, Any]:
    return documented_policy(bucket, prefix, account)


def with_statements(policy: dict[str, Any], *extra: dict[str, Any]) -> dict[str, Any]:
    return {**policy, "Statement": [*policy["Statement"], *extra]}


def test_documented_policy_shape() -> None:
    [st_] = documented("b", "/p/")["Statement"]
    assert st_ == {
        "Sid": "QDeveloperLogsWrite", "Effect": "Allow",
        "Principal": {"Service": "q.amazonaws.com"}, "Action": "s3:PutObject",
        "Resource": "arn:aws:s3:::b/p/*",
        "Condition": {"StringEquals": {"aws:SourceAccount": ACCOUNT},
                      "ArnLike": {"aws:SourceArn": f"arn:aws:codewhisperer:{REGION}:{ACCOUNT}:*"}},
    }
    role = f"arn:aws:iam::{ACCOUNT}:role/writer"
    assert documented_policy("b", "p", ACCT, role)["Statement"][0]["Principal"] == {"AWS": role}


def test_documented_policy_is_valid_without_warnings(
        make_bucket: MakeBucket, moto_owner_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = make_bucket(documented)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_owner_url)  # the default client finds moto
    report = check_location(f"s3://{bucket}/{PREFIX}", ACCT, today=DAY)
    assert report.valid and report.problems == [] and report.warnings == []
    assert report.manifest_allowed and report.region == REGION
    assert json.loads(json.dumps(report.as_dict())) == {
        "valid": True, "problems": [], "warnings": [], "manifest_allowed": True,
        "region": REGION}


def test_bucket_in_another_region(make_bucket: MakeBucket, admin: Any) -> None:
    bucket = make_bucket(region="eu-west-1")
    report = check(bucket, admin, policy=documented(bucket))
    assert not report.valid and report.region == "eu-west-1"
    assert only(report.problems, "region") == (
        f"bucket {bucket} is in Region eu-west-1, but the account's profile is in us-east-1: "
        "reports go to a bucket in the profile's Region; use a bucket in us-east-1")


def test_bucket_that_does_not_exist(admin: Any) -> None:
    report = check("kiro-loc-no-such-bucket", admin)
    assert not report.valid
    assert only(report.problems, "uri").startswith(
        "bucket kiro-loc-no-such-bucket does not exist: create it in us-east-1 with account "
        f"{ACCOUNT}")
    assert report.warnings == []


def test_bucket_of_another_account(make_bucket: MakeBucket, admin: Any) -> None:
    bucket = make_bucket(documented, owner=OTHER)
    report = check(bucket, admin)
    assert not report.valid
    assert only(report.problems, "owner") == (
        f"cross-account buckets are not supported: bucket {bucket} is not owned by account "
        f"{ACCOUNT}; use a bucket of account {ACCOUNT}")
    assert messages(report.problems, "policy") == [] and report.warnings == []


def test_bucket_without_policy(make_bucket: MakeBucket, admin: Any) -> None:
    bucket = make_bucket()
    report = check(bucket, admin)
    message = only(report.problems, "policy")
    head, _, policy = message.partition("put this bucket policy: ")
    assert head == (f"bucket {bucket} has no bucket policy, so the report writer "
                    f"{DEFAULT_WRITER} cannot put objects; ")
    assert json.loads(policy) == documented(bucket)


def assert_refused_with_statement(report: LocationReport, bucket: str, *reasons: str) -> str:
    assert not report.valid
    message = only(report.problems, "policy")
    assert message.startswith(f"the bucket policy does not let q.amazonaws.com put report "
                              f"files under s3://{bucket}/{PREFIX}/ (")
    for reason in reasons:
        assert reason in message
    statement = json.loads(message.rsplit(": ", 1)[1])
    assert statement == documented(bucket)["Statement"][0]
    return message


def test_policy_for_another_prefix(make_bucket: MakeBucket, admin: Any) -> None:
    bucket = make_bucket(lambda name: documented(name, "elsewhere"))
    message = assert_refused_with_statement(
        check(bucket, admin), bucket,
        f"no statement allows s3:PutObject on arn:aws:s3:::{bucket}/{PREFIX}/AWSLogs/")
    assert "add this statement to the bucket policy" in message


def test_policy_for_another_source_account(make_bucket: MakeBucket, admin: Any) -> None:
    def policy(name: str) -> dict[str, Any]:
        doc = documented(name)
        doc["Statement"][0]["Condition"]["StringEquals"]["aws:SourceAccount"] = OTHER
        return doc

    bucket = make_bucket(policy)
    report = check(bucket, admin)
    assert_refused_with_statement(report, bucket, "no statement allows s3:PutObject")
    assert report.warnings == []


def test_deny_statement(make_bucket: MakeBucket, admin: Any) -> None:
    def policy(name: str) -> dict[str, Any]:
        deny = {"Sid": "NoWrites", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
                "Resource": f"arn:aws:s3:::{name}/{PREFIX}/*"}
        return with_statements(documented(name), deny)

    bucket = make_bucket(policy)
    message = assert_refused_with_statement(
        check(bucket, admin), bucket, "statement 'NoWrites' explicitly denies s3:PutObject")
    assert "remove or narrow the statement that denies it" in message


def test_documented_policy_without_conditions(make_bucket: MakeBucket, admin: Any) -> None:
    def policy(name: str) -> dict[str, Any]:
        doc = documented(name)
        del doc["Statement"][0]["Condition"]
        return doc

    bucket = make_bucket(policy)
    report = check(bucket, admin)
    assert report.valid and report.manifest_allowed
    assert only(report.warnings, "policy") == (
        "statement 'QDeveloperLogsWrite' allows q.amazonaws.com without a aws:SourceAccount or "
        "aws:SourceArn condition: the bucket is exposed to the confused-deputy problem")


def test_policy_allowing_csv_keys_but_not_the_manifest(
        make_bucket: MakeBucket, admin: Any) -> None:
    def policy(name: str) -> dict[str, Any]:
        doc = documented(name)
        doc["Statement"][0]["Resource"] = (
            f"arn:aws:s3:::{name}/{PREFIX}/AWSLogs/*/KiroLogs/by_user_analytic/*")
        return doc

    bucket = make_bucket(policy)
    report = check(bucket, admin)
    assert report.valid and not report.manifest_allowed
    manifest = (f"{PREFIX}/AWSLogs/{ACCOUNT}/KiroLogs/by_user_analytic_manifest/us-east-1/"
                f"2026/11/30/{ACCOUNT}_manifest_202611300000.json")
    assert only(report.warnings, "policy").startswith(
        f"manifests will not be written: the policy does not allow {manifest} (no statement")
    assert report.as_dict()["manifest_allowed"] is False


def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none" / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none" / "credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)


def test_policy_text_without_access_to_the_bucket(
        make_bucket: MakeBucket, moto_owner_url: str, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    bucket = make_bucket()
    no_credentials(monkeypatch, tmp_path, moto_owner_url)
    report = check_location(f"s3://{bucket}/{PREFIX}/", ACCT, today=DAY,
                            policy=json.dumps(documented(bucket)))
    assert report.valid and report.region is None
    assert only(report.warnings, "region") == (
        f"the Region of bucket {bucket} is not verified (no AWS credentials were found); "
        "delivery reports a Region mismatch as a configuration error")
    assert only(report.warnings, "owner") == (
        f"the owner of bucket {bucket} is not verified (no AWS credentials were found); "
        "delivery enforces the owner with ExpectedBucketOwner")
    assert messages(report.warnings, "policy") == []


def test_no_access_and_no_policy_says_the_policy_is_not_verified(
        make_bucket: MakeBucket, moto_owner_url: str, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    bucket = make_bucket()
    no_credentials(monkeypatch, tmp_path, moto_owner_url)
    report = check_location(f"s3://{bucket}/{PREFIX}/", ACCT, today=DAY)
    assert report.valid
    assert only(report.warnings, "policy").startswith("bucket policy not verified:")
    assert "pass --policy-file" in only(report.warnings, "policy")


def test_invalid_policy_json(make_bucket: MakeBucket, blind: Any) -> None:
    bucket = make_bucket()
    report = check(bucket, blind, policy='{"Version": "2012-10-17",\n "Statement": [}')
    assert not report.valid
    assert only(report.problems, "policy") == (
        "the policy is not valid JSON: Expecting value at line 2 column 16; "
        "fix the JSON")


def test_policy_given_as_bytes(make_bucket: MakeBucket, blind: Any) -> None:
    bucket = make_bucket()  # the bucket's policy cannot be read: the given one is checked
    assert check(bucket, blind, policy=json.dumps(documented(bucket)).encode()).valid
    assert only(check(bucket, blind, policy=b"\xff{}").problems, "policy") == (
        "the policy is not valid UTF-8 (byte 0): save it as UTF-8 JSON")
    assert only(check(bucket, blind, policy="[]").problems, "policy") == (
        "the policy must be a JSON object with a Statement list")
    assert only(check(bucket, blind, policy=5).problems, "policy") == (  # type: ignore[arg-type]
        "the policy must be a JSON object or JSON text, not int")
    deep = "[" * 100_000 + "]" * 100_000
    assert only(check(bucket, blind, policy=deep).problems, "policy") == (
        "the policy is nested too deeply to be a bucket policy")


def test_a_given_copy_never_overrides_the_bucket_policy(make_bucket: MakeBucket,
                                                       admin: Any) -> None:
    """The bucket denies the writer; a pasted copy of the documented policy does not make the
    location valid."""
    def denying(name: str) -> dict[str, Any]:
        return {"Version": "2012-10-17", "Statement": [{
            "Sid": "NoWrites", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
            "Resource": f"arn:aws:s3:::{name}/*"}]}

    bucket = make_bucket(denying)
    report = check(bucket, admin, policy=documented(bucket))
    assert not report.valid
    assert "statement 'NoWrites' explicitly denies" in only(report.problems, "policy")
    assert "the policy given is not the one bucket" in only(report.warnings, "policy")
    # a bucket without any policy is not rescued by a copy either
    bare = make_bucket()
    report = check(bare, admin, policy=documented(bare))
    assert "has no bucket policy" in only(report.problems, "policy")


def test_unknown_operator_in_the_only_allow(make_bucket: MakeBucket, blind: Any) -> None:
    bucket = make_bucket()
    policy = documented(bucket)
    policy["Statement"][0]["Condition"]["IpAddressIfExists"] = {"aws:SourceIp": "10.0.0.0/8"}
    report = check(bucket, blind, policy=policy)
    assert not report.valid
    assert ("statement 'QDeveloperLogsWrite' would allow s3:PutObject" in
            only(report.problems, "policy"))
    assert "but is undecided, so it does not count" in only(report.problems, "policy")
    assert only(report.warnings, "policy") == (
        "statement 'QDeveloperLogsWrite': unknown condition operator 'IpAddressIfExists'")


def test_deny_insecure_transport_with_the_documented_statement(
        make_bucket: MakeBucket, admin: Any) -> None:
    def policy(name: str) -> dict[str, Any]:
        secure = {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*",
                  "Action": "s3:*", "Resource": [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"],
                  "Condition": {"Bool": {"aws:SecureTransport": "false"}}}
        return with_statements(documented(name), secure)

    bucket = make_bucket(policy)
    report = check(bucket, admin)
    assert report.valid and report.warnings == [] and report.manifest_allowed


def test_policy_requiring_aes256(make_bucket: MakeBucket, admin: Any) -> None:
    def policy(name: str) -> dict[str, Any]:
        require = {"Sid": "RequireAES256", "Effect": "Deny", "Principal": "*",
                   "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{name}/*",
                   "Condition": {"StringNotEquals": {"s3:x-amz-server-side-encryption": "AES256"}}}
        return with_statements(documented(name), require)

    bucket = make_bucket(policy)
    report = check(bucket, admin, sse="AES256")
    assert report.valid and report.warnings == []
    refused = check(bucket, admin, sse="aws:kms", kms_key_arn=KMS_KEY)
    assert "statement 'RequireAES256' explicitly denies" in only(refused.problems, "policy")


@pytest.mark.parametrize(("key", "expected"), [
    (None, "sse aws:kms needs a KMS key: set kms_key_arn (--kms-key-arn) to the full key ARN"),
    ("alias/reports", "is an alias, and aliases are refused"),
    (f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/reports", "is an alias, and aliases are refused"),
    ("1234abcd-12ab-34cd-56ef-1234567890ab", "is not a full key ARN"),
    (KMS_KEY.replace(REGION, "eu-west-1"),
     "is in Region eu-west-1, but the account's profile is in us-east-1"),
])
def test_kms_key_must_be_a_full_arn_in_the_region(
        make_bucket: MakeBucket, admin: Any, key: str | None, expected: str) -> None:
    bucket = make_bucket(documented)
    report = check(bucket, admin, sse="aws:kms", kms_key_arn=key)
    assert expected in only(report.problems, "kms")
    assert messages(report.problems, "policy") == []


def test_kms_key_in_the_region_is_accepted(make_bucket: MakeBucket, admin: Any) -> None:
    bucket = make_bucket(documented)
    assert check(bucket, admin, sse="aws:kms", kms_key_arn=KMS_KEY).valid


def test_unreachable_s3_refuses_rather_than_a_false_valid() -> None:
    client = client_of(f"http://127.0.0.1:{free_port()}")
    report = check("kiro-loc-anything", client)
    client.close()
    assert not report.valid and report.region is None and report.manifest_allowed is None
    assert [f.check for f in report.problems] == ["s3"]
    assert report.problems[0].message == (
        "could not reach S3 to check bucket kiro-loc-anything (EndpointConnectionError): the "
        "location cannot be verified now; try again once S3 answers")


# --- what real S3 answers and moto does not (botocore's Stubber) ------------------------------


def region_meta(region: str) -> dict[str, Any]:
    return {"HTTPHeaders": {"x-amz-bucket-region": region}}


@pytest.fixture
def stubbed() -> Iterator[tuple[Any, Stubber]]:
    client = client_of("http://127.0.0.1:9")  # never reached: the stubber answers
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()
    client.close()


def test_access_denied_still_reads_the_region_header(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_client_error("head_bucket", "403", "Forbidden", 403,
                             response_meta=region_meta("eu-west-1"))
    stubber.add_client_error("get_bucket_policy", "AccessDenied", "Access Denied", 403)
    report = check("denied-bucket", client)
    assert report.region == "eu-west-1"
    assert "is in Region eu-west-1" in only(report.problems, "region")
    assert only(report.warnings, "owner") == (
        "the owner of bucket denied-bucket is not verified (access to it is denied to these "
        "credentials (HeadBucket needs s3:ListBucket)); delivery enforces the owner with "
        "ExpectedBucketOwner")
    assert messages(report.warnings, "region") == []
    assert only(report.warnings, "policy") == (
        "bucket policy not verified: reading the policy of bucket denied-bucket is denied to "
        "these credentials (it needs s3:GetBucketPolicy); pass --policy-file to check a copy")


def test_without_list_bucket_the_policy_is_still_read(stubbed: tuple[Any, Stubber]) -> None:
    """HeadBucket needs s3:ListBucket; an admin allowed only s3:GetBucketPolicy still gets
    the policy checked."""
    client, stubber = stubbed
    stubber.add_client_error("head_bucket", "403", "Forbidden", 403,
                             response_meta=region_meta(REGION))
    stubber.add_response("get_bucket_policy",
                         {"Policy": json.dumps(documented("listless-bucket"))})
    report = check("listless-bucket", client)
    assert report.valid and report.problems == []
    assert messages(report.warnings, "policy") == []
    assert "not verified" in only(report.warnings, "owner")


def test_server_error_refuses(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_client_error("head_bucket", "InternalError", "oops", 500)
    report = check("some-bucket", client, policy=documented("some-bucket"))
    assert not report.valid and report.region is None
    assert only(report.problems, "s3").startswith(
        "could not reach S3 to check bucket some-bucket (InternalError)")


def test_region_from_location_and_policy_read_denied(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_response("head_bucket", {})
    stubber.add_response("get_bucket_location", {"LocationConstraint": "EU"})
    stubber.add_response("head_bucket", {},
                         {"Bucket": "b-eu", "ExpectedBucketOwner": ACCOUNT})
    stubber.add_client_error("get_bucket_policy", "AccessDenied", "Access Denied", 403)
    report = check("b-eu", client)
    assert report.region == "eu-west-1"
    assert "is in Region eu-west-1" in only(report.problems, "region")
    assert only(report.warnings, "policy") == (
        "bucket policy not verified: reading the policy of bucket b-eu is denied to these "
        "credentials (it needs s3:GetBucketPolicy); pass --policy-file to check a copy")


def test_a_policy_over_20_kib_is_refused_and_a_star_pattern_is_quick(
        make_bucket: MakeBucket, blind: Any) -> None:
    """#13: a pasted policy with "arn:aws:s3:::******Z" took 34 s of regex backtracking."""
    bucket = make_bucket()
    stars = {"Effect": "Allow", "Principal": "*", "Action": "s3:PutObject",
             "Resource": "arn:aws:s3:::" + "*" * 40 + "Z"}
    policy = with_statements(documented(bucket), *[stars] * 100)
    start = time.perf_counter()
    report = check(bucket, blind, policy=json.dumps(policy, indent=4))  # whitespace not counted
    assert time.perf_counter() - start < 2  # mostly moto's HeadBucket
    assert report.valid
    big = with_statements(documented(bucket), *[stars] * 300)
    size = len(json.dumps(big, separators=(",", ":")))
    for copy_ in (big, json.dumps(big), json.dumps(big).encode()):
        assert only(check(bucket, blind, policy=copy_).problems, "policy") == (
            f"the policy is {size:,} bytes without whitespace; S3 bucket policies are at most "
            "20,480 bytes (20 KiB), so it cannot be the bucket's: shorten it (fewer or merged "
            "statements)")
