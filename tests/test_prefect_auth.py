"""Prefect is spoken to through Prefect's own client only: a Prefect server that wants an auth
string (PREFECT_SERVER_API_AUTH_STRING) takes the operator API's alert events (Prefect's events
client, over its websocket) and doctor runs (Prefect's HTTP client) when the API has the string
(PREFECT_API_AUTH_STRING), and refuses them when it has not."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from restate_recovery import store
from restate_recovery.settings import DATA_DIR
from tests.conftest import SESSION_DIR, RestateStack
from tests.support.local_stack import OperatorApi, PrefectServer

pytestmark = [pytest.mark.restate, pytest.mark.prefect]

PREFIX = "/api/v2/admin/operator/restate"
AUTH = ("admin", f"s3cret-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def guarded_prefect() -> Iterator[PrefectServer]:
    server = PrefectServer(
        home=SESSION_DIR / "prefect-guarded",
        template_cache=DATA_DIR / "prefect-template",
        auth_string=":".join(AUTH),
    ).start()
    yield server
    server.stop()


def operator_api(
    name: str, prefect: PrefectServer, restate: RestateStack, auth: str
) -> OperatorApi:
    home = SESSION_DIR / name
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTATE_", "PREFECT_API"))}
    env.update(
        {
            "RESTATE_ADMIN_URL": restate.admin_url,
            "RESTATE_INGRESS_URL": restate.ingress_url,
            "RECOVERY_DATABASE_URL": f"sqlite:///{home / 'audit.db'}",
            "PREFECT_API_URL": prefect.api_url,
            "PREFECT_API_AUTH_STRING": auth,
        }
    )
    return OperatorApi(env=env, log_path=home / "api.log").start()


def alert(fingerprint: str) -> dict[str, Any]:
    return {
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "RestateDown"},
                "startsAt": "2026-12-01T08:00:00Z",
                "fingerprint": fingerprint,
            }
        ],
    }


def events_named(prefect: PrefectServer, resource_id: str) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{prefect.api_url}/events/filter",
        json={"filter": {"resource": {"id": [resource_id]}}, "limit": 10},
        auth=AUTH,
        timeout=10,
    )
    response.raise_for_status()
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def test_the_server_refuses_clients_without_the_auth_string(guarded_prefect: PrefectServer) -> None:
    bare = httpx.post(f"{guarded_prefect.api_url}/flow_runs/filter", json={}, timeout=10)
    authed = httpx.post(
        f"{guarded_prefect.api_url}/flow_runs/filter", json={}, auth=AUTH, timeout=10
    )
    assert (bare.status_code, authed.status_code) == (401, 200)


def test_alert_events_and_doctor_runs_reach_a_prefect_that_wants_an_auth_string(
    guarded_prefect: PrefectServer, restate: RestateStack
) -> None:
    api = operator_api("api-prefect-auth", guarded_prefect, restate, ":".join(AUTH))
    try:
        key = api.create_key(actor="alert_bot", role="automation", permissions=["system:operate"])
        fingerprint = uuid.uuid4().hex[:16]
        alerted = httpx.post(
            f"{api.url}{PREFIX}/alerts",
            json=alert(fingerprint),
            headers={"X-Api-Key": key},
            timeout=60,
        )
        doctor = httpx.post(
            f"{api.url}{PREFIX}/doctor",
            json={},
            headers={"X-Api-Key": key, "X-Request-Id": "guarded-doctor"},
            timeout=60,
        )
    finally:
        api.stop()  # waits for the doctor's record

    assert alerted.status_code == 200, alerted.text
    deadline = time.monotonic() + 30
    while not (found := events_named(guarded_prefect, f"alertmanager.alert.{fingerprint}")):
        assert time.monotonic() < deadline, "the alert event never reached Prefect"
        time.sleep(0.5)
    assert [e["event"] for e in found] == ["restate.alert.firing"]
    assert doctor.status_code == 200
    with Session(store.engine_for(api.env["RECOVERY_DATABASE_URL"])) as session:
        (row,) = [
            r for r in store.list_attempts(session=session) if r.request_id == "guarded-doctor"
        ]
    run = httpx.get(f"{guarded_prefect.api_url}/flow_runs/{row.flow_run_id}", auth=AUTH, timeout=10)
    assert run.status_code == 200 and run.json()["state_type"] == "COMPLETED"


def test_without_the_auth_string_prefect_refuses_and_the_answer_names_prefect(
    guarded_prefect: PrefectServer, restate: RestateStack
) -> None:
    api = operator_api("api-prefect-wrong-auth", guarded_prefect, restate, "admin:wrong")
    try:
        key = api.create_key(actor="alert_bot", role="automation", permissions=["system:operate"])
        refused = httpx.post(
            f"{api.url}{PREFIX}/alerts",
            json=alert(uuid.uuid4().hex[:16]),
            headers={"X-Api-Key": key},
            timeout=120,
        )
    finally:
        api.stop()

    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "PREFECT_UNAVAILABLE"
