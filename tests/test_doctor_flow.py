"""The restate-doctor flow, run for real against the session's Prefect server and Restate."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.sorting import FlowRunSort

from restate_recovery.errors import AdminUnreachableError
from restate_recovery.models import DoctorReadout
from restate_recovery.runbooks import RUNBOOKS
from tests.conftest import RestateStack
from tests.support.local_stack import PrefectServer, submit_workflow, wait_for_status
from tests.support.runbooks import run_flow

pytestmark = [pytest.mark.restate, pytest.mark.prefect]


async def latest_run_of(flow_name: str) -> tuple[str, str, str | None, list[str]]:
    """(flow run id, state type, state message, artifact keys) of the newest run of a flow."""
    async with get_client() as client:
        runs = (
            await client.read_flow_runs(  # the newest of this flow, whatever else the session ran
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=50,
            )
        )
        run = max(runs, key=lambda r: r.created or datetime.min.replace(tzinfo=UTC))
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
        assert run.state is not None
        return (
            str(run.id),
            run.state.type.value,
            run.state.message,
            [a.key or "" for a in artifacts],
        )


async def test_doctor_flow_returns_the_readout_and_records_the_run(
    prefect_server: PrefectServer, restate_env: RestateStack
) -> None:
    key = f"flow_{uuid.uuid4().hex[:8]}"
    invocation_id = submit_workflow(restate_env.ingress_url, key, "fail")
    wait_for_status(restate_env.admin_url, invocation_id, "completed")

    readout = await run_flow("doctor")

    assert isinstance(readout, DoctorReadout)
    assert {name: part.status for name, part in readout.components()} == dict.fromkeys(
        ("ingress", "admin", "deployments", "services", "invocations"), "ok"
    )
    assert any(f.service_key == key for f in readout.invocations.recent_failures)
    run_id, state, _, artifact_keys = await latest_run_of("restate-doctor")
    assert state == "COMPLETED"
    assert artifact_keys == ["restate-doctor"]
    async with get_client() as client:
        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(run_id)]))
        )
    assert sorted(t.name.rsplit("-", 1)[0] for t in tasks) == [
        "emit-findings",
        "probe-admin",
        "probe-deployments",
        "probe-ingress",
        "probe-invocations",
        "probe-services",
    ]


async def test_doctor_flow_without_admin_url_fails_with_the_code(
    prefect_server: PrefectServer, settings_env: pytest.MonkeyPatch
) -> None:
    settings_env.delenv("RESTATE_ADMIN_URL", raising=False)

    with pytest.raises(AdminUnreachableError):
        await run_flow("doctor")

    _, state, message, _ = await latest_run_of("restate-doctor")
    assert state == "FAILED"
    assert "RESTATE_ADMIN_UNREACHABLE" in (message or "")


def test_every_runbook_names_its_flow_and_deployment_as_prefect_sees_them() -> None:
    for runbook in RUNBOOKS:
        flow = runbook.flow()
        assert flow.name == runbook.flow_name
        assert runbook.deployment_name == f"{flow.name}/{runbook.deployment}"
        assert runbook.entrypoint.startswith(f"flows/{flow.fn.__name__}.py:")
