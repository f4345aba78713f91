"""prefect.yaml deployed to a real Prefect server, run by a real process worker; alerts driving
the runbooks through automations, with an approval given as run input."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments.flow_runs import arun_deployment
from prefect.exceptions import PrefectHTTPStatusError
from prefect.flow_runs import aresume_flow_run
from sqlmodel import Session

from restate_recovery import store
from tests.conftest import SESSION_DIR
from tests.support.deployed import (
    Deployed,
    alert_body,
    deployed_stack,
    final_state,
    records_of,
    runs_of,
    send_alert,
    wait_for_run,
)
from tests.support.local_stack import (
    PROJECT_DIR,
    PrefectServer,
    SampleService,
    submit_workflow,
    wait_for_status,
)

pytestmark = [pytest.mark.restate, pytest.mark.prefect]

# A deployment run's engine renews its concurrency lease (300 s, fixed in Prefect 3.9.1's
# flow_engine) every 0.75 x 300 = 225 s; a run that lost its slot (a pause releases it) crashes at
# that renewal. A plan kept waiting past it shows the approval does not depend on that lease.
LEASE_RENEWAL_SECONDS = 0.75 * 300

BIN = Path(sys.executable).parent
WORKFLOW = "IdentityRecoveryWorkflow"


@contextmanager
def on_prefect(server: PrefectServer) -> Iterator[None]:
    """This process and what it starts talk to ``server`` (its API URL) for the block."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    before = os.environ["PREFECT_API_URL"]
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield
    finally:
        os.environ["PREFECT_API_URL"] = before


# Each test runs on a Prefect server on SQLite (the session's) and on one on PostgreSQL (the
# module's own, migrated by Prefect), as production runs it.
@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def deployed(request: pytest.FixtureRequest, sample_service: SampleService) -> Iterator[Deployed]:
    database = request.param
    fixture = "prefect_server" if database == "sqlite" else "prefect_on_postgres"
    server: PrefectServer = request.getfixturevalue(fixture)
    home = SESSION_DIR / f"deployed-{database}"
    with on_prefect(server), deployed_stack(home, sample_service.url) as stack:
        stack.prefect_database = database
        yield stack


def failed_key(deployed: Deployed, prefix: str) -> tuple[str, str]:
    key = f"{prefix}_{uuid.uuid4().hex[:8]}"
    invocation_id = submit_workflow(deployed.restate.ingress_url, key, "fail")
    wait_for_status(deployed.restate.admin_url, invocation_id, "completed")
    return key, invocation_id


def audit_rows(deployed: Deployed) -> list[dict[str, Any]]:
    with Session(store.engine_for(deployed.env["RECOVERY_DATABASE_URL"])) as session:
        return [store.audit_public(r) for r in store.list_attempts(session=session, limit=200)]


def invocations_of(deployed: Deployed, key: str) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{deployed.restate.admin_url}/query",
        json={"query": f"SELECT id FROM sys_invocation WHERE target_service_key = '{key}'"},
        headers={"accept": "application/json"},
        timeout=10,
    )
    rows: list[dict[str, Any]] = response.json()["rows"]
    return rows


async def test_the_doctor_schedule_exists_and_a_run_completes(deployed: Deployed) -> None:
    async with get_client() as client:
        deployment = await client.read_deployment_by_name("restate-doctor/doctor")
    (schedule,) = deployment.schedules
    assert schedule.slug == "restate-doctor-every-5-minutes" and schedule.active
    assert schedule.schedule.interval.total_seconds() == 300  # type: ignore[union-attr]
    assert deployment.enforce_parameter_schema

    flow_run = await arun_deployment("restate-doctor/doctor", timeout=180)

    assert flow_run.state is not None and flow_run.state.is_completed(), flow_run.state


WRITES = {
    "force-redeploy": "force-redeploy/register",
    "cleanup-stale-deployments": "cleanup-stale-deployments/cleanup",
    "recover-stuck-workflow": "recover-stuck-workflow/recover",
}


async def test_the_ui_forms_say_who_and_why_default_to_a_dry_run_and_refuse_what_the_api_refuses(
    deployed: Deployed,
) -> None:
    async with get_client() as client:
        for deployment_name in WRITES.values():
            deployment = await client.read_deployment_by_name(deployment_name)
            schema = deployment.parameter_openapi_schema or {}
            assert deployment.enforce_parameter_schema
            assert deployment.global_concurrency_limit is None  # no slot to lose while paused
            assert schema["properties"]["dry_run"]["default"] is True
            assert {"request", "operator", "reason"} <= set(schema["required"])
        recover = await client.read_deployment_by_name(WRITES["recover-stuck-workflow"])
        pattern_refused = client.create_flow_run_from_deployment(
            recover.id,
            parameters={
                "request": {"serviceName": "Identity Recovery;drop", "serviceKey": "k"},
                "operator": "erin",
                "reason": "INC-3",
            },
        )
        with pytest.raises(PrefectHTTPStatusError) as refused:  # before any run is created
            await pattern_refused
    assert refused.value.response.status_code == 409
    assert "does not match" in refused.value.response.text


async def test_manual_runs_of_each_write_deployment_are_named_and_audited(
    deployed: Deployed,
) -> None:
    key, _ = failed_key(deployed, "ui")
    who = {"operator": "erin", "reason": "INC-3 manual replay"}
    recovered = await arun_deployment(
        WRITES["recover-stuck-workflow"],
        parameters={
            "request": {"serviceName": WORKFLOW, "serviceKey": key},
            **who,
            "dry_run": False,
        },
        timeout=180,
    )
    registered = await arun_deployment(
        WRITES["force-redeploy"],
        parameters={"request": {"serviceUrl": deployed.service_url}, **who, "dry_run": False},
        timeout=180,
    )
    planned = await arun_deployment(  # dry_run left to its default
        WRITES["cleanup-stale-deployments"],
        parameters={"request": {"serviceUrl": deployed.service_url + "/"}, **who},
        timeout=180,
    )
    succeeded = f"uiok_{uuid.uuid4().hex[:8]}"
    wait_for_status(
        deployed.restate.admin_url,
        submit_workflow(deployed.restate.ingress_url, succeeded, "succeed"),
        "completed",
    )
    refused = await arun_deployment(
        WRITES["recover-stuck-workflow"],
        parameters={
            "request": {"serviceName": WORKFLOW, "serviceKey": succeeded},
            **who,
            "dry_run": False,
        },
        timeout=180,
    )
    bad_port = await arun_deployment(  # the schema cannot say "1-65535": the flow refuses it
        WRITES["force-redeploy"],
        parameters={"request": {"serviceUrl": "http://127.0.0.1:99999/"}, **who, "dry_run": False},
        timeout=180,
    )

    for flow_run in (recovered, registered, planned):
        assert flow_run.state is not None and flow_run.state.is_completed(), flow_run.state
    for flow_run in (refused, bad_port):
        assert flow_run.state is not None and flow_run.state.is_failed(), flow_run.state
    assert recovered.name == f"recover-stuck-workflow/{WORKFLOW}/{key}"
    assert planned.name == f"cleanup-stale-deployments/{deployed.service_url}/ (dry run)"
    assert invocations_of(deployed, key) == []
    rows = {r["flowRunId"]: r for r in audit_rows(deployed)}
    for flow_run in (recovered, registered, planned, refused):
        row = rows[str(flow_run.id)]
        assert (row["actorUserId"], row["roleAtTime"], row["reason"]) == (
            "erin",
            "prefect-ui",
            "INC-3 manual replay",
        )
        assert row["finishedAt"] is not None
    assert rows[str(refused.id)]["error"]["code"] == "RESTATE_WORKFLOW_RETRY_BLOCKED"
    assert rows[str(planned.id)]["arguments"]["dryRun"] is True
    assert rows[str(recovered.id)]["outcome"] == "success"
    (port_row,) = [r for r in audit_rows(deployed) if r["arguments"] == {"invalidParameters": True}]
    assert (port_row["actorUserId"], port_row["error"]["code"]) == ("erin", "INVALID_REQUEST")
    assert "out of range" in port_row["error"]["message"]


async def runs_for_key(key: str) -> list[FlowRun]:
    runs = await runs_of(WRITES["recover-stuck-workflow"])
    return [r for r in runs if r.name.startswith(f"recover-stuck-workflow/{WORKFLOW}/{key}")]


@pytest.mark.timeout(600)  # on SQLite it waits past Prefect's 225 s lease renewal on purpose
async def test_an_alert_leads_to_one_plan_that_waits_past_prefects_lease_then_one_write(
    deployed: Deployed,
) -> None:
    key, invocation_id = failed_key(deployed, "alerted")
    doctor_runs = {r.id for r in await runs_of("restate-doctor/doctor")}
    summary = f"terminal failures on {key}"

    send_alert(deployed, alert_body(summary))
    paused = await wait_for_run(WRITES["recover-stuck-workflow"], "PAUSED", set(), match=key)
    doctor = next(r for r in await runs_of("restate-doctor/doctor") if r.id not in doctor_runs)
    again = await arun_deployment("restate-doctor/doctor", timeout=120)  # the same finding
    started = paused.start_time or paused.created
    assert started is not None
    waited = (datetime.now(UTC) - started).total_seconds()
    if deployed.prefect_database == "sqlite":  # past its renewal (once: it is not the database's)
        await asyncio.sleep(max(0.0, LEASE_RENEWAL_SECONDS + 20 - waited))

    assert [r.id for r in await runs_for_key(key)] == [paused.id]  # one plan per key
    async with get_client() as client:
        still = await client.read_flow_run(paused.id)
    assert still.state is not None and still.state.type.value == "PAUSED", still.state
    assert paused.parameters["request"] == {"serviceName": WORKFLOW, "serviceKey": key}
    assert paused.parameters["alert"]["summary"] == summary
    assert paused.created_by is not None and paused.created_by.type == "AUTOMATION"
    assert doctor.parameters["alert"]["summary"] == summary
    assert any(summary in text for text in await records_of(doctor.id))
    assert again.state is not None and again.state.message is not None
    assert f"workflow:{WORKFLOW}:{key} (pending)" in again.state.message
    waiting = (await records_of(paused.id))[0]
    assert waiting.startswith(f"# Plan awaiting approval: recover-stuck-workflow {WORKFLOW}/{key}")
    assert "## Plan (nothing done yet)" in waiting and summary in waiting
    assert [r["id"] for r in invocations_of(deployed, key)] == [invocation_id]  # not yet
    notice = next(n for n in deployed.approvals.received if key in n.get("text", ""))
    assert notice["subject"] == f"Approval needed: recover-stuck-workflow {WORKFLOW}/{key}"
    assert f"purge {invocation_id}" in notice["text"] and str(paused.id) in notice["text"]

    await aresume_flow_run(
        paused.id, run_input={"decision": "approve", "approver": "alice", "reason": "INC-9 replay"}
    )
    state = await final_state(paused.id)

    assert state.is_completed(), state
    assert invocations_of(deployed, key) == []  # exactly one write did it
    (row,) = [r for r in audit_rows(deployed) if r["flowRunId"] == str(paused.id)]
    assert (row["actorUserId"], row["roleAtTime"], row["reason"]) == (
        "alice",
        "approver",
        "INC-9 replay",
    )
    assert row["outcome"] == "success" and row["arguments"]["approval"]["approver"] == "alice"
    done = (await records_of(paused.id))[0]
    assert done.startswith(f"# Incident record: recover-stuck-workflow {WORKFLOW}/{key}")
    assert "- approved by alice at " in done and ": INC-9 replay" in done
    assert "## Steps done" in done and "## Doctor after" in done
    assert any(
        r["route"] == "alerts" and r["actorUserId"] == "alert_bot" for r in audit_rows(deployed)
    )


async def test_a_rejection_ends_the_run_cancelled_and_the_key_quiet_until_a_new_alert(
    deployed: Deployed,
) -> None:
    key, invocation_id = failed_key(deployed, "rejected")
    send_alert(deployed, alert_body(f"failures on {key}"))
    first = await wait_for_run(WRITES["recover-stuck-workflow"], "PAUSED", set(), match=key)

    await aresume_flow_run(
        first.id, run_input={"decision": "reject", "approver": "bob", "reason": "not this one"}
    )
    rejected = await final_state(first.id)
    quiet = await arun_deployment("restate-doctor/doctor", timeout=120)  # scheduled: no alert
    await asyncio.sleep(5)
    # Besides the first, only runs that ended at once beside its pending plan (a finding of the
    # 5-minute schedule can land before the first run claimed the plan), and none after the
    # rejection: the key is quiet.
    others = [r for r in await runs_for_key(key) if r.id != first.id]
    send_alert(deployed, alert_body(f"failures on {key} again"))
    second = await wait_for_run(WRITES["recover-stuck-workflow"], "PAUSED", {first.id}, match=key)

    assert rejected.type.value == "CANCELLED", rejected  # a decision, not a crash
    assert "rejected by bob" in (rejected.message or "") and "not this one" in (
        rejected.message or ""
    )
    assert [r.id for r in others if r.created and r.created > rejected.timestamp] == []
    target = f"workflow:{WORKFLOW}:{key}"
    for other in others:  # refused beside the first's plan, and wrote nothing: by the finding's
        # state (pending), or at its claim: it planned before the first claimed and found that
        # plan waiting, or it started late (a busy worker) and found the first one rejected
        assert other.state is not None and other.state.type.value == "CANCELLED", other.state
        message = other.state.message or ""
        assert (
            f"{target} (pending)" in message
            or f"Not planned again: a plan for {target} already waits for approval (run {first.id})"
            in message
            or f"Not planned again: {target} was rejected by bob; quiet until " in message
        ), message
    assert quiet.state is not None and "(quiet)" in (quiet.state.message or "")
    assert second.id != first.id  # a new alert re-opens it
    (row,) = [r for r in audit_rows(deployed) if r["flowRunId"] == str(first.id)]
    assert (row["actorUserId"], row["outcome"], row["error"]["code"]) == (
        "bob",
        "failure",
        "RESTATE_RECOVERY_REJECTED",
    )
    assert [r["id"] for r in invocations_of(deployed, key)] == [invocation_id]  # nothing written
    record = (await records_of(first.id))[0]
    assert "- rejected by bob at " in record and "outcome: **rejected**" in record
    await aresume_flow_run(
        second.id, run_input={"decision": "reject", "approver": "bob", "reason": "still no"}
    )
    await final_state(second.id)


async def test_the_serve_entrypoint_serves_every_deployment_without_a_worker(
    deployed: Deployed,
) -> None:
    """Last in this module: the worker stops and the prefect.yaml deployments are deleted; the
    serve entrypoint registers the same deployments from the registry and runs each of them
    itself (the writes as dry runs), from a directory that is not the checkout."""
    from restate_recovery.runbooks import RUNBOOKS

    deployed.stop_worker()
    async with get_client() as client:
        for runbook in RUNBOOKS:
            deployment = await client.read_deployment_by_name(runbook.deployment_name)
            await client.delete_deployment(deployment.id)
    env = {**deployed.env, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    log_path = SESSION_DIR / f"deployed-{deployed.prefect_database}" / "serve.log"
    log = log_path.open("ab")
    server = subprocess.Popen(
        [sys.executable, str(PROJECT_DIR / "deployments" / "serve.py")],
        env=env,
        cwd=SESSION_DIR,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    key, _ = failed_key(deployed, "served")
    who = {"operator": "erin", "reason": "served"}
    parameters: dict[str, dict[str, Any]] = {
        "doctor": {},
        "force-redeploy": {"request": {"serviceUrl": deployed.service_url}, **who},
        "cleanup-stale-deployments": {"request": {"serviceUrl": deployed.service_url + "/"}, **who},
        "recover-stuck-workflow": {"request": {"serviceName": WORKFLOW, "serviceKey": key}, **who},
        "resume-paused-invocations": {"request": {"serviceName": "FlakyWorkflow"}, **who},
        "recover-stuck-workflows": {"request": {"serviceName": WORKFLOW}, **who},
    }
    try:
        deadline = time.monotonic() + 90
        while "being served" not in log_path.read_text(errors="replace"):
            assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.5)
        async with get_client() as client:
            doctor = await client.read_deployment_by_name("restate-doctor/doctor")
        (schedule,) = doctor.schedules
        assert schedule.slug == "restate-doctor-every-5-minutes"

        runs = {
            runbook.name: await arun_deployment(
                runbook.deployment_name, parameters=parameters[runbook.name], timeout=120
            )
            for runbook in RUNBOOKS
        }

        for name, flow_run in runs.items():
            assert flow_run.state is not None and flow_run.state.is_completed(), (name, flow_run)
        assert [r["id"] for r in invocations_of(deployed, key)]  # dry runs: nothing recovered
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
