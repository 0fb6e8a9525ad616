"""schemathesis against the service's own ``/openapi.json``: every admin operation (with an
admin token, the account id fixed to the one it administers) and the restJson1 telemetry
operations in their three forms, awsJson 1.0, restJson1 and the NDJSON bulk import (with a
telemetry token; tests/st_hooks.py gives schemathesis serializers for the two media types it has
none for), through its examples, coverage (including invalid inputs), fuzzing and stateful
phases. 0 server errors, and every answer's status, content type and body as the document
declares.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from conftest import ACCOUNT, Server, make_server

EXAMPLES = os.environ.get("KIRO_ACTIVITY_SCHEMATHESIS_EXAMPLES", "20")
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,response_headers_conformance")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    with pytest.MonkeyPatch.context() as mp:  # generated bad tokens must not lock the test out
        mp.setenv("KIRO_ACTIVITY_AUTH_FAILURES_PER_SOURCE", "0")
        s = make_server(tmp_path_factory.mktemp("st") / "data", "--no-schedule", "--rate",
                        "100000", "--burst", "100000")
    yield s  # type: ignore[misc]
    s.stop()


def run(server: Server, tmp_path: Path, token: str, *paths: str) -> tuple[int, str]:
    doc = httpx.get(f"{server.url}/openapi.json").json()
    doc["paths"] = {p: v for p, v in doc["paths"].items() if p in paths}
    for item in doc["paths"].values():  # the account this token may see
        for param in item.get("parameters", []):
            if param["name"] == "account_id":
                param["schema"] = {"type": "string", "enum": [ACCOUNT]}
    schema = tmp_path / "openapi.json"
    schema.write_bytes(orjson.dumps(doc))
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis is not installed"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "st_hooks",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                          os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [st, "run", str(schema), "--url", server.url, "-H", f"Authorization: Bearer {token}",
         "--checks", CHECKS, "--max-examples", EXAMPLES, "--no-color", "--seed", "1202"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    return done.returncode, done.stdout + done.stderr


def figure(output: str) -> str:
    found = re.search(r"(\d+) generated, (\d+) passed(?:, (\d+) failed)?", output)
    return (f"generated={found.group(1)} passed={found.group(2)} failed={found.group(3) or 0}"
            if found else "generated=?")


def test_admin_api_matches_its_schema(server: Server, tmp_path: Path) -> None:
    paths = [p for p in httpx.get(f"{server.url}/openapi.json").json()["paths"]
             if p.startswith("/admin/v1/")]
    code, output = run(server, tmp_path, server.admin_token("ada", ACCOUNT), *paths)
    print(f"schemathesis: api=admin paths={len(paths)} {figure(output)}")
    assert code == 0, output[-6000:]


def test_telemetry_api_matches_its_schema(server: Server, tmp_path: Path) -> None:
    paths = ["/", "/SendTelemetryEvent", "/v1/batch/SendTelemetryEvent"]
    code, output = run(server, tmp_path, server.token("alice"), *paths)
    print(f"schemathesis: api=telemetry operations={len(paths)} {figure(output)}")
    assert code == 0, output[-6000:]
