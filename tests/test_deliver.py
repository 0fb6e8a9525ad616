"""deliver: the destination contract on a real folder and on moto's S3 server over real HTTP."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import random
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions as bex
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import free_port
from kiro_activity.deliver import (
    Backoff,
    Destination,
    LocalDestination,
    PutResult,
    S3Destination,
    classify,
    classify_os_error,
    parse_s3_uri,
    put_with_retries,
)
from kiro_activity.errors import (
    ConfigurationDeliveryError,
    DeliveryError,
    TransientDeliveryError,
)

ACCOUNT = "111122223333"
KMS_ARN = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
KEY = (f"reports/AWSLogs/{ACCOUNT}/KiroLogs/by_user_analytic/us-east-1/2026/11/30/00/"
       f"{ACCOUNT}_by_user_analytic_202611300000.csv")


@pytest.fixture(autouse=True)
def _no_real_aws(aws_env: None) -> None:
    """Every test here runs with fake credentials (see conftest.aws_env)."""


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, moto_url: str) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    return moto_url


@pytest.fixture
def admin(s3_env: str) -> Iterator[Any]:
    """A plain boto3 client (the test's own eyes on the bucket)."""
    client = boto3.session.Session().client("s3", region_name="us-east-1")
    yield client
    client.close()


@pytest.fixture
def bucket(admin: Any) -> str:
    name = f"kiro-test-{uuid.uuid4().hex[:12]}"
    admin.create_bucket(Bucket=name)
    return name


@pytest.fixture
def closers() -> Iterator[list[Callable[[], None]]]:
    todo: list[Callable[[], None]] = []
    yield todo
    for close in todo:
        close()


@pytest.fixture
def make_s3(s3_env: str, closers: list[Callable[[], None]]) -> Callable[..., S3Destination]:
    """S3Destinations whose default boto3 clients find moto through AWS_ENDPOINT_URL_S3."""
    def make(bucket: str, **kw: Any) -> S3Destination:
        kw.setdefault("expected_owner", ACCOUNT)
        dest = S3Destination(bucket, region="us-east-1", **kw)
        closers.append(dest.close)
        return dest
    return make


def down_s3(monkeypatch: pytest.MonkeyPatch, closers: list[Callable[[], None]],
            bucket: str) -> S3Destination:
    """An S3Destination whose endpoint is a closed port (a server that is down)."""
    with monkeypatch.context() as m:
        m.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
        dest = S3Destination(bucket, expected_owner=ACCOUNT, region="us-east-1")
    closers.append(dest.close)
    return dest


# --- the contract, on both destinations ---------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def dest_and_reader(request: pytest.FixtureRequest,
                    tmp_path: Path) -> tuple[Destination, Callable[[str], bytes]]:
    if request.param == "local":
        return LocalDestination(tmp_path / "out"), lambda k: (tmp_path / "out" / k).read_bytes()
    admin = request.getfixturevalue("admin")
    name = request.getfixturevalue("bucket")
    dest = request.getfixturevalue("make_s3")(name)
    return dest, lambda k: bytes(admin.get_object(Bucket=name, Key=k)["Body"].read())


def test_contract(dest_and_reader: tuple[Destination, Callable[[str], bytes]]) -> None:
    dest, read = dest_and_reader
    first, second, third = b"UserId,Date\nu1,11-30-2026\n", b"different\n", b"replaced\n"
    assert dest.put(KEY, first) is PutResult.CREATED
    assert read(KEY) == first
    assert dest.put(KEY, second) is PutResult.ALREADY_THERE
    assert read(KEY) == first
    assert dest.put(KEY, third, replace=True) is PutResult.REPLACED
    assert read(KEY) == third
    assert dest.put("new/deeply/nested/x.json", b"{}", replace=True,
                    content_type="application/json") is PutResult.REPLACED
    assert read("new/deeply/nested/x.json") == b"{}"
    assert dest.put("top.csv", b"") is PutResult.CREATED
    assert read("top.csv") == b""
    assert dest.describe()


def test_local_leaves_no_temp_files(tmp_path: Path) -> None:
    dest = LocalDestination(tmp_path)
    dest.put("a/b.csv", b"1")
    dest.put("a/b.csv", b"2")
    dest.put("a/b.csv", b"3", replace=True)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.csv"]
    assert dest.describe() == f"folder {tmp_path}"


def test_local_files_get_ordinary_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        LocalDestination(tmp_path).put("a/b.csv", b"1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "b.csv").stat().st_mode) == 0o644


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/../../b", "", "a/", "./a", "a/./b"])
def test_local_refuses_bad_keys(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="refusing object key"):
        LocalDestination(tmp_path / "out").put(key, b"x")
    assert not (tmp_path / "out").exists()


def test_local_refuses_a_symlink_out(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="leads outside"):
        LocalDestination(tmp_path / "out").put("link/x.csv", b"x")


def test_local_root_that_is_a_file_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "root").write_bytes(b"not a folder")
    with pytest.raises(ConfigurationDeliveryError) as info:
        LocalDestination(tmp_path / "root").put("a/b.csv", b"x")
    assert info.value.code == "ENOTDIR"
    assert "root" in info.value.message


@pytest.mark.parametrize(("err", "cls", "code"), [
    (errno.ENOSPC, TransientDeliveryError, "ENOSPC"),
    (errno.EIO, TransientDeliveryError, "EIO"),
    (errno.EDQUOT, TransientDeliveryError, "EDQUOT"),
    (errno.EACCES, ConfigurationDeliveryError, "EACCES"),
    (errno.EPERM, ConfigurationDeliveryError, "EPERM"),
    (errno.EROFS, ConfigurationDeliveryError, "EROFS"),
    (errno.ENOTDIR, ConfigurationDeliveryError, "ENOTDIR"),
])
def test_classify_os_error(err: int, cls: type[DeliveryError], code: str) -> None:
    out = classify_os_error(OSError(err, "boom"), "'k' under /r")
    assert type(out) is cls
    assert out.code == code
    assert "'k' under /r" in out.message


# --- S3 on the wire -------------------------------------------------------------------------------


def capture(dest: S3Destination) -> list[dict[str, str]]:
    seen: list[dict[str, str]] = []

    def hook(request: Any, **_: Any) -> None:
        seen.append({k.lower(): v.decode() if isinstance(v, bytes) else str(v)
                     for k, v in request.headers.items()})
    dest.client.meta.events.register("before-send.s3.PutObject", hook)
    return seen


def test_wire_headers_aes256(make_s3: Callable[..., S3Destination], bucket: str,
                             admin: Any) -> None:
    dest = make_s3(bucket)
    seen = capture(dest)
    data = b"a,b\n1,2\n"
    assert dest.put(KEY, data) is PutResult.CREATED
    assert dest.put(KEY, data, replace=True) is PutResult.REPLACED
    conditional, replacing = seen
    assert conditional["x-amz-expected-bucket-owner"] == ACCOUNT
    assert conditional["if-none-match"] == "*"
    assert conditional["x-amz-server-side-encryption"] == "AES256"
    assert "x-amz-server-side-encryption-aws-kms-key-id" not in conditional
    assert conditional["content-type"] == "text/csv"
    assert conditional["x-amz-checksum-sha256"] == base64.b64encode(
        hashlib.sha256(data).digest()).decode()
    assert "if-none-match" not in replacing
    assert replacing["x-amz-expected-bucket-owner"] == ACCOUNT
    assert admin.head_object(Bucket=bucket, Key=KEY)["ServerSideEncryption"] == "AES256"


def test_wire_headers_kms(make_s3: Callable[..., S3Destination], bucket: str) -> None:
    dest = make_s3(bucket, sse="aws:kms", kms_key_arn=KMS_ARN)
    seen = capture(dest)
    assert dest.put(KEY, b"x", content_type="application/json") is PutResult.CREATED
    [headers] = seen
    assert headers["x-amz-server-side-encryption"] == "aws:kms"
    assert headers["x-amz-server-side-encryption-aws-kms-key-id"] == KMS_ARN
    assert headers["x-amz-expected-bucket-owner"] == ACCOUNT
    assert headers["if-none-match"] == "*"
    assert headers["content-type"] == "application/json"
    assert headers["amz-sdk-request"].endswith("max=1")  # botocore itself does not retry


@pytest.mark.parametrize(("kw", "match"), [
    ({"sse": "aws:kms"}, "full KMS key ARN"),
    ({"sse": "aws:kms", "kms_key_arn": "alias/reports"}, "full KMS key ARN"),
    ({"sse": "none"}, "sse must be"),
    ({"expected_owner": "12345"}, "12-digit"),
])
def test_s3_destination_refuses_bad_settings(kw: dict[str, str], match: str) -> None:
    settings = {"expected_owner": ACCOUNT, **kw}
    with pytest.raises(ValueError, match=match):
        S3Destination("amzn-s3-demo-bucket", client=object(), **settings)


def test_missing_bucket_is_configuration(make_s3: Callable[..., S3Destination]) -> None:
    dest = make_s3("kiro-no-such-bucket")
    with pytest.raises(ConfigurationDeliveryError) as info:
        dest.put(KEY, b"x")
    assert info.value.code == "NoSuchBucket"
    assert "s3://kiro-no-such-bucket/reports/" in info.value.message
    assert "404" in info.value.message


def test_bucket_policy_deny_is_configuration(make_s3: Callable[..., S3Destination], bucket: str,
                                             admin: Any) -> None:
    admin.put_bucket_policy(Bucket=bucket, Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
                       "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
    with pytest.raises(ConfigurationDeliveryError) as info:
        make_s3(bucket).put(KEY, b"x")
    assert info.value.code == "AccessDenied"
    assert "403" in info.value.message
    assert "bucket policy" in info.value.message


def test_server_down_is_transient(monkeypatch: pytest.MonkeyPatch, bucket: str,
                                  closers: list[Callable[[], None]]) -> None:
    dest = down_s3(monkeypatch, closers, bucket)
    with pytest.raises(TransientDeliveryError) as info:
        dest.put(KEY, b"x")
    assert info.value.code == "EndpointConnectionError"
    assert bucket in info.value.message


def client_error(status: int, code: str, message: str = "msg") -> bex.ClientError:
    return bex.ClientError({"Error": {"Code": code, "Message": message},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


CONFIGURATION = [
    (403, "AccessDenied"), (404, "NoSuchBucket"), (403, "InvalidBucketOwner"),
    (403, "AllAccessDisabled"), (400, "KMS.DisabledException"), (400, "KMS.NotFoundException"),
    (403, "KMS.AccessDeniedException"), (403, "KMSAccessDenied"),
    (400, "KMS.KMSInvalidStateException"), (301, "PermanentRedirect"),
    (400, "AuthorizationHeaderMalformed"), (400, "IllegalLocationConstraintException"),
    (403, "InvalidAccessKeyId"), (403, "SignatureDoesNotMatch"), (400, "ExpiredToken"),
    (400, "InvalidArgument"), (400, "InvalidRequest"), (418, "SomethingNew"), (405, "")]
TRANSIENT = [
    (503, "SlowDown"), (400, "Throttling"), (400, "ThrottlingException"), (429, "Whatever"),
    (400, "RequestTimeout"), (500, "InternalError"), (503, "ServiceUnavailable"),
    (502, "BadGateway"), (504, ""), (409, "ConditionalRequestConflict"), (409, "OperationAborted")]


@pytest.mark.parametrize(("status", "code"), CONFIGURATION)
def test_classify_configuration(status: int, code: str) -> None:
    err = classify(client_error(status, code), bucket="bkt", key="some/key.csv")
    assert type(err) is ConfigurationDeliveryError
    assert err.code == (code or f"HTTP{status}")
    assert f"s3://bkt/some/key.csv failed: HTTP {status}" in err.message


@pytest.mark.parametrize(("status", "code"), TRANSIENT)
def test_classify_transient(status: int, code: str) -> None:
    err = classify(client_error(status, code), bucket="bkt", key="k")
    assert type(err) is TransientDeliveryError
    assert err.code == (code or f"HTTP{status}")


@pytest.mark.parametrize(("error", "cls"), [
    (bex.EndpointConnectionError(endpoint_url="http://x"), TransientDeliveryError),
    (bex.ConnectionClosedError(endpoint_url="http://x"), TransientDeliveryError),
    (bex.ReadTimeoutError(endpoint_url="http://x"), TransientDeliveryError),
    (bex.ConnectTimeoutError(endpoint_url="http://x"), TransientDeliveryError),
    (bex.ProxyConnectionError(proxy_url="http://proxy"), TransientDeliveryError),
    (bex.HTTPClientError(error="reset"), TransientDeliveryError),
    (ConnectionResetError(errno.ECONNRESET, "reset"), TransientDeliveryError),
    (bex.NoCredentialsError(), ConfigurationDeliveryError),
    (bex.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
     ConfigurationDeliveryError),
    (bex.ParamValidationError(report="bad"), ConfigurationDeliveryError),
])
def test_classify_botocore_errors(error: Exception, cls: type[DeliveryError]) -> None:
    out = classify(error, bucket="bkt", key="k")
    assert type(out) is cls
    assert out.code == type(error).__name__


def test_classify_bare_status_and_passthrough() -> None:
    assert classify(client_error(403, "403", "Forbidden")).code == "AccessDenied"
    assert type(classify(client_error(503, "503"))) is TransientDeliveryError
    done = TransientDeliveryError("x", code="Y")
    assert classify(done) is done


def test_classify_never_shows_credentials() -> None:
    err = bex.ClientError({"Error": {"Code": "InvalidAccessKeyId", "AWSAccessKeyId":
                                     "AKIAIOSFODNN7EXAMPLE", "Message": "The AWS Access Key Id "
                                     "AKIAIOSFODNN7EXAMPLE does not exist"},
                           "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject")
    out = classify(err, bucket="bkt", key="k")
    assert "AKIAIOSFODNN7EXAMPLE" not in out.message
    assert "credentials" in out.message


def test_s3_412_and_409() -> None:
    class Refusing:
        def __init__(self, error: Exception) -> None:
            self.error = error

        def put_object(self, **_: Any) -> None:
            raise self.error

    dest = S3Destination("bkt", expected_owner=ACCOUNT,
                         client=Refusing(client_error(412, "PreconditionFailed")))
    assert dest.put("k", b"x") is PutResult.ALREADY_THERE
    # a 409 means a concurrent write was in flight: retry (and then see 412 or succeed)
    dest.client = Refusing(client_error(409, "ConditionalRequestConflict"))
    with pytest.raises(TransientDeliveryError):
        dest.put("k", b"x")


@pytest.mark.parametrize(("uri", "out"), [
    ("s3://bucket/some/prefix/", ("bucket", "some/prefix")),
    ("s3://bucket/p", ("bucket", "p")),
    ("s3://bucket", ("bucket", "")),
])
def test_parse_s3_uri(uri: str, out: tuple[str, str]) -> None:
    assert parse_s3_uri(uri) == out


@pytest.mark.parametrize("uri", ["https://bucket/p", "bucket/p", "s3://", "s3:///p"])
def test_parse_s3_uri_refuses(uri: str) -> None:
    with pytest.raises(ValueError, match="s3://"):
        parse_s3_uri(uri)


# --- retries --------------------------------------------------------------------------------------


class Switching:
    """Sends the first ``failures`` puts to ``down``, the rest to ``up``."""

    def __init__(self, down: Destination, up: Destination, failures: int) -> None:
        self.down, self.up, self.failures, self.calls = down, up, failures, 0

    def put(self, key: str, data: bytes, *, replace: bool = False,
            content_type: str = "text/csv") -> PutResult:
        self.calls += 1
        target = self.down if self.calls <= self.failures else self.up
        return target.put(key, data, replace=replace, content_type=content_type)

    def describe(self) -> str:
        return self.up.describe()


def test_outage_that_ends(monkeypatch: pytest.MonkeyPatch, make_s3: Callable[..., S3Destination],
                          bucket: str, admin: Any, closers: list[Callable[[], None]]) -> None:
    dest = Switching(down_s3(monkeypatch, closers, bucket), make_s3(bucket), failures=3)
    errors: list[DeliveryError] = []
    slept: list[float] = []
    backoff = Backoff(base=1.0, cap=5.0)
    result = put_with_retries(dest, KEY, b"data", attempts=10, backoff=backoff,
                              sleep=slept.append, rng=random.Random(7), on_error=errors.append)
    assert result is PutResult.CREATED
    assert [type(e) for e in errors] == [TransientDeliveryError] * 3
    rng = random.Random(7)
    assert slept == [backoff.delay(i, rng) for i in range(3)]
    assert all(0 <= s <= 5.0 for s in slept)
    assert admin.get_object(Bucket=bucket, Key=KEY)["Body"].read() == b"data"


def test_configuration_errors_are_retried_until_the_admin_fixes_it(
        make_s3: Callable[..., S3Destination], admin: Any) -> None:
    name = f"kiro-later-{uuid.uuid4().hex[:12]}"
    errors: list[DeliveryError] = []

    def on_error(err: DeliveryError) -> None:
        errors.append(err)
        if len(errors) == 2:  # the admin sees the error and creates the bucket
            admin.create_bucket(Bucket=name)

    result = put_with_retries(make_s3(name), KEY, b"x", attempts=5, backoff=Backoff(),
                              sleep=lambda _: None, rng=random.Random(1), on_error=on_error)
    assert result is PutResult.CREATED
    assert [(type(e), e.code) for e in errors] == [(ConfigurationDeliveryError, "NoSuchBucket")] * 2


def test_gives_up_after_attempts(monkeypatch: pytest.MonkeyPatch, bucket: str,
                                 closers: list[Callable[[], None]]) -> None:
    errors: list[DeliveryError] = []
    slept: list[float] = []
    with pytest.raises(TransientDeliveryError) as info:
        put_with_retries(down_s3(monkeypatch, closers, bucket), KEY, b"x", attempts=4,
                         backoff=Backoff(base=0.5, cap=2.0), sleep=slept.append,
                         rng=random.Random(3), on_error=errors.append)
    assert len(errors) == 4
    assert info.value is errors[-1]
    assert len(slept) == 3
    assert all(0 <= s <= 2.0 for s in slept)


def test_retries_already_there_is_success(tmp_path: Path) -> None:
    dest = LocalDestination(tmp_path)
    dest.put("k.csv", b"first")
    got = put_with_retries(dest, "k.csv", b"first", attempts=1, backoff=Backoff(),
                           sleep=lambda _: None, rng=random.Random(0))
    assert got is PutResult.ALREADY_THERE
    with pytest.raises(ValueError, match="attempts"):
        put_with_retries(dest, "k.csv", b"x", attempts=0, backoff=Backoff(),
                         sleep=lambda _: None, rng=random.Random(0))


@given(base=st.floats(0, 100), cap=st.floats(0, 10_000), factor=st.floats(1, 10),
       attempt=st.integers(0, 5_000), seed=st.integers(0, 2**32))
def test_backoff_grows_and_never_exceeds_cap(base: float, cap: float, factor: float,
                                             attempt: int, seed: int) -> None:
    backoff = Backoff(base=base, cap=cap, factor=factor)
    assert backoff.ceiling(attempt) <= backoff.ceiling(attempt + 1) <= cap
    assert 0 <= backoff.delay(attempt, random.Random(seed)) <= backoff.ceiling(attempt)


def test_backoff_defaults_and_refusals() -> None:
    backoff = Backoff()
    assert [backoff.ceiling(i) for i in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff.ceiling(100) == 900.0
    assert Backoff(base=0.0).ceiling(10_000) == 0.0
    with pytest.raises(ValueError):
        Backoff(factor=0.5)
    with pytest.raises(ValueError):
        backoff.ceiling(-1)
