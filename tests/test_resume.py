"""resume-paused-invocations against the real restate-server and the real SDK service: a
``FlakyWorkflow`` run fails retryably and pauses after two attempts; a second deployment of the
service is the fixed version, where a resumed run completes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from restate_recovery.doctor.findings import PAUSED, doctor_findings
from restate_recovery.errors import (
    DeploymentNotFoundError,
    InvalidRequestError,
    InvocationNotFoundError,
)
from restate_recovery.settings import get_settings
from tests.conftest import RestateStack
from tests.support.local_stack import (
    PrefectServer,
    SampleService,
    submit_workflow,
    wait_for_status,
)
from tests.support.runbooks import run_flow

pytestmark = [pytest.mark.restate, pytest.mark.prefect]

FLAKY = "FlakyWorkflow"


def status_of(admin_url: str, invocation_id: str) -> dict[str, Any]:
    rows = httpx.post(
        f"{admin_url}/query",
        json={
            "query": "SELECT status, completion_result, pinned_deployment_id FROM sys_invocation "
            f"WHERE id = '{invocation_id}'"
        },
        headers={"accept": "application/json"},
        timeout=10,
    ).json()["rows"]
    return dict(rows[0]) if rows else {}


def paused_run(stack: RestateStack, prefix: str = "paused") -> str:
    invocation_id = submit_workflow(stack.ingress_url, f"{prefix}_{uuid.uuid4().hex[:8]}", "x",
                                    workflow=FLAKY)  # fmt: skip
    wait_for_status(stack.admin_url, invocation_id, "paused")
    return invocation_id


@pytest.fixture
def fixed_service(
    tmp_path: Path, restate_env: RestateStack, settings_env: pytest.MonkeyPatch
) -> Iterator[SampleService]:
    """The fixed version of the service, not yet registered."""
    settings_env.setenv("RECOVERY_DRAIN_TIMEOUT_SECONDS", "2")
    get_settings.cache_clear()
    service = SampleService(tmp_path / "fixed", env={"SAMPLE_SERVICE_FIXED": "1"}).start()
    yield service
    service.stop()
    httpx.post(  # the original is the latest again, for the tests after this one
        f"{restate_env.admin_url}/deployments",
        json={"uri": restate_env.service_url, "force": True},
        timeout=30,
    )


async def test_a_paused_run_resumed_on_latest_completes_on_the_fixed_deployment(
    prefect_server: PrefectServer, restate_env: RestateStack, fixed_service: SampleService
) -> None:
    invocation_id = paused_run(restate_env)
    pinned = status_of(restate_env.admin_url, invocation_id).get("pinned_deployment_id")
    fixed_id = restate_env.server.register(fixed_service.url)  # the fix, now the latest

    result = await run_flow(
        "resume-paused-invocations", invocation_id=invocation_id, deployment="latest"
    )

    assert result == {"acknowledged": True, "resumed": [invocation_id], "skipped": []}
    deadline = time.monotonic() + 30
    while (now := status_of(restate_env.admin_url, invocation_id))["status"] != "completed":
        assert time.monotonic() < deadline, now
        time.sleep(0.2)
    assert now["completion_result"] == "success"
    assert now["pinned_deployment_id"] == fixed_id != pinned  # ran on the fix


async def test_only_paused_ones_are_touched_and_the_rest_listed_with_their_status(
    prefect_server: PrefectServer, restate_env: RestateStack
) -> None:
    done = submit_workflow(restate_env.ingress_url, f"ok_{uuid.uuid4().hex[:8]}", "succeed")
    wait_for_status(restate_env.admin_url, done, "completed")
    paused = paused_run(restate_env, "dry")

    skipped = await run_flow("resume-paused-invocations", invocation_id=done, deployment="keep")
    planned = await run_flow(
        "resume-paused-invocations", service_name=FLAKY, deployment="keep", dry_run=True
    )

    assert skipped == {
        "acknowledged": True,
        "resumed": [],
        "skipped": [{"id": done, "status": "completed"}],
    }
    assert planned["dryRun"] is True
    assert {"action": "resume", "target": paused, "detail": f"{FLAKY} on keep"} in planned["plan"]
    assert status_of(restate_env.admin_url, paused)["status"] == "paused"  # a dry run


async def test_a_named_deployment_must_exist_and_serve_the_service(
    prefect_server: PrefectServer, restate_env: RestateStack, tmp_path: Path
) -> None:
    paused = paused_run(restate_env, "named")
    gone = submit_workflow(restate_env.ingress_url, f"gone_{uuid.uuid4().hex[:8]}", "succeed")
    wait_for_status(restate_env.admin_url, gone, "completed")
    httpx.patch(f"{restate_env.admin_url}/invocations/{gone}/purge", timeout=10)
    other = SampleService(
        tmp_path / "only", env={"SAMPLE_SERVICE_ONLY": "IdentityRecoveryWorkflow"}
    )
    other.start()
    try:
        registered = httpx.post(
            f"{restate_env.admin_url}/deployments",
            json={"uri": other.url, "force": True},
            timeout=30,
        ).json()["id"]
        with pytest.raises(InvalidRequestError) as not_serving:
            await run_flow("resume-paused-invocations", invocation_id=paused, deployment=registered)
        with pytest.raises(DeploymentNotFoundError):
            await run_flow(
                "resume-paused-invocations", invocation_id=paused, deployment="dp_1nothere"
            )
        with pytest.raises(InvocationNotFoundError):
            await run_flow("resume-paused-invocations", invocation_id=gone, deployment="keep")
        with pytest.raises(InvalidRequestError) as not_an_id:
            await run_flow(
                "resume-paused-invocations", invocation_id="inv_1nothere", deployment="keep"
            )
    finally:
        httpx.delete(f"{restate_env.admin_url}/deployments/{registered}?force=true", timeout=10)
        other.stop()

    assert not_serving.value.errors == [
        {"field": "deployment", "message": f"does not serve {FLAKY}"}
    ]
    assert not_an_id.value.errors[0]["field"] == "invocationId"
    assert status_of(restate_env.admin_url, paused)["status"] == "paused"  # untouched


def test_the_request_takes_exactly_one_selection() -> None:
    from restate_recovery.schemas import ResumePausedInvocationsRequest, parse_request

    bodies: list[dict[str, object]] = [
        {},
        {"invocationId": "inv_1a", "serviceName": "S"},
        {"serviceKey": "k"},
        {"invocationId": "inv_1a", "deployment": "latest; drop"},
        {"serviceName": "S", "limit": 501},
    ]
    for body in bodies:
        with pytest.raises(InvalidRequestError):
            parse_request(ResumePausedInvocationsRequest, body)


async def test_the_doctor_finds_a_paused_run_and_names_the_runbook(
    prefect_server: PrefectServer, restate_env: RestateStack
) -> None:
    paused = paused_run(restate_env, "found")

    readout = await run_flow("doctor")

    (finding,) = [f for f in doctor_findings(readout, None) if f.event == PAUSED and paused in
                  f.payload["request"].values()]  # fmt: skip
    assert finding.runbook == "resume-paused-invocations"
    assert finding.payload["request"] == {"invocationId": paused, "deployment": "latest"}
    assert "paused" in finding.payload["reason"]
