"""Bounded load on loopback (nothing lost from the audit table) and schemathesis against the
operator API's OpenAPI document (no undocumented status, no 5xx but 503, never a stack trace)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from sqlmodel import Session

from restate_recovery import store
from restate_recovery.runbooks import RUNBOOKS
from tests.conftest import SESSION_DIR, RestateStack
from tests.support.helpers import closed_port_url
from tests.support.local_stack import OperatorApi, PrefectServer
from tools.load import run_load

pytestmark = [pytest.mark.restate, pytest.mark.prefect]


def make_api(name: str, env_extra: dict[str, str]) -> OperatorApi:
    home = SESSION_DIR / name
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTATE_")}
    env["RECOVERY_DATABASE_URL"] = f"sqlite:///{home / 'audit.db'}"
    env.update(env_extra)
    return OperatorApi(env=env, log_path=home / "api.log").start()


async def test_bounded_load_loses_no_audit_row_and_answers_only_documented_errors(
    prefect_server: PrefectServer, restate: RestateStack
) -> None:
    api = make_api(
        "api-load",
        {"RESTATE_ADMIN_URL": restate.admin_url, "RESTATE_INGRESS_URL": restate.ingress_url},
    )
    try:
        key = api.create_key(actor="load", role="ops", permissions=["system:operate"])
        result = await run_load(api.url, key, concurrency=20, seconds=10)
    finally:
        api.stop()

    assert result.attempts > 20
    assert set(result.statuses) <= {"200", "400", "404", "409"}, result.summary()
    assert set(result.codes) <= {
        "INVALID_REQUEST",
        "RESTATE_DEPLOYMENT_NOT_FOUND",
        "RESTATE_WORKFLOW_RETRY_BLOCKED",
    }
    with Session(store.engine_for(api.env["RECOVERY_DATABASE_URL"])) as session:
        rows = store.list_attempts(session=session, limit=100_000)
    assert len(rows) == result.attempts  # one row per attempt, none lost
    assert {r.request_id for r in rows} == set(result.request_ids)
    assert all(r.finished_at is not None and r.outcome for r in rows)


@pytest.fixture(scope="module")
def fuzz_api(prefect_server: PrefectServer) -> Iterator[tuple[OperatorApi, str]]:
    # The admin URL is a closed loopback port: generated URLs never make Restate call anything.
    api = make_api("api-fuzz", {"RESTATE_ADMIN_URL": closed_port_url()})
    key = api.create_key(actor="fuzz", role="ops", permissions=["system:operate"])
    yield api, key
    api.stop()


def fuzz(operation: Any, key: str) -> None:
    """Generated requests for one operation: only documented statuses, no 5xx but 503."""
    documented = {int(code) for code in operation.definition.raw["responses"]}

    @given(case=operation.as_strategy())
    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        response = case.call(headers={"X-Api-Key": key})
        where = (operation.label, response.status_code, response.text)
        assert response.status_code in documented, where
        assert response.status_code < 500 or response.status_code == 503, where
        assert "Traceback" not in response.text
        header = response.headers["x-request-id"]
        request_id = header[0] if isinstance(header, list) else header  # a list in schemathesis 4
        assert request_id
        if response.status_code != 200:
            assert response.json()["requestId"] == request_id

    check()


@pytest.mark.usefixtures("background_threads_own_random")
def test_the_operator_api_against_its_own_openapi_document(
    fuzz_api: tuple[OperatorApi, str],
) -> None:
    api, key = fuzz_api
    schema: Any = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(RUNBOOKS) + 2  # every runbook's route, alerts, explain
    for operation in operations:
        fuzz(operation, key)
