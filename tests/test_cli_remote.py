"""The operator CLI in its remote mode: a client of the operator API (DALP_API_URL, DALP_API_KEY),
run as a real subprocess against the API as a real subprocess, real Restate and real Prefect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from restate_recovery import store
from tests.conftest import SESSION_DIR, RestateStack
from tests.support.helpers import closed_port_url
from tests.support.local_stack import OperatorApi, PrefectServer, submit_workflow, wait_for_status

pytestmark = [pytest.mark.restate, pytest.mark.prefect]

CLI = str(Path(sys.executable).parent / "restate-recovery")
WORKFLOW = "IdentityRecoveryWorkflow"


@pytest.fixture(scope="module")
def api(prefect_server: PrefectServer, restate: RestateStack) -> Iterator[OperatorApi]:
    home = SESSION_DIR / "cli-remote"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTATE_")}
    env.update(
        {
            "RESTATE_ADMIN_URL": restate.admin_url,
            "RESTATE_INGRESS_URL": restate.ingress_url,
            "RECOVERY_DATABASE_URL": f"sqlite:///{home / 'audit.db'}",
        }
    )
    server = OperatorApi(env=env, log_path=home / "api.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def key(api: OperatorApi) -> str:
    return api.create_key(
        actor="user_ops_7", role="platform-operator", permissions=["system:operate"]
    )


def operator_env(url: str, key: str | None, **extra: str) -> dict[str, str]:
    """An operator's machine: the API's URL and key, and nothing of Restate, Prefect or the
    audit database."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RESTATE_", "RECOVERY_", "PREFECT_", "DALP_"))
    }
    env["DALP_API_URL"] = url
    if key is not None:
        env["DALP_API_KEY"] = key
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=env, capture_output=True, text=True, timeout=240, check=False
    )


def audit_rows(api: OperatorApi) -> list[dict[str, Any]]:
    with Session(store.engine_for(api.env["RECOVERY_DATABASE_URL"])) as session:
        return [store.audit_public(r) for r in store.list_attempts(session=session, limit=200)]


def row_for(api: OperatorApi, request_id: str) -> dict[str, Any]:
    (row,) = [r for r in audit_rows(api) if r["requestId"] == request_id]
    return row


def newest_doctor_row_recorded(api: OperatorApi, timeout: float = 60) -> dict[str, Any]:
    """The newest doctor row, once its answer is recorded as a flow run (just after the answer)."""
    deadline = time.monotonic() + timeout
    while (row := [r for r in audit_rows(api) if r["route"] == "doctor"][0])["flowRunId"] is None:
        assert time.monotonic() < deadline, f"the doctor's row was never finished: {row}"
        time.sleep(0.1)
    return row


def failed_key(restate: RestateStack, prefix: str, mode: str = "fail") -> tuple[str, str]:
    key = f"{prefix}_{uuid.uuid4().hex[:8]}"
    invocation_id = submit_workflow(restate.ingress_url, key, mode)
    wait_for_status(restate.admin_url, invocation_id, "completed")
    return key, invocation_id


def test_doctor_json_is_exactly_the_answer_the_api_recorded(
    api: OperatorApi, key: str, prefect_server: PrefectServer, restate: RestateStack
) -> None:
    result = cli("doctor", "--json", env=operator_env(api.url, key))

    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert set(printed) == {"ingress", "admin", "deployments", "services", "invocations"}
    assert printed["deployments"]["items"][0]["serviceUrl"] == restate.service_url + "/"
    row = newest_doctor_row_recorded(api)
    assert (row["actorUserId"], row["roleAtTime"]) == ("user_ops_7", "platform-operator")
    assert row["requestId"].startswith("cli_")
    run = httpx.get(f"{prefect_server.api_url}/flow_runs/{row['flowRunId']}", timeout=10).json()
    assert run["parameters"]["answer"]["readout"] == printed  # the very body the API answered


def test_doctor_table_renders_the_api_answer(api: OperatorApi, key: str) -> None:
    result = cli("doctor", env=operator_env(api.url, key, COLUMNS="200"))

    assert result.returncode == 0, result.stderr
    for word in ("ingress", "admin", "deployments", "services", "invocations", "1.7.12"):
        assert word in result.stdout


def test_a_write_is_signed_by_the_key_and_the_reason_kept(
    api: OperatorApi, key: str, restate: RestateStack
) -> None:
    failed, invocation_id = failed_key(restate, "remote")
    args = ["recover-stuck-workflow", "--service-name", WORKFLOW, "--service-key", failed]
    env = operator_env(api.url, key, USER="mallory", LOGNAME="mallory")

    plan = cli(*args, "--dry-run", "--json", env=env)
    done = cli(*args, "--reason", "INC-12 réplay", "--json", env=env)

    assert plan.returncode == 0, plan.stderr
    purge = json.loads(plan.stdout)["plan"][-1]
    assert (purge["action"], purge["target"]) == ("purge", invocation_id)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"acknowledged": True}
    rows = [r for r in audit_rows(api) if r["arguments"].get("serviceKey") == failed]
    assert [(r["actorUserId"], r["roleAtTime"]) for r in rows] == [
        ("user_ops_7", "platform-operator")
    ] * 2
    assert [r["arguments"].get("dryRun", False) for r in rows] == [False, True]  # newest first
    assert rows[0]["reason"] == "INC-12 réplay"


def test_paused_invocations_are_resumed_through_the_api_and_audited(
    api: OperatorApi, key: str, restate: RestateStack
) -> None:
    """resume-paused-invocations over the operator API: the plan, the resume on ``keep``, the
    refusal of an unknown deployment, each with its audit row signed by the key."""
    paused = submit_workflow(
        restate.ingress_url, f"cli_{uuid.uuid4().hex[:8]}", "x", workflow="FlakyWorkflow"
    )
    wait_for_status(restate.admin_url, paused, "paused")
    args = ["resume-paused-invocations", "--invocation-id", paused]
    env = operator_env(api.url, key)

    plan = cli(*args, "--deployment", "keep", "--dry-run", "--json", env=env)
    done = cli(
        *args, "--deployment", "keep", "--reason", "INC-20 fixed upstream", "--json", env=env
    )
    missing = cli(*args, "--deployment", "dp_1nothere", "--json", env=env)

    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["plan"] == [
        {"action": "resume", "target": paused, "detail": "FlakyWorkflow on keep"}
    ]
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"acknowledged": True, "resumed": [paused], "skipped": []}
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["code"] == "RESTATE_DEPLOYMENT_NOT_FOUND"
    rows = [r for r in audit_rows(api) if r["arguments"].get("invocationId") == paused]
    assert [(r["route"], r["outcome"], r["actorUserId"]) for r in rows] == [
        ("resume-paused-invocations", "failure", "user_ops_7"),
        ("resume-paused-invocations", "success", "user_ops_7"),
        ("resume-paused-invocations", "success", "user_ops_7"),
    ]
    httpx.patch(f"{restate.admin_url}/invocations/{paused}/kill", timeout=10)


def test_explain_through_the_api_tells_the_story_and_is_audited(
    api: OperatorApi, key: str, restate: RestateStack
) -> None:
    failed, invocation_id = failed_key(restate, "explained")
    env = operator_env(api.url, key)

    told = cli("explain", "--service-name", WORKFLOW, "--service-key", failed, "--json", env=env)
    table = cli("explain", "--invocation-id", invocation_id, env=env)
    refused = cli("explain", "--service-name", WORKFLOW, "--json", env=env)

    assert told.returncode == 0, told.stderr
    body = json.loads(told.stdout)
    assert [i["id"] for i in body["invocations"]] == [invocation_id]
    assert body["suggestion"]["runbook"] == "recover-stuck-workflow"
    assert body["suggestion"]["request"] == {"serviceName": WORKFLOW, "serviceKey": failed}
    assert table.returncode == 0 and "run: recover-stuck-workflow" in table.stdout
    assert refused.returncode == 1 and json.loads(refused.stdout)["code"] == "INVALID_REQUEST"
    rows = [r for r in audit_rows(api) if r["route"] == "explain"]
    assert [r["actorUserId"] for r in rows[:3]] == ["user_ops_7"] * 3
    assert {r["outcome"] for r in rows[:3]} == {"success", "failure"}


def test_the_actor_cannot_be_forged_remotely(api: OperatorApi, key: str) -> None:
    """The CLI has no way to say who is asking, and the API ignores anything that tries."""
    flag = cli("doctor", "--actor", "mallory", env=operator_env(api.url, key))
    assert flag.returncode == 2 and "No such option" in flag.stderr

    for headers, body in [
        ({"X-Actor": "mallory", "X-Actor-User-Id": "mallory", "X-Role": "admin"}, {}),
        ({}, {"actor": "mallory"}),
    ]:
        response = httpx.post(
            f"{api.url}/api/v2/admin/operator/restate/doctor",
            json=body,
            headers={"X-Api-Key": key, "X-Request-Id": f"forge-{uuid.uuid4().hex[:6]}", **headers},
            timeout=60,
        )
        row = row_for(api, response.headers["x-request-id"])
        assert (row["actorUserId"], row["roleAtTime"]) == ("user_ops_7", "platform-operator")
    assert not any(r["actorUserId"] == "mallory" for r in audit_rows(api))


@pytest.mark.parametrize("as_json", [True, False])
def test_api_errors_show_their_code_and_request_id(
    api: OperatorApi, key: str, restate: RestateStack, as_json: bool
) -> None:
    succeeded, ok_id = failed_key(restate, "remote_ok", mode="succeed")
    reader = api.create_key(actor="viewer_1", role="viewer", permissions=["system:read"])
    cases = [
        (
            ["recover-stuck-workflow", "--service-name", WORKFLOW, "--service-key", succeeded],
            key,
            "RESTATE_WORKFLOW_RETRY_BLOCKED",
        ),
        (["doctor"], "rrk_nope_nope", "UNAUTHENTICATED"),
        (["doctor"], reader, "FORBIDDEN"),
        (["force-redeploy", "--service-url", closed_port_url()], key, "RESTATE_ADMIN_UNREACHABLE"),
        (["recover-stuck-workflow", "--service-name", "Bad Name", "--service-key", "k"], key,
         "INVALID_REQUEST"),
    ]  # fmt: skip
    for args, with_key, code in cases:
        result = cli(*args, *(["--json"] if as_json else []), env=operator_env(api.url, with_key))

        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        if as_json:
            body = json.loads(result.stdout)
            assert body["code"] == code and body["requestId"].startswith("cli_")
            if code == "RESTATE_WORKFLOW_RETRY_BLOCKED":
                assert body["data"] == {"reason": "already-succeeded", "invocationIds": [ok_id]}
        else:
            assert result.stdout == ""
            assert code in result.stderr and "(request cli_" in result.stderr


@pytest.mark.parametrize("as_json", [True, False])
def test_a_down_api_is_a_clear_error_with_the_request_id(as_json: bool) -> None:
    result = cli(
        "doctor", *(["--json"] if as_json else []), env=operator_env(closed_port_url(), "k")
    )

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    text = result.stdout if as_json else result.stderr
    assert "OPERATOR_API_UNREACHABLE" in text and "cli_" in text
    if as_json:
        assert json.loads(result.stdout)["code"] == "OPERATOR_API_UNREACHABLE"


def test_a_half_configured_remote_mode_is_a_usage_error() -> None:
    result = cli("doctor", env=operator_env("http://127.0.0.1:1", None))
    assert result.returncode == 2
    assert "DALP_API_URL is set but DALP_API_KEY is not" in result.stderr


def test_the_remote_mode_imports_no_prefect_database_or_restate_client(
    api: OperatorApi, key: str
) -> None:
    probe = (
        "import sys\n"
        "from restate_recovery.cli.main import main\n"
        "sys.argv = ['restate-recovery', 'doctor', '--json']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = {'prefect', 'sqlalchemy', 'sqlmodel', 'fastapi', 'httpx', 'alembic'}\n"
        "sys.stderr.write(repr(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env=operator_env(api.url, key),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert json.loads(result.stdout)["admin"]["status"] == "ok"
    assert result.stderr.strip().splitlines()[-1] == "[]"
