"""Check 1 of docs/location-checks.md, pure: is ``s3://bucket/prefix/`` a location reports can use?

Also the KMS key rule (a full key ARN in the account's Region). Nothing here reaches AWS; the
checks that look at the bucket are in :mod:`.location`.
"""

from __future__ import annotations

import re
import unicodedata

from .report import MAX_KEY_BYTES, longest_key_bytes

ROOT_REFUSED = "the CSV file cannot be saved in the root of the bucket"
_KMS_ARN = re.compile(r"arn:aws[-a-z]*:kms:([a-z0-9-]+):(\d{12}):key/([A-Za-z0-9-]+)")
_BUCKET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")
_IP_SHAPE = re.compile(r"\d+(\.\d+){3}")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def _bucket_problems(bucket: str) -> list[str]:
    if not bucket:
        return ["the URI names no bucket: use s3://bucket/prefix/"]
    name, out = f"bucket name {bucket!r}", []
    if not 3 <= len(bucket) <= 63:
        out.append(f"{name} has {len(bucket)} characters: a bucket name has 3 to 63")
    bad = sorted({c for c in bucket if c not in _BUCKET_CHARS})
    if bad:
        upper = " (upper-case letters are not allowed)" if any(c.isupper() for c in bad) else ""
        out.append(f"{name} has characters not allowed in a bucket name: "
                   f"{' '.join(map(repr, bad))}{upper}; use only lower-case letters, digits, "
                   "'.' and '-'")
    if bucket[0] in ".-" or bucket[-1] in ".-":
        out.append(f"{name} must start and end with a letter or a digit, not '.' or '-'")
    if _IP_SHAPE.fullmatch(bucket):
        out.append(f"{name} is shaped like an IP address: choose a name that is not")
    if ".." in bucket:
        out.append(f"{name} has '..': periods in a bucket name cannot be adjacent")
    if bucket.startswith(_RESERVED_PREFIXES) or bucket.endswith(_RESERVED_SUFFIXES):
        out.append(f"{name} uses a prefix or suffix that S3 reserves: choose another name")
    return out


def _prefix_problems(path: str) -> list[str]:
    if not path:
        return [f"a prefix is required: {ROOT_REFUSED} (use s3://bucket/prefix/)"]
    segments, out = path.split("/"), []
    if "" in segments:
        out.append(f"the prefix {path!r} has an empty path segment ('//'): "
                   "remove the doubled or leading slash")
    dots = sorted({s for s in segments if s in (".", "..")})
    if dots:
        out.append(f"the prefix {path!r} has a {' and a '.join(map(repr, dots))} segment, which "
                   "clients rewrite or reject: name the folders without them")
    return out


def _character_problems(uri: str) -> list[str]:
    controls = [f"U+{ord(c):04X} at position {i}" for i, c in enumerate(uri)
                if unicodedata.category(c) == "Cc"]
    broken = [f"U+{ord(c):04X} at position {i}" for i, c in enumerate(uri)
              if unicodedata.category(c) == "Cs"]
    out = []
    if controls:
        out.append(f"the URI has control characters ({', '.join(controls)}): remove them")
    if broken:
        out.append(f"the URI is not valid UTF-8: lone surrogates ({', '.join(broken)}) are "
                   "broken characters; retype the URI")
    return out


def split_location(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> ``("bucket", "a/b")`` (the trailing slash is optional)."""
    bucket, _, rest = uri.removeprefix("s3://").partition("/")
    return bucket, rest.removesuffix("/")


def uri_problems(uri: str, *, account_id: str, region: str) -> list[str]:
    """Check 1, pure: every problem with the URI, each naming the fix (empty: valid)."""
    if not uri.startswith("s3://"):
        return [f"the S3 URI {uri!r} must start with s3:// (use s3://bucket/prefix/)"]
    bucket, prefix = split_location(uri)
    out = [*_bucket_problems(bucket), *_prefix_problems(prefix), *_character_problems(uri)]
    if prefix and not any(unicodedata.category(c) == "Cs" for c in uri):
        longest = longest_key_bytes(prefix, account_id, region)
        if longest > MAX_KEY_BYTES:
            out.append(f"the prefix is too long: the longest object key would be {longest:,} "
                       f"bytes, over S3's limit of {MAX_KEY_BYTES:,}; shorten the prefix by at "
                       f"least {longest - MAX_KEY_BYTES:,} bytes")
    return out


def kms_problems(sse: str, kms_key_arn: str | None, region: str) -> list[str]:
    if sse != "aws:kms":
        return []
    full = "the full key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)"
    if not kms_key_arn:
        return [f"sse aws:kms needs a KMS key: set kms_key_arn (--kms-key-arn) to {full}"]
    if "alias/" in kms_key_arn:
        return [f"KMS key {kms_key_arn!r} is an alias, and aliases are refused: use {full}"]
    match = _KMS_ARN.fullmatch(kms_key_arn)
    if match is None:
        return [f"KMS key {kms_key_arn!r} is not a full key ARN: use {full}"]
    if match.group(1) != region:
        return [f"KMS key {kms_key_arn} is in Region {match.group(1)}, but the account's "
                f"profile is in {region}: S3 encrypts with a key of the bucket's Region; "
                f"use a key in {region}"]
    return []
