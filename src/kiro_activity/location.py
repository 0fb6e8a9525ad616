"""Is an S3 location fit for an account's reports? (docs/location-checks.md).

``check_location`` runs the checks in order and lists every finding:

1. the URI (:func:`uri_problems`, pure; when it fails nothing else runs);
2. the bucket's Region (``HeadBucket``: the ``x-amz-bucket-region`` header) is the profile's;
3. the bucket's owner is the account (``HeadBucket`` with ``ExpectedBucketOwner``);
4. the bucket policy lets the report writer put the CSV keys and the manifest key
   (:func:`kiro_activity.policy.evaluate`), read from the bucket or given by the admin.

AWS is reached with the administrator's credentials. A failure to reach AWS never raises and never
passes for "valid": what could not be verified becomes a warning that says so. A *problem* refuses
the location; a *warning* is saved and shown.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from .metrics import DEFAULT_LAYOUT
from .policy import Request, Verdict, evaluate
from .report import csv_key, manifest_key
from .s3uri import kms_problems, split_location, uri_problems
from .store import Account

__all__ = [
    "DEFAULT_WRITER",
    "Finding",
    "LocationReport",
    "check_location",
    "documented_policy",
    "uri_problems",
]

DEFAULT_WRITER = "q.amazonaws.com"
_SSE_KEY = "s3:x-amz-server-side-encryption"
_KMS_KEY_ID = "s3:x-amz-server-side-encryption-aws-kms-key-id"
#: S3's limit on a bucket policy (20 KiB, counted here without insignificant whitespace); a
#: larger one cannot be the bucket's, and is not evaluated (evaluation time grows with its size)
POLICY_MAX_BYTES = 20 * 1024


@dataclass(frozen=True)
class Finding:
    """One finding: which check, and a message naming what is wrong and how to fix it."""

    check: str  # "uri" | "region" | "owner" | "policy" | "kms"
    message: str


@dataclass(frozen=True)
class LocationReport:
    """Everything the checks found for one location (any problem: the location is refused)."""

    problems: list[Finding]
    warnings: list[Finding]
    #: whether the policy lets the writer put the manifest; None: the policy was not evaluated
    manifest_allowed: bool | None = None
    region: str | None = None

    @property
    def valid(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "problems": [{"check": f.check, "message": f.message} for f in self.problems],
            "warnings": [{"check": f.check, "message": f.message} for f in self.warnings],
            "manifest_allowed": self.manifest_allowed,
            "region": self.region,
        }


# --- the documented policy and the request the writer makes -----------------------------------


def _partition(account: Account) -> str:
    parts = account.profile_arn.split(":")
    return parts[1] if len(parts) > 2 and parts[1].startswith("aws") else "aws"


def documented_policy(bucket: str, prefix: str, account: Account,
                      writer: str = DEFAULT_WRITER) -> dict[str, Any]:
    """The bucket policy of the product documentation for this location, ready to copy."""
    arn = _partition(account)
    principal = {"AWS": writer} if writer.startswith("arn:") else {"Service": writer}
    statement = {
        "Sid": "QDeveloperLogsWrite",
        "Effect": "Allow",
        "Principal": principal,
        "Action": "s3:PutObject",
        "Resource": f"arn:{arn}:s3:::{bucket}/{prefix.strip('/')}/*",
        "Condition": {
            "StringEquals": {"aws:SourceAccount": account.account_id},
            "ArnLike": {"aws:SourceArn":
                        f"arn:{arn}:codewhisperer:{account.region}:{account.account_id}:*"},
        },
    }
    return {"Version": "2012-10-17", "Statement": [statement]}


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True)
class _Target:
    """The location being checked and how the writer would write to it."""

    bucket: str
    prefix: str
    account: Account
    layout: str
    sse: str
    kms_key_arn: str | None
    writer: str
    day: date

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}/"

    @property
    def statement(self) -> str:
        policy = documented_policy(self.bucket, self.prefix, self.account, self.writer)
        return _compact(policy["Statement"][0])

    def key_pair(self) -> tuple[str, str]:
        a = self.account
        return (csv_key(self.prefix, a.account_id, a.region, self.day, self.layout, 1),
                manifest_key(self.prefix, a.account_id, a.region, self.day))

    def request(self, key: str) -> Request:
        context = {"aws:SourceAccount": self.account.account_id,
                   "aws:SourceArn": self.account.profile_arn,
                   "aws:SecureTransport": "true", _SSE_KEY: self.sse}
        if self.sse == "aws:kms" and self.kms_key_arn:
            context[_KMS_KEY_ID] = self.kms_key_arn
        resource = f"arn:{_partition(self.account)}:s3:::{self.bucket}/{key}"
        return Request("s3:PutObject", resource, self.writer, context)


@dataclass
class _Findings:
    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    manifest_allowed: bool | None = None
    region: str | None = None

    def problem(self, check: str, message: str) -> None:
        if all(f.message != message for f in self.problems):
            self.problems.append(Finding(check, message))

    def warn(self, check: str, message: str) -> None:
        if all(f.message != message for f in self.warnings):
            self.warnings.append(Finding(check, message))

    def report(self) -> LocationReport:
        return LocationReport(list(self.problems), list(self.warnings), self.manifest_allowed,
                              self.region)


# --- checks 2 and 3: Region and owner ---------------------------------------------------------


@dataclass(frozen=True)
class _Probe:
    state: str  # "ok" | "missing" | "denied" | "error"
    region: str | None = None
    detail: str = ""


def _code(exc: ClientError) -> tuple[str, int]:
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return str(exc.response.get("Error", {}).get("Code") or f"HTTP {status}"), status


def _region_header(response: Mapping[str, Any]) -> str | None:
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return headers.get("x-amz-bucket-region") or None


def _head(s3: Any, bucket: str, owner: str | None = None) -> _Probe:
    kwargs = {"Bucket": bucket, **({"ExpectedBucketOwner": owner} if owner else {})}
    try:
        response = s3.head_bucket(**kwargs)
    except NoCredentialsError:
        return _Probe("denied", None, "no AWS credentials were found")
    except ClientError as exc:
        code, status = _code(exc)
        region = _region_header(exc.response)
        if status == 404 or code == "NoSuchBucket":
            return _Probe("missing")
        if status == 403:
            return _Probe("denied", region, "access to it is denied to these credentials "
                                            "(HeadBucket needs s3:ListBucket)")
        return _Probe("error", region, code)
    except BotoCoreError as exc:
        return _Probe("error", None, type(exc).__name__)
    return _Probe("ok", _region_header(response))


def _location_region(s3: Any, bucket: str) -> str | None:
    """The Region from GetBucketLocation (None and "" mean us-east-1, "EU" eu-west-1)."""
    try:
        constraint = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    except (ClientError, BotoCoreError):
        return None
    if not constraint:
        return "us-east-1"
    return "eu-west-1" if constraint == "EU" else str(constraint)


def _unverified(what: str, t: _Target, probe: _Probe) -> str:
    if probe.state == "error":
        return f"could not reach S3 to verify the {what} of bucket {t.bucket}: {probe.detail}"
    return f"the {what} of bucket {t.bucket} is not verified ({probe.detail})"


def _unreachable(found: _Findings, t: _Target, detail: str) -> None:
    """S3 did not answer (network, 5xx, throttling): nothing is verified, so nothing passes."""
    found.problem("s3", f"could not reach S3 to check bucket {t.bucket} ({detail}): the "
                        "location cannot be verified now; try again once S3 answers")


def _not_verified(found: _Findings, t: _Target, probe: _Probe) -> None:
    if probe.state == "error":
        _unreachable(found, t, probe.detail)
        return
    if found.region is None:
        found.warn("region", f"{_unverified('Region', t, probe)}; delivery reports a Region "
                             "mismatch as a configuration error")
    found.warn("owner", f"{_unverified('owner', t, probe)}; delivery enforces the owner with "
                        "ExpectedBucketOwner")


def _check_owner(found: _Findings, s3: Any, t: _Target) -> str:
    owner = _head(s3, t.bucket, t.account.account_id)
    if owner.state == "denied":
        found.problem("owner", f"cross-account buckets are not supported: bucket {t.bucket} is "
                               f"not owned by account {t.account.account_id}; use a bucket of "
                               f"account {t.account.account_id}")
        return "foreign"
    if owner.state == "ok":
        return "ok"
    detail = "the bucket no longer exists" if owner.state == "missing" else owner.detail
    _unreachable(found, t, detail)
    return "error"


def _check_bucket(found: _Findings, s3: Any, t: _Target) -> str:
    """Checks 2 and 3; the access found: ok, missing, denied, foreign or error."""
    probe = _head(s3, t.bucket)
    if probe.state == "missing":
        found.problem("uri", f"bucket {t.bucket} does not exist: create it in "
                             f"{t.account.region} with account {t.account.account_id}, or "
                             "name an existing bucket")
        return "missing"
    found.region = probe.region or (
        _location_region(s3, t.bucket) if probe.state == "ok" else None)
    if found.region is not None and found.region != t.account.region:
        found.problem("region", f"bucket {t.bucket} is in Region {found.region}, but the "
                                f"account's profile is in {t.account.region}: reports go to a "
                                f"bucket in the profile's Region; use a bucket in "
                                f"{t.account.region}")
    if probe.state != "ok":
        _not_verified(found, t, probe)
        return probe.state
    return _check_owner(found, s3, t)


# --- check 4: the bucket policy ---------------------------------------------------------------


def _parse_policy(found: _Findings,
                  raw: Mapping[str, Any] | str | bytes) -> Mapping[str, Any] | None:
    if not isinstance(raw, Mapping | str | bytes):
        found.problem("policy", f"the policy must be a JSON object or JSON text, not "
                                f"{type(raw).__name__}")
        return None
    if not isinstance(raw, Mapping) and len(raw) > 50 * POLICY_MAX_BYTES:
        _too_large(found, len(raw.encode() if isinstance(raw, str) else raw))
        return None
    try:
        doc = raw if isinstance(raw, Mapping) else json.loads(
            raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        size = len(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())
    except RecursionError:
        found.problem("policy", "the policy is nested too deeply to be a bucket policy")
        return None
    except UnicodeDecodeError as exc:
        found.problem("policy", f"the policy is not valid UTF-8 (byte {exc.start}): "
                                "save it as UTF-8 JSON")
        return None
    except json.JSONDecodeError as exc:
        found.problem("policy", f"the policy is not valid JSON: {exc.msg} at line {exc.lineno} "
                                f"column {exc.colno}; fix the JSON")
        return None
    except (TypeError, ValueError) as exc:
        found.problem("policy", f"the policy is not JSON: {exc}")
        return None
    if size > POLICY_MAX_BYTES:
        _too_large(found, size)
        return None
    if not isinstance(doc, Mapping):
        found.problem("policy", "the policy must be a JSON object with a Statement list")
        return None
    return doc


def _too_large(found: _Findings, size: int) -> None:
    found.problem("policy", f"the policy is {size:,} bytes without whitespace; S3 bucket "
                            f"policies are at most {POLICY_MAX_BYTES:,} bytes (20 KiB), so it "
                            "cannot be the bucket's: shorten it (fewer or merged statements)")


def _read_policy(found: _Findings, s3: Any, t: _Target,
                 quiet: bool) -> tuple[Mapping[str, Any] | None, bool]:
    """The bucket's own policy, and whether S3 told us what it is (a policy, or none at all).
    ``quiet``: a copy was given, so a read that is not allowed is not worth a warning."""
    try:
        text = s3.get_bucket_policy(Bucket=t.bucket,
                                    ExpectedBucketOwner=t.account.account_id)["Policy"]
    except ClientError as exc:
        code, status = _code(exc)
        if code == "NoSuchBucketPolicy":
            policy = documented_policy(t.bucket, t.prefix, t.account, t.writer)
            found.problem("policy", f"bucket {t.bucket} has no bucket policy, so the report "
                                    f"writer {t.writer} cannot put objects; put this bucket "
                                    f"policy: {_compact(policy)}")
            return None, True
        if code == "AccessDenied" or status == 403:
            if not quiet:
                found.warn("policy", f"bucket policy not verified: reading the policy of bucket "
                                     f"{t.bucket} is denied to these credentials (it needs "
                                     "s3:GetBucketPolicy); pass --policy-file to check a copy")
        else:
            _unreachable(found, t, code)
        return None, False
    except NoCredentialsError:
        if not quiet:
            found.warn("policy", "bucket policy not verified: no AWS credentials were found; "
                                 "pass --policy-file to check a copy")
        return None, False
    except BotoCoreError as exc:
        _unreachable(found, t, type(exc).__name__)
        return None, False
    return _parse_policy(found, text), True


def _csv_refused(t: _Target, verdict: Verdict) -> str:
    denies = any(" denies " in r or " may deny " in r for r in verdict.reasons)
    fix = ("remove or narrow the statement that denies it, and make sure the policy has this "
           "statement" if denies else "add this statement to the bucket policy")
    return (f"the bucket policy does not let {t.writer} put report files under {t.where} "
            f"({'; '.join(verdict.reasons)}): {fix}: {t.statement}")


def _evaluate(found: _Findings, t: _Target, policy: Mapping[str, Any]) -> None:
    known = (_SSE_KEY, _KMS_KEY_ID)
    csv, manifest = (evaluate(policy, t.request(key), known_keys=known) for key in t.key_pair())
    for warning in (*csv.warnings, *manifest.warnings):
        found.warn("policy", warning)
    found.manifest_allowed = manifest.allowed
    if not csv.allowed:
        found.problem("policy", _csv_refused(t, csv))
    elif not manifest.allowed:
        found.warn("policy", f"manifests will not be written: the policy does not allow "
                             f"{t.key_pair()[1]} ({'; '.join(manifest.reasons)}); to get them, "
                             f"allow s3:PutObject on everything under {t.where}: "
                             f"{t.statement}")


def _check_policy(found: _Findings, s3: Any, t: _Target,
                  given: Mapping[str, Any] | str | bytes | None, access: str) -> None:
    """The bucket's own policy when S3 shows it; the given copy only when it cannot be read
    (a copy never overrides the policy the bucket really has)."""
    if access in ("missing", "error"):
        return
    if access in ("ok", "denied") and s3 is not None:
        policy, known = _read_policy(found, s3, t, quiet=given is not None)
        if known:
            if policy is not None:
                _evaluate(found, t, policy)
            if given is not None and _parse_policy(_Findings(), given) != policy:
                found.warn("policy", f"the policy given is not the one bucket {t.bucket} has; "
                                     "the bucket's own policy was checked: apply the new "
                                     "policy to the bucket, then validate again")
            return
    if given is not None:  # the bucket's own policy is out of reach (reading it warned)
        policy = _parse_policy(found, given)
        if policy is not None:
            _evaluate(found, t, policy)


# --- the whole check ---------------------------------------------------------------------------


def _default_client(region: str) -> Any:
    """A boto3 S3 client with the default credential chain: one attempt, short timeouts
    (boto3 honours ``AWS_ENDPOINT_URL_S3``)."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"total_max_attempts": 1, "mode": "standard"},
                    connect_timeout=5, read_timeout=10)
    return boto3.session.Session().client("s3", region_name=region, config=config)


def _check_remote(found: _Findings, client: Any | None, t: _Target,
                  policy: Mapping[str, Any] | str | bytes | None) -> None:
    try:
        s3 = client if client is not None else _default_client(t.account.region)
    except BotoCoreError as exc:
        _not_verified(found, t, _Probe("error", None, type(exc).__name__))
        _check_policy(found, None, t, policy, "error")
        return
    try:
        _check_policy(found, s3, t, policy, _check_bucket(found, s3, t))
    finally:
        if client is None:
            s3.close()


def check_location(uri: str, account: Account, *, layout: str = DEFAULT_LAYOUT,
                   sse: str = "AES256", kms_key_arn: str | None = None,
                   writer: str = DEFAULT_WRITER,
                   policy: Mapping[str, Any] | str | bytes | None = None,
                   client: Any | None = None, today: date | None = None) -> LocationReport:
    """Checks 1-4 of docs/location-checks.md (and the KMS key) for ``uri`` as ``account``'s
    report location.

    ``client`` is an S3 client with the administrator's credentials (None: boto3's default
    chain); ``policy`` is a copy of the bucket policy (a mapping, or JSON text or bytes),
    checked when the bucket's own cannot be read (a readable bucket policy is what S3
    applies, so it wins)."""
    found = _Findings()
    for message in uri_problems(uri, account_id=account.account_id, region=account.region):
        found.problem("uri", message)
    for message in kms_problems(sse, kms_key_arn, account.region):
        found.problem("kms", message)
    if any(f.check == "uri" for f in found.problems):
        return found.report()
    bucket, prefix = split_location(uri)
    target = _Target(bucket, prefix, account, layout, sse, kms_key_arn, writer,
                     today or datetime.now(UTC).date())
    _check_remote(found, client, target, policy)
    return found.report()
