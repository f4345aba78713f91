"""The operator HTTP API over real HTTP: the app as a subprocess, real Restate, real Prefect."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName

from tests.conftest import SESSION_DIR, RestateStack
from tests.support.helpers import artifacts_of, closed_port_url
from tests.support.local_stack import (
    PROJECT_DIR,
    OperatorApi,
    PrefectServer,
    SampleService,
    submit_workflow,
    wait_for_status,
)

pytestmark = [pytest.mark.restate, pytest.mark.prefect]

PREFIX = "/api/v2/admin/operator/restate"
ROUTES = ["doctor", "force-redeploy", "cleanup-stale-deployments", "recover-stuck-workflow"]
CLI = str(Path(sys.executable).parent / "restate-recovery")


def api_env(restate: RestateStack | None, database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTATE_")}
    env["RECOVERY_DATABASE_URL"] = database_url
    if restate is not None:
        env["RESTATE_ADMIN_URL"] = restate.admin_url
        env["RESTATE_INGRESS_URL"] = restate.ingress_url
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def api(prefect_server: PrefectServer, restate: RestateStack) -> Iterator[OperatorApi]:
    home = SESSION_DIR / "api"
    home.mkdir(exist_ok=True)
    server = OperatorApi(
        env=api_env(restate, f"sqlite:///{home / 'audit.db'}"), log_path=home / "api.log"
    ).start()
    yield server
    server.stop()


@contextmanager
def side_api(
    name: str, restate: RestateStack | None, **extra: str
) -> Iterator[tuple[OperatorApi, str]]:
    """An API of its own (own audit database and log under SESSION_DIR/name) and an operator key;
    stopped (SIGTERM, drained) on the way out."""
    home = SESSION_DIR / name
    home.mkdir(exist_ok=True)
    env = api_env(restate, f"sqlite:///{home / 'audit.db'}", **extra)
    server = OperatorApi(env=env, log_path=home / "api.log").start(timeout_s=120)
    try:
        yield server, server.create_key(actor="u", role="ops", permissions=["system:operate"])
    finally:
        server.stop()


@pytest.fixture(scope="module")
def operator_key(api: OperatorApi) -> str:
    return api.create_key(
        actor="user_ops_1", role="platform-operator", permissions=["system:operate"]
    )


def post(
    api: OperatorApi, route: str, body: Any, key: str | None, **headers: str | bytes
) -> httpx.Response:
    sent = {
        k.encode(): v if isinstance(v, bytes) else v.encode()
        for k, v in {"Content-Type": "application/json", **headers}.items()
    }
    if key is not None:
        sent[b"X-Api-Key"] = key.encode()
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{api.url}{PREFIX}/{route}", content=content, headers=sent, timeout=120)


def audit_rows(api: OperatorApi, limit: int = 20) -> list[dict[str, Any]]:
    """Newest first, read straight from the API's audit database."""
    from sqlmodel import Session

    from restate_recovery import store

    with Session(store.engine_for(api.env["RECOVERY_DATABASE_URL"])) as session:
        return [store.audit_public(r) for r in store.list_attempts(session=session, limit=limit)]


def audit_rows_from_cli(api: OperatorApi, limit: int = 20) -> list[dict[str, Any]]:
    result = subprocess.run(
        [CLI, "audit", "list", "--json", "--limit", str(limit)],
        env=api.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def row_for(api: OperatorApi, request_id: str) -> dict[str, Any]:
    (row,) = [r for r in audit_rows(api, 200) if r["requestId"] == request_id]
    return row


def finished_row_for(api: OperatorApi, request_id: str, timeout: float = 60) -> dict[str, Any]:
    """The doctor's row is finished once its answer is recorded as a flow run, just after it."""
    deadline = time.monotonic() + timeout
    while (row := row_for(api, request_id))["finishedAt"] is None:
        assert time.monotonic() < deadline, f"audit row {request_id} never finished: {row}"
        time.sleep(0.1)
    return row


def test_the_spec_quickstart_with_curl(
    api: OperatorApi, operator_key: str, restate: RestateStack
) -> None:
    env = {**os.environ, "DALP_API_URL": api.url, "DALP_API_KEY": operator_key}
    doctor = (
        'curl -sS -X POST "$DALP_API_URL/api/v2/admin/operator/restate/doctor" '
        '-H "X-Api-Key: $DALP_API_KEY" -H "Content-Type: application/json" -d \'{}\''
    )
    redeploy = (
        'curl -sS -X POST "$DALP_API_URL/api/v2/admin/operator/restate/force-redeploy" '
        '-H "X-Api-Key: $DALP_API_KEY" -H "Content-Type: application/json" '
        '-d \'{"serviceUrl": "' + restate.service_url + '", "force": true}\''
    )

    def curl(command: str) -> dict[str, Any]:
        out = subprocess.run(
            ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        body: dict[str, Any] = json.loads(out.stdout)
        return body

    before = curl(doctor)
    assert before["admin"]["status"] == "ok"
    assert [d["id"] for d in before["deployments"]["items"]] == [restate.deployment_id]
    assert curl(redeploy) == {"acknowledged": True, "deploymentId": restate.deployment_id}
    after = curl(doctor)
    assert set(after) == {"ingress", "admin", "deployments", "services", "invocations"}
    assert after["deployments"]["items"][0]["serviceUrl"] == restate.service_url + "/"


@pytest.mark.parametrize("route", ROUTES)
def test_missing_unknown_and_revoked_keys_are_401(api: OperatorApi, route: str) -> None:
    revoked = api.create_key(actor="u_rev", role="ops", permissions=["system:operate"])
    subprocess.run(
        [CLI, "api-keys", "revoke", revoked.split("_")[1]], env=api.env, check=True, timeout=60
    )
    for key in (None, "rrk_nope_nope", "garbage", revoked):
        response = post(api, route, {}, key)
        assert response.status_code == 401, (key, response.text)
        assert response.json()["code"] == "UNAUTHENTICATED"
        assert response.json()["requestId"] == response.headers["x-request-id"]


def test_a_key_without_system_operate_is_403_on_every_route(api: OperatorApi) -> None:
    reader = api.create_key(actor="user_reader", role="viewer", permissions=["system:read"])
    for route in ROUTES:
        response = post(api, route, {}, reader, **{"X-Request-Id": f"forbidden-{route}"})
        assert response.status_code == 403
        assert response.json()["code"] == "FORBIDDEN"
        row = row_for(api, f"forbidden-{route}")
        assert (row["actorUserId"], row["roleAtTime"], row["outcome"]) == (
            "user_reader",
            "viewer",
            "failure",
        )
        assert row["error"]["code"] == "FORBIDDEN"


def test_error_codes_carry_status_and_request_id(
    api: OperatorApi, operator_key: str, restate: RestateStack
) -> None:
    not_found = post(
        api, "cleanup-stale-deployments", {"serviceUrl": "http://127.0.0.1:1/x"}, operator_key
    )
    assert not_found.status_code == 404
    assert not_found.json()["code"] == "RESTATE_DEPLOYMENT_NOT_FOUND"
    assert not_found.json()["requestId"] == not_found.headers["x-request-id"]

    key = f"api_{uuid.uuid4().hex[:8]}"
    invocation_id = submit_workflow(restate.ingress_url, key, "succeed")
    wait_for_status(restate.admin_url, invocation_id, "completed")
    blocked = post(
        api,
        "recover-stuck-workflow",
        {"serviceName": "IdentityRecoveryWorkflow", "serviceKey": key},
        operator_key,
        **{"X-Request-Id": "incident-42.blocked"},
    )
    assert blocked.status_code == 409
    assert blocked.headers["x-request-id"] == "incident-42.blocked"
    assert blocked.json() == {
        "code": "RESTATE_WORKFLOW_RETRY_BLOCKED",
        "message": "Workflow retry is blocked: the workflow already completed successfully",
        "data": {"reason": "already-succeeded", "invocationIds": [invocation_id]},
        "requestId": "incident-42.blocked",
    }
    weird = post(api, "doctor", {}, operator_key, **{"X-Request-Id": "bad id <script>"})
    assert weird.headers["x-request-id"].startswith("req_")


def test_admin_unreachable_is_503(prefect_server: PrefectServer, restate: RestateStack) -> None:
    home = SESSION_DIR / "api-down"
    home.mkdir(exist_ok=True)
    down = OperatorApi(
        env=api_env(None, f"sqlite:///{home / 'audit.db'}", RESTATE_ADMIN_URL=closed_port_url()),
        log_path=home / "api.log",
    ).start()
    try:
        key = down.create_key(actor="u", role="ops", permissions=["system:operate"])
        doctor = post(down, "doctor", {}, key)
        assert doctor.status_code == 200  # the doctor reports; it does not fail
        assert doctor.json()["admin"]["status"] == "unreachable"
        write = post(down, "force-redeploy", {"serviceUrl": restate.service_url}, key)
        assert write.status_code == 503
        assert write.json()["code"] == "RESTATE_ADMIN_UNREACHABLE"
        assert audit_rows(down, 1)[0]["error"]["code"] == "RESTATE_ADMIN_UNREACHABLE"
    finally:
        down.stop()


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("force-redeploy", {"serviceUrl": "not a url"}),
        ("force-redeploy", {"serviceUrl": "ftp://host/x"}),
        ("force-redeploy", {"serviceUrl": "http://host:99999/"}),
        ("cleanup-stale-deployments", {"serviceUrl": "http://host:0/"}),
        ("force-redeploy", {"serviceUrl": "http://h:9080", "force": "yes"}),
        ("force-redeploy", {}),
        ("cleanup-stale-deployments", {"serviceUrl": "http://h/", "forceDrain": 1}),
        ("recover-stuck-workflow", {"serviceName": "Bad Name", "serviceKey": "k"}),
        ("recover-stuck-workflow", {"serviceName": "W", "serviceKey": "k' OR 1=1"}),
        ("recover-stuck-workflow", {"serviceName": "W", "serviceKey": "k", "extra": 1}),
        ("doctor", {"unexpected": True}),
        ("recover-stuck-workflow", b"{not json"),
        ("recover-stuck-workflow", b"\xff\xfe\x00"),
        ("recover-stuck-workflow", [1, 2]),
        ("recover-stuck-workflow", b"[" * 20_000 + b"]" * 20_000),
        ("cleanup-stale-deployments", {"serviceUrl": "http://h/../../etc/passwd", "x": {"y": [1]}}),
        ("recover-stuck-workflow", {"serviceName": "../admin", "serviceKey": "%2e%2e"}),
    ],
)
def test_bad_input_is_400_with_field_errors_and_an_audit_row(
    api: OperatorApi, operator_key: str, route: str, body: Any
) -> None:
    request_id = f"bad-{uuid.uuid4().hex[:8]}"
    response = post(api, route, body, operator_key, **{"X-Request-Id": request_id})

    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["code"] == "INVALID_REQUEST"
    assert payload["data"]["errors"]
    assert "Traceback" not in response.text
    row = row_for(api, request_id)
    assert row["outcome"] == "failure" and row["error"]["code"] == "INVALID_REQUEST"
    assert row["flowRunId"] is None  # nothing ran


def test_oversized_bodies_are_413(api: OperatorApi, operator_key: str) -> None:
    huge = {"serviceName": "W", "serviceKey": "k", "pad": "x" * 70_000}
    response = post(api, "recover-stuck-workflow", huge, operator_key)
    assert response.status_code == 413
    assert response.json()["code"] == "PAYLOAD_TOO_LARGE"


def test_audit_rows_hold_every_field_for_success_and_failure(
    api: OperatorApi, operator_key: str, restate: RestateStack
) -> None:
    key = f"audit_{uuid.uuid4().hex[:8]}"
    invocation_id = submit_workflow(restate.ingress_url, key, "fail")
    wait_for_status(restate.admin_url, invocation_id, "completed")
    body = {"serviceName": "IdentityRecoveryWorkflow", "serviceKey": key}
    ok = post(
        api,
        "recover-stuck-workflow",
        body,
        operator_key,
        **{"X-Request-Id": f"ok-{key}", "X-Operator-Reason": "INC-7 replay"},
    )
    assert ok.status_code == 200 and ok.json() == {"acknowledged": True}
    again = post(api, "force-redeploy", {"serviceUrl": closed_port_url()}, operator_key)
    assert again.status_code == 503

    row = row_for(api, f"ok-{key}")
    assert row["actorUserId"] == "user_ops_1" and row["roleAtTime"] == "platform-operator"
    assert row["route"] == "recover-stuck-workflow"
    assert row["arguments"] == body
    assert row["reason"] == "INC-7 replay"
    assert row["outcome"] == "success" and row["error"] is None
    assert row["startedAt"] <= row["finishedAt"]
    assert uuid.UUID(row["flowRunId"])
    failed = row_for(api, again.headers["x-request-id"])
    assert failed["outcome"] == "failure"
    assert failed["error"]["code"] == "RESTATE_ADMIN_UNREACHABLE"
    assert "META0003" in failed["error"]["message"]
    assert uuid.UUID(failed["flowRunId"])


def test_a_credentialed_service_url_reaches_restate_but_no_file_we_wrote(
    api: OperatorApi,
    operator_key: str,
    restate: RestateStack,
    prefect_server: PrefectServer,
    tmp_path: Path,
) -> None:
    password = f"pw{uuid.uuid4().hex}"
    service = SampleService(tmp_path / "secret-svc").start()
    deployment_id = None
    try:
        url = service.url.replace("http://", f"http://operator:{password}@")
        response = post(
            api, "force-redeploy", {"serviceUrl": url}, operator_key, **{"X-Request-Id": "leak-1"}
        )
        assert response.status_code == 200, response.text
        deployment_id = response.json()["deploymentId"]
        registered = httpx.get(f"{restate.admin_url}/deployments", timeout=10).json()
        uris = {d["id"]: d["uri"] for d in registered["deployments"]}
        assert password in uris[deployment_id]  # Restate got the credentials intact
        post(api, "doctor", {}, operator_key, **{"X-Request-Id": "leak-doctor"})
        finished_row_for(api, "leak-doctor")  # its flow run is recorded too before we search
        cleanup = post(
            api, "cleanup-stale-deployments", {"serviceUrl": "http://127.0.0.1:1/"}, operator_key
        )
        assert cleanup.status_code == 404
        assert password not in cleanup.text
    finally:
        if deployment_id is not None:
            httpx.delete(f"{restate.admin_url}/deployments/{deployment_id}?force=true", timeout=10)
        service.stop()

    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
    written = [SESSION_DIR / "api", prefect_server.home, SESSION_DIR / "prefect-client"]
    leaks = [
        str(path)
        for root in written
        for path in root.rglob("*")
        if path.is_file() and password.encode() in path.read_bytes()
    ]
    assert leaks == []
    row = row_for(api, "leak-1")  # the very row of the credentialed registration
    assert row["arguments"] == {
        "serviceUrl": service.url.replace("http://", "http://REDACTED@"),
        "force": True,
    }


def test_no_credential_in_any_form_reaches_a_file_we_wrote(
    api: OperatorApi, operator_key: str, prefect_server: PrefectServer
) -> None:
    """Credentials in the forms a client library accepts (spaces and non-ASCII in the user
    information, a secret query parameter) and in free text (a URL and a password=... pair in
    the operator's reason): in no answer, and in no file the API or Prefect wrote."""
    secret = {name: uuid.uuid4().hex for name in ("userinfo", "token", "reason_url", "pair")}
    odd_url = f"http://op er:pw \u00fc{secret['userinfo']}@127.0.0.1:1/v1?token={secret['token']}"
    reason: bytes = (
        f"INC-9: per http://bob:{secret['reason_url']}@wiki.example/x, "
        f"password={secret['pair']} rotated"
    ).encode()
    odd: dict[str, str | bytes] = {"X-Operator-Reason": reason}
    answers = [
        post(
            api,
            "force-redeploy",
            {"serviceUrl": odd_url},
            operator_key,
            **{**odd, "X-Request-Id": "odd-1"},
        ),
        post(
            api,
            "doctor",
            {},
            operator_key,
            **{**odd, "X-Request-Id": "odd-2"},
        ),
        post(api, "cleanup-stale-deployments", {"serviceUrl": odd_url}, operator_key),
    ]
    finished_row_for(api, "odd-2")
    row = row_for(api, "odd-1")

    assert [a.status_code for a in answers] == [400, 200, 404], [a.text for a in answers]
    assert answers[0].json()["code"] == "INVALID_REQUEST"  # Restate refused it with a 4xx
    assert row["reason"] == ("INC-9: per http://REDACTED@wiki.example/x, password=REDACTED rotated")
    assert row["arguments"]["serviceUrl"] == "http://REDACTED@127.0.0.1:1/v1?token=REDACTED"
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
    written = [SESSION_DIR / "api", prefect_server.home, SESSION_DIR / "prefect-client"]
    files = [p for root in written for p in root.rglob("*") if p.is_file()]
    for name, value in secret.items():
        assert all(value not in a.text for a in answers), name
        leaks = [str(p) for p in files if value.encode() in p.read_bytes()]
        assert leaks == [], (name, leaks)


def test_audit_list_cli_prints_newest_first_in_camel_case(
    api: OperatorApi, operator_key: str
) -> None:
    post(api, "doctor", {}, operator_key, **{"X-Request-Id": "cli-list-1"})
    post(api, "doctor", {}, operator_key, **{"X-Request-Id": "cli-list-2"})
    rows = audit_rows_from_cli(api, 2)
    assert [r["requestId"] for r in rows] == ["cli-list-2", "cli-list-1"]
    assert set(rows[0]) == {
        "id",
        "actorUserId",
        "roleAtTime",
        "route",
        "arguments",
        "reason",
        "startedAt",
        "finishedAt",
        "outcome",
        "error",
        "requestId",
        "flowRunId",
    }


def test_openapi_document_lists_the_four_routes(api: OperatorApi) -> None:
    document = httpx.get(f"{api.url}/openapi.json", timeout=10).json()
    assert {f"{PREFIX}/{r}" for r in ROUTES} <= set(document["paths"])


def test_the_doctor_answers_first_and_records_exactly_that_readout_as_a_flow_run(
    api: OperatorApi, operator_key: str, prefect_server: PrefectServer
) -> None:
    from restate_recovery.doctor.render import readout_markdown
    from restate_recovery.models import DoctorReadout

    response = post(api, "doctor", {}, operator_key, **{"X-Request-Id": "recorded-doctor"})
    assert response.status_code == 200
    answered = DoctorReadout.model_validate(response.json())

    row = finished_row_for(api, "recorded-doctor")
    assert (row["route"], row["outcome"], row["error"]) == ("doctor", "success", None)
    run = httpx.get(f"{prefect_server.api_url}/flow_runs/{row['flowRunId']}", timeout=10).json()
    assert run["state_type"] == "COMPLETED"
    recorded = run["parameters"]["answer"]
    assert (recorded["readout"], recorded["actor"]) == (response.json(), "user_ops_1")
    artifacts = artifacts_of(prefect_server.api_url, row["flowRunId"])
    (artifact,) = [a["data"] for a in artifacts]
    assert artifact.startswith("# Restate doctor: ")  # the verdict first
    component_tables = readout_markdown(answered).split("| component |", 1)[1]
    assert artifact.split("| component |", 1)[1] == component_tables  # exactly what was answered


def test_the_doctor_answers_when_prefect_is_down_and_the_row_says_no_run(
    restate: RestateStack,
) -> None:
    down = closed_port_url() + "/api"
    with side_api("api-no-prefect", restate, PREFECT_API_URL=down) as (server, key):
        response = post(server, "doctor", {}, key, **{"X-Request-Id": "no-prefect"})
        assert response.status_code == 200
        assert response.json()["admin"]["status"] == "ok"
        row = finished_row_for(server, "no-prefect")
        assert (row["outcome"], row["flowRunId"]) == ("success", None)
    assert "doctor answer no-prefect was not recorded in Prefect" in server.log_path.read_text()


def test_the_doctor_without_an_admin_url_is_503_and_a_failed_run(
    prefect_server: PrefectServer,
) -> None:
    error = {"code": "RESTATE_ADMIN_UNREACHABLE", "message": "RESTATE_ADMIN_URL is not set"}
    with side_api("api-no-admin-url", None) as (server, key):
        response = post(server, "doctor", {}, key, **{"X-Request-Id": "no-admin-url"})
        assert response.status_code == 503
        assert response.json() == {**error, "requestId": "no-admin-url"}
        row = finished_row_for(server, "no-admin-url")
        assert (row["outcome"], row["error"]) == ("failure", error)
        run = httpx.get(f"{prefect_server.api_url}/flow_runs/{row['flowRunId']}", timeout=10)
        assert run.json()["state_type"] == "FAILED"


def test_the_api_without_a_prefect_server_fails_clearly_when_the_embedded_one_cannot_start(
    restate: RestateStack, tmp_path: Path
) -> None:
    """No PREFECT_API_URL: the API runs beside the embedded Prefect server (tests/test_up.py);
    with the embedded port taken by something else, it says so, exits 1, and leaves nothing."""
    import socket

    env = api_env(restate, f"sqlite:///{tmp_path / 'audit.db'}")
    env.pop("PREFECT_API_URL", None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env.update(
            RECOVERY_DATA_DIR=str(tmp_path / "data"),
            RECOVERY_EMBEDDED_PREFECT_PORT=str(taken.getsockname()[1]),
        )
        result = subprocess.run(
            [CLI, "api", "--port", "1"], env=env, capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 1, result.stderr
    assert "prefect server exited with" in result.stderr
    assert str(tmp_path / "data" / "control-plane" / "logs" / "prefect-server.log") in result.stderr


def test_stopping_the_api_waits_for_doctor_answers_to_be_recorded(
    prefect_server: PrefectServer, restate: RestateStack
) -> None:
    with side_api("api-drain", restate) as (server, key):
        response = post(server, "doctor", {}, key, **{"X-Request-Id": "drained"})
        assert response.status_code == 200
        # leaving the block stops the API (SIGTERM) while the answer's run is being recorded
    row = row_for(server, "drained")
    assert row["finishedAt"] is not None and uuid.UUID(row["flowRunId"])


def test_the_api_audits_into_postgresql(
    prefect_server: PrefectServer, restate: RestateStack, postgres_url: str
) -> None:
    home = SESSION_DIR / "api-pg"
    home.mkdir(exist_ok=True)
    server = OperatorApi(env=api_env(restate, postgres_url), log_path=home / "api.log").start()
    try:
        key = server.create_key(actor="pg_operator", role="ops", permissions=["system:operate"])
        response = post(server, "doctor", {}, key, **{"X-Request-Id": "pg-doctor"})
        assert response.status_code == 200
        row = finished_row_for(server, "pg-doctor")
        assert (row["actorUserId"], row["route"], row["outcome"]) == (
            "pg_operator",
            "doctor",
            "success",
        )
        assert uuid.UUID(row["flowRunId"])
    finally:
        server.stop()


def test_metrics_are_scraped_and_the_example_alerts_reach_the_alert_route(
    api: OperatorApi, operator_key: str
) -> None:
    """GET /metrics in Prometheus' format: the attempts by route and outcome, their durations,
    the last readout's components; no key, actor or URL in it. The example rule file's alerts
    use only metrics that are there, and their Alertmanager webhook is taken by /alerts."""
    import yaml
    from prometheus_client.parser import text_string_to_metric_families

    assert post(api, "doctor", {}, operator_key).status_code == 200
    assert post(api, "recover-stuck-workflow", {"serviceName": "Bad Name", "serviceKey": "k"},
                operator_key).status_code == 400  # fmt: skip

    def scrape() -> dict[str, list[Any]]:
        response = httpx.get(f"{api.url}/metrics", timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert operator_key not in response.text and "user_ops_1" not in response.text
        assert "127.0.0.1" not in response.text
        return {f.name: f.samples for f in text_string_to_metric_families(response.text)}

    def value(samples: list[Any], name: str, **labels: str) -> float:
        return float(
            sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())
        )

    deadline = time.monotonic() + 30
    families = scrape()
    while value(families.get("restate_recovery_attempts", []), "restate_recovery_attempts_total",
                route="doctor", outcome="success") < 1:  # fmt: skip
        assert time.monotonic() < deadline, families.get("restate_recovery_attempts")
        time.sleep(0.3)  # a doctor row is finished once its answer is recorded
        families = scrape()
    attempts = families["restate_recovery_attempts"]
    assert value(attempts, "restate_recovery_attempts_total",
                 route="recover-stuck-workflow", outcome="failure") >= 1  # fmt: skip
    durations = families["restate_recovery_attempt_duration_seconds"]
    assert value(durations, "restate_recovery_attempt_duration_seconds_count", route="doctor") >= 1
    status = families["restate_recovery_doctor_component_status"]
    for component in ("ingress", "admin", "deployments", "services", "invocations"):
        assert value(status, "restate_recovery_doctor_component_status",
                     component=component, status="ok") == 1  # fmt: skip
    assert families["restate_recovery_doctor_last_readout_timestamp_seconds"][0].value > 0

    rules = yaml.safe_load((PROJECT_DIR / "deployments/prometheus-alerts.yml").read_text())
    names = set(families) | {s.name for samples in families.values() for s in samples}
    alerts = []
    for rule in rules["groups"][0]["rules"]:
        used = set(re.findall(r"restate_recovery_[a-z_]+", rule["expr"]))
        assert used and used <= names, (rule["alert"], used - names)
        alerts.append({"status": "firing", "labels": {"alertname": rule["alert"], **rule["labels"]},
                       "annotations": rule["annotations"], "startsAt": "2026-12-01T10:00:00Z",
                       "fingerprint": f"fp-{rule['alert']}"})  # fmt: skip
    webhook = {"version": "4", "status": "firing", "receiver": "restate-recovery", "alerts": alerts}
    accepted = post(api, "alerts", webhook, operator_key)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {"acknowledged": True, "events": len(alerts)}


def test_a_scrape_reads_a_readout_when_the_last_is_old_with_no_row_and_no_run(
    prefect_server: PrefectServer, restate: RestateStack
) -> None:
    """An API nobody called the doctor on (the scheduled doctor runs on a worker): its first
    scrape reads a readout, so the component gauges are there; a scrape right after reuses it.
    Neither adds an audit row or a restate-doctor run (they answered nobody)."""
    from prometheus_client.parser import text_string_to_metric_families

    from restate_recovery import metrics

    def scrape(server: OperatorApi) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = httpx.get(f"{server.url}/metrics", timeout=30)
        assert response.status_code == 200
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(response.text)
            for s in f.samples
        }

    async def doctor_runs() -> int:
        async with get_client() as client:
            return await client.count_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["restate-doctor"]))
            )

    with side_api("api-scrape", restate) as (server, _):
        runs_before = asyncio.run(doctor_runs())
        first = scrape(server)
        status = "restate_recovery_doctor_component_status"
        for component in ("ingress", "admin", "deployments", "services", "invocations"):
            assert first[(status, (("component", component), ("status", "ok")))] == 1
        readouts = ("restate_recovery_doctor_readouts_total", ())
        assert first[readouts] == 1
        assert scrape(server)[readouts] == 1  # younger than READOUT_MAX_AGE_SECONDS: kept
        assert metrics.READOUT_MAX_AGE_SECONDS >= 10
        time.sleep(2)  # a run would have been recorded by now
        assert asyncio.run(doctor_runs()) == runs_before
        assert audit_rows(server, 50) == []
