"""Settings: one declarative table, documented everywhere it is used; saving, refusing, auditing."""

from __future__ import annotations

import json
import re
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from conftest import ACCOUNT, OTHER_ACCOUNT, PROFILE, REGION, cli, setup_accounts
from kiro_activity import audit, location, openapi, sessions, settings, store
from kiro_activity.config import Config
from kiro_activity.errors import SettingsConflict, SettingsRejected
from kiro_activity.store import Account

ROOT = Path(__file__).resolve().parents[1]
TODAY = date(2026, 12, 1)
ACC = Account(ACCOUNT, REGION, PROFILE)


@pytest.fixture
def conn(tmp_path: Path) -> Any:
    setup_accounts(tmp_path)
    c = store.connect(Config(data_dir=tmp_path).control_db)
    yield c
    c.close()


def test_docs_file_is_generated_from_the_table() -> None:
    assert (ROOT / "docs" / "settings.md").read_text() == settings.docs_markdown()


@pytest.mark.parametrize("setting", settings.SETTINGS, ids=lambda s: s.name)
def test_each_setting_is_documented_everywhere(setting: settings.Setting, tmp_path: Path) -> None:
    """In the docs, the CLI help, the API schema (and so /openapi.json), and the web form."""
    assert setting.help.strip() and setting.help.endswith(".")
    docs = (ROOT / "docs" / "settings.md").read_text()
    assert f"| `{setting.name}` | `{setting.flag}` |" in docs
    assert setting.help in docs
    help_text = " ".join(cli(tmp_path, "settings", "set", "--help").stdout.split())
    assert setting.flag.replace("/", " / ") in help_text
    assert " ".join(setting.help.split()[:6]) in help_text
    schema = settings.json_schema()["properties"][setting.name]
    assert schema["description"] == setting.help and schema["default"] == setting.default
    if setting.choices:
        assert schema["enum"] == list(setting.choices)
    doc = json.dumps(openapi.document(Config()))
    assert json.dumps(setting.help)[1:-1] in doc
    form = (ROOT / "src" / "kiro_activity" / "templates" / "account.html").read_text()
    assert "{% for s in settings_table %}" in form  # the form is drawn from the table itself


def test_the_spec_settings_are_the_table() -> None:
    """The settings of docs/settings.md, with their defaults."""
    expected = {"enabled": False, "s3_uri": None, "layout": "delivered", "sse": "AES256",
                "kms_key_arn": None}
    assert {s.name: s.default for s in settings.SETTINGS} == expected
    assert settings.Settings(ACCOUNT).values() == expected


def test_update_saves_audits_and_keeps_warnings(conn: Any) -> None:
    def checker(uri: str, account: Account, **kw: Any) -> location.LocationReport:
        return location.LocationReport([], [location.Finding("policy", "careful")],
                                       manifest_allowed=False)

    saved, report = settings.update(
        conn, ACCOUNT, {"enabled": True, "s3_uri": "s3://bucket-name/reports/"}, actor="t",
        now=1.0, today=TODAY, writer="q.amazonaws.com", checker=checker)
    assert report.valid and saved.warnings == ("careful",) and saved.manifest is False
    again = settings.get(conn, ACCOUNT)
    assert again == saved and again.enabled_since == TODAY
    [entry] = audit.audit_log(conn, ACCOUNT)
    assert entry.action == "settings.update" and entry.actor == "t"
    assert entry.before == {"enabled": False, "s3_uri": None}
    assert entry.after == {"enabled": True, "s3_uri": "s3://bucket-name/reports/"}
    # clearing the location goes back to the local folder, which always gets a manifest
    cleared, _ = settings.update(conn, ACCOUNT, {"s3_uri": ""}, actor="t", now=2.0,
                                 today=TODAY, writer="q.amazonaws.com", checker=checker)
    assert cleared.s3_uri is None and cleared.manifest and cleared.warnings == ()
    # disabling forgets the day it was enabled; enabling again starts from the new day
    settings.update(conn, ACCOUNT, {"enabled": False}, actor="t", now=3.0, today=TODAY,
                    writer="w")
    later = date(2026, 12, 5)
    s, _ = settings.update(conn, ACCOUNT, {"enabled": True}, actor="t", now=4.0, today=later,
                           writer="w")
    assert s.enabled_since == later
    s, _ = settings.update(conn, ACCOUNT, {"layout": "delivered"}, actor="t", now=5.0,
                           today=date(2026, 12, 9), writer="w")
    assert s.enabled_since == later


def test_a_refused_change_lists_every_problem_and_changes_nothing(conn: Any) -> None:
    before = (settings.get(conn, ACCOUNT), audit.audit_log(conn, ACCOUNT))
    with pytest.raises(SettingsRejected) as info:
        settings.update(conn, ACCOUNT, {"layout": "wide", "enabled": 1, "s3_uri": "s3://b",
                                        "sse": "aws:kms", "kms_key_arn": "alias/x"},
                        actor="t", now=1.0, today=TODAY, writer="w")
    found: dict[str, str] = {}
    for check, message in info.value.problems:
        found[check] = found.get(check, "") + message + "\n"
    assert "layout 'wide' must be one of" in found["layout"]
    assert found["enabled"] == "enabled must be true or false, not 1\n"
    assert "is an alias" in found["kms"]
    assert "root of the bucket" in found["uri"] and "'b'" in found["uri"]
    assert (settings.get(conn, ACCOUNT), audit.audit_log(conn, ACCOUNT)) == before


def test_a_location_that_fails_the_checks_is_not_saved(conn: Any) -> None:
    def checker(uri: str, account: Account, **kw: Any) -> location.LocationReport:
        assert kw["writer"] == "arn:aws:iam::111122223333:role/writer"
        assert kw["layout"] == "delivered" and kw["policy"] == "{}"
        return location.LocationReport([location.Finding("region", "wrong Region")],
                                       [location.Finding("policy", "careful")])

    with pytest.raises(SettingsRejected) as info:
        settings.update(conn, ACCOUNT, {"s3_uri": "s3://bucket-name/p/", "layout": "delivered"},
                        actor="t", now=1.0, today=TODAY, policy="{}",
                        writer="arn:aws:iam::111122223333:role/writer", checker=checker)
    assert info.value.problems == [("region", "wrong Region")]
    assert info.value.warnings == [("policy", "careful")]
    assert settings.get(conn, ACCOUNT) == settings.Settings(ACCOUNT)


@pytest.mark.parametrize(("changes", "words"), [
    ({"sse": "aws:kms"}, "full key ARN"),
    ({"sse": "aws:kms", "kms_key_arn": "arn:aws:kms:us-east-1:111122223333:alias/r"},
     "aliases are refused"),
    ({"sse": "aws:kms", "kms_key_arn": "arn:aws:kms:eu-west-1:111122223333:key/abc-123"},
     "use a key in us-east-1"),
    ({"kms_key_arn": "arn:aws:kms:us-east-1:111122223333:key/abc-123"}, "only used with"),
])
def test_kms_rules(conn: Any, changes: dict[str, Any], words: str) -> None:
    with pytest.raises(SettingsRejected) as info:
        settings.update(conn, ACCOUNT, changes, actor="t", now=1.0, today=TODAY, writer="w")
    assert words in info.value.problems[0][1]


def test_kms_key_of_the_region_is_saved(conn: Any) -> None:
    arn = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    s, _ = settings.update(conn, ACCOUNT, {"sse": "aws:kms", "kms_key_arn": arn}, actor="t",
                           now=1.0, today=TODAY, writer="w")
    assert s.sse == "aws:kms" and s.kms_key_arn == arn


def test_cli_set_show_validate_and_audit(tmp_path: Path) -> None:
    setup_accounts(tmp_path)
    r = cli(tmp_path, "settings", "set", ACCOUNT, "--enable", "--layout", "documented")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["layout"] == "documented"
    r = cli(tmp_path, "settings", "set", ACCOUNT, "--s3-uri", "s3://UPPER/", "--sse", "aws:kms")
    assert r.returncode == 1
    assert "settings not saved" in r.stderr and "problem [uri]" in r.stderr
    assert "problem [kms]" in r.stderr
    shown = json.loads(cli(tmp_path, "settings", "show", ACCOUNT, "--json").stdout)
    assert shown["s3_uri"] is None and shown["sse"] == "AES256"
    r = cli(tmp_path, "settings", "validate", ACCOUNT)
    assert r.returncode == 0 and r.stdout.strip() == "valid"
    r = cli(tmp_path, "audit", ACCOUNT, "--json")
    [entry] = json.loads(r.stdout)
    assert entry["actor"].startswith("cli:") and entry["after"]["layout"] == "documented"
    r = cli(tmp_path, "audit", OTHER_ACCOUNT, "--json")
    assert json.loads(r.stdout) == []


def test_cli_admin_tokens(tmp_path: Path) -> None:
    setup_accounts(tmp_path)
    r = cli(tmp_path, "tokens", "issue", "--account", ACCOUNT, "--account", OTHER_ACCOUNT,
            "--admin", "--user", "ada")
    assert r.returncode == 0 and re.fullmatch(r"kat_[\w-]{43}\n", r.stdout)
    token = r.stdout.strip()
    r = cli(tmp_path, "tokens", "issue", "--account", ACCOUNT, "--account", OTHER_ACCOUNT,
            "--user", "bob")
    assert r.returncode == 1 and "exactly one account" in r.stderr
    for account in (ACCOUNT, OTHER_ACCOUNT):
        listed = json.loads(cli(tmp_path, "tokens", "list", "--account", account,
                                "--json").stdout)
        assert [(t["kind"], t["principal"], t["scopes"]) for t in listed] == [
            ("admin", "ada", [ACCOUNT, OTHER_ACCOUNT])]
        assert token not in json.dumps(listed)
    r = cli(tmp_path, "tokens", "revoke", "--account", OTHER_ACCOUNT, "--user", "ada")
    assert r.returncode == 0
    conn = store.connect(Config(data_dir=tmp_path).control_db)
    assert store.lookup_token(conn, token, now=time.time()) is None
    for account in (ACCOUNT, OTHER_ACCOUNT):
        actions = [e.action for e in audit.audit_log(conn, account)]
        assert actions == ["token.revoke", "token.issue"]
        assert token not in json.dumps([e.as_dict() for e in audit.audit_log(conn, account)])
    conn.close()


def test_sessions_end_with_their_token(conn: Any) -> None:
    [(_, token)] = store.issue_tokens(conn, ACCOUNT, ["ada"], now=1.0, actor="t", kind="admin")
    p = store.lookup_token(conn, token, now=2.0)
    assert p is not None and p.scopes == {ACCOUNT}
    sid = sessions.open_session(conn, p, now=2.0)
    assert sessions.session_principal(conn, sid, now=3.0) == p
    assert sessions.session_principal(conn, sid, now=2.0 + sessions.SESSION_SECONDS) is None
    assert sessions.session_principal(conn, sid + "x", now=3.0) is None
    stored = conn.execute("SELECT id_hash FROM sessions").fetchall()
    assert sid not in json.dumps(stored)
    store.revoke_tokens(conn, ACCOUNT, now=4.0, actor="t", principal="ada")
    assert sessions.session_principal(conn, sid, now=5.0) is None


def failing(uri: str, account: Account, **kw: Any) -> location.LocationReport:
    return location.LocationReport([location.Finding("uri", "bucket x does not exist")], [])


def passing(manifest: bool | None) -> Any:
    def checker(uri: str, account: Account, **kw: Any) -> location.LocationReport:
        return location.LocationReport([], [], manifest_allowed=manifest)
    return checker


def save(conn: Any, changes: dict[str, Any], checker: Any = None) -> settings.Settings:
    return settings.update(conn, ACCOUNT, changes, actor="t", now=1.0, today=TODAY, writer="w",
                           checker=checker)[0]


def test_reports_can_be_turned_off_when_the_location_fails(conn: Any) -> None:
    """The bucket was deleted since: switching reports off is never refused by it."""
    save(conn, {"enabled": True, "s3_uri": "s3://bucket-name/p/"}, passing(True))
    off = save(conn, {"enabled": False}, failing)
    assert off.enabled is False and off.s3_uri == "s3://bucket-name/p/"
    with pytest.raises(SettingsRejected):  # switching them on again checks the bucket
        save(conn, {"enabled": True}, failing)
    with pytest.raises(SettingsRejected):  # so does changing where the files go
        save(conn, {"layout": "documented"}, failing)


def test_a_change_saved_meanwhile_is_not_undone(conn: Any) -> None:
    """While one admin's location is being checked, another admin changes the location: the
    first save is refused (409 over HTTP) instead of silently undoing the second."""
    def slow_checker(uri: str, account: Account, **kw: Any) -> location.LocationReport:
        save(conn, {"layout": "documented"})  # the other admin, during the check
        return location.LocationReport([], [], manifest_allowed=True)

    with pytest.raises(SettingsConflict):
        save(conn, {"s3_uri": "s3://bucket-name/p/"}, slow_checker)
    s = settings.get(conn, ACCOUNT)
    assert s.layout == "documented" and s.s3_uri is None
    # a change of other settings meanwhile is kept, and the audit says who did what
    def switcher(uri: str, account: Account, **kw: Any) -> location.LocationReport:
        settings.update(conn, ACCOUNT, {"enabled": False}, actor="other", now=1.0,
                        today=TODAY, writer="w")
        return location.LocationReport([], [], manifest_allowed=True)

    save(conn, {"enabled": True}, passing(True))
    saved = save(conn, {"s3_uri": "s3://bucket-name/p/"}, switcher)
    assert saved.enabled is False and saved.s3_uri == "s3://bucket-name/p/"
    [newest, switched, *_] = audit.audit_log(conn, ACCOUNT)
    assert (switched.actor, switched.after) == ("other", {"enabled": False})
    assert (newest.actor, newest.after) == ("t", {"s3_uri": "s3://bucket-name/p/"})


def test_the_manifest_flag_is_kept_when_the_policy_cannot_be_read(conn: Any) -> None:
    assert save(conn, {"s3_uri": "s3://bucket-name/p/"}, passing(False)).manifest is False
    # enabling checks again; the policy could not be read: what was known stays
    assert save(conn, {"enabled": True}, passing(None)).manifest is False
    # another location: nothing known of it, so the documented default (manifests written)
    assert save(conn, {"s3_uri": "s3://bucket-name/q/"}, passing(None)).manifest is True
    report = settings.validate(conn, ACCOUNT, writer="w", now=2.0, checker=passing(False))
    assert report.valid and settings.get(conn, ACCOUNT).manifest is False
    [entry, *_] = audit.audit_log(conn, ACCOUNT)
    assert (entry.action, entry.before, entry.after) == (
        "settings.validate", {"manifest": True}, {"manifest": False})


def test_cli_checks_a_real_bucket(tmp_path: Path, aws_env: None, moto_url: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """settings set / validate against a bucket on moto's server, with and without a policy
    file, with and without credentials."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    s3 = boto3.session.Session().client("s3", region_name=REGION)
    bucket = f"kiro-cli-{time.time_ns()}"
    s3.create_bucket(Bucket=bucket)
    setup_accounts(tmp_path)
    uri = f"s3://{bucket}/reports/"
    refused = cli(tmp_path, "settings", "set", ACCOUNT, "--enable", "--s3-uri", uri)
    assert refused.returncode == 1 and "has no bucket policy" in refused.stderr
    policy = location.documented_policy(bucket, "reports", ACC)
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    saved = cli(tmp_path, "settings", "set", ACCOUNT, "--enable", "--s3-uri", uri)
    assert saved.returncode == 0, saved.stderr
    assert json.loads(saved.stdout)["s3_uri"] == uri and "warning" not in saved.stderr
    ok = cli(tmp_path, "settings", "validate", ACCOUNT, "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["valid"] is True
    # the admin narrows the policy to another prefix: validate says so, and exits 1
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(
        location.documented_policy(bucket, "elsewhere", ACC)))
    bad = cli(tmp_path, "settings", "validate", ACCOUNT)
    assert bad.returncode == 1 and "problem [policy]" in bad.stderr
    assert "not valid" in bad.stdout
    # a policy file does not override the bucket's own policy when that can be read
    good_file = tmp_path / "policy.json"
    good_file.write_text(json.dumps(policy))
    still = cli(tmp_path, "settings", "validate", ACCOUNT, "--policy-file", str(good_file))
    assert still.returncode == 1 and "not the one bucket" in still.stderr
    # without credentials the file is what is checked; Region and owner are warnings
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    blind = cli(tmp_path, "settings", "validate", ACCOUNT, "--policy-file", str(good_file))
    assert blind.returncode == 0, blind.stderr
    assert "warning [region]" in blind.stderr and "warning [owner]" in blind.stderr
    broken = tmp_path / "broken.json"
    broken.write_bytes(b"\xff\xfe{")
    r = cli(tmp_path, "settings", "validate", ACCOUNT, "--policy-file", str(broken))
    assert r.returncode == 1 and "not valid UTF-8" in r.stderr
    s3.close()
