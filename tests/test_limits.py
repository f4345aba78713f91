"""The smaller holes, each against the real API (or CLI): request heads have a size limit before
anything is looked at; API keys can only be made for actors and roles rows can show; what the
audit keeps (UTF-8 reasons, control characters) it keeps and prints faithfully."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from restate_recovery import store
from tests.conftest import SESSION_DIR, RestateStack
from tests.support.local_stack import OperatorApi, PrefectServer

pytestmark = [pytest.mark.restate, pytest.mark.prefect]

CLI = str(Path(sys.executable).parent / "restate-recovery")
DOCTOR = "/api/v2/admin/operator/restate/doctor"


@pytest.fixture(scope="module")
def api(prefect_server: PrefectServer, restate: RestateStack) -> Iterator[OperatorApi]:
    home = SESSION_DIR / "limits"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTATE_", "DALP_"))}
    env.update(
        RESTATE_ADMIN_URL=restate.admin_url,
        RECOVERY_DATABASE_URL=f"sqlite:///{home / 'audit.db'}",
    )
    server = OperatorApi(env=env, log_path=home / "api.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def key(api: OperatorApi) -> str:
    return api.create_key(actor="ops_limits", role="ops", permissions=["system:operate"])


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def rows(api: OperatorApi) -> list[dict[str, Any]]:
    with Session(store.engine_for(api.env["RECOVERY_DATABASE_URL"])) as session:
        return [store.audit_public(r) for r in store.list_attempts(session=session, limit=100)]


def test_a_huge_request_head_is_refused_before_it_is_buffered(api: OperatorApi) -> None:
    """A 40 MB header: the API answers 431 once 32 KiB of head have arrived and closes the
    connection; the sender sees the answer long before it has sent it all."""
    host, port = api.url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST {DOCTOR} HTTP/1.1\r\nHost: x\r\nX-Api-Key: ".encode())
        chunk = b"k" * 65536
        try:
            while sent < 40 * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us: as it should be
        answer = sock.recv(65536).decode(errors="replace")

    assert answer.startswith("HTTP/1.1 431"), answer[:200]
    assert '"code": "REQUEST_HEADERS_TOO_LARGE"' in answer
    assert sent < 40 * 1024 * 1024


@pytest.mark.parametrize(
    ("actor", "role", "complaint"),
    [
        ("", "ops", "must not be empty"),
        ("  padded ", "ops", "must not be empty nor start or end with blanks"),
        ("x" * 256, "ops", "at most 255 characters"),
        ("mallory\nroot (admin)", "ops", "control characters or line breaks"),
        ("ops_1", "o\x07ps", "control characters or line breaks"),
    ],
)
def test_an_api_key_needs_an_actor_and_role_a_row_can_show(
    api: OperatorApi, actor: str, role: str, complaint: str
) -> None:
    before = cli("api-keys", "list", "--json", env=api.env).stdout
    args = [
        "api-keys",
        "create",
        "--actor",
        actor,
        "--role",
        role,
        "--permission",
        "system:operate",
    ]
    result = cli(*args, env=api.env)

    assert result.returncode == 2, result.stdout
    assert complaint in result.stderr and "Traceback" not in result.stderr
    assert cli("api-keys", "list", "--json", env=api.env).stdout == before  # no key was made


def test_a_utf8_reason_is_kept_and_an_overlong_one_refused_with_a_row(
    api: OperatorApi, key: str
) -> None:
    reason = "INC-77: café ü — 東京 rollback"
    headers = [
        (b"X-Api-Key", key.encode()),
        (b"X-Request-Id", b"utf8-1"),
        (b"X-Operator-Reason", reason.encode()),  # UTF-8 bytes, as curl sends them
    ]
    kept = httpx.post(f"{api.url}{DOCTOR}", json={}, headers=headers, timeout=60)
    remote = cli(
        "doctor",
        "--reason",
        reason,
        "--json",
        env={**os.environ, "DALP_API_URL": api.url, "DALP_API_KEY": key},
    )
    long = httpx.post(
        f"{api.url}{DOCTOR}",
        json={},
        headers={"X-Api-Key": key, "X-Request-Id": "long-1", "X-Operator-Reason": "r" * 2001},
        timeout=60,
    )

    assert kept.status_code == 200 and remote.returncode == 0, remote.stderr
    by_request = {r["requestId"]: r for r in rows(api)}
    assert by_request["utf8-1"]["reason"] == reason
    assert [r["reason"] for r in rows(api) if (r["requestId"] or "").startswith("cli_")][
        0
    ] == reason
    assert long.status_code == 400 and long.json()["data"]["errors"][0]["field"] == (
        "X-Operator-Reason"
    )
    refused = by_request["long-1"]
    assert refused["outcome"] == "failure" and refused["error"]["code"] == "INVALID_REQUEST"
    assert refused["reason"].endswith(" [truncated]") and len(refused["reason"]) == 2000


def test_audit_list_prints_each_row_on_one_line_whatever_its_text(
    restate: RestateStack, tmp_path: Path
) -> None:
    """A reason with a line break (the CLI can pass one) is stored as typed and printed escaped:
    it cannot forge a line of ``audit list``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTATE_", "DALP_"))}
    env.update(
        RESTATE_ADMIN_URL=restate.admin_url,
        RECOVERY_DATABASE_URL=f"sqlite:///{tmp_path / 'audit.db'}",
    )
    forged = "fine\n2026-12-01T00:00:00.000Z  admin (platform-operator)  recover-stuck-workflow"
    marker = uuid.uuid4().hex
    done = cli("doctor", "--reason", f"{marker} {forged}", "--json", env=env)
    assert done.returncode == 0, done.stderr

    text = cli("audit", "list", env=env).stdout.splitlines()
    stored = json.loads(cli("audit", "list", "--json", env=env).stdout)

    assert stored[0]["reason"] == f"{marker} {forged}"  # kept as typed
    assert len(text) == 1 and "\\n2026-12-01" in text[0]
