"""The operator routes, under ``/api/v2/admin/operator/restate/``: the spec's four (doctor,
force-redeploy, cleanup-stale-deployments, recover-stuck-workflow), beside them
resume-paused-invocations, recover-stuck-workflows (many keys) and the read-only explain, and the
Alertmanager receiver.

Each takes the spec's body (camelCase, unknown fields refused) and answers with the spec's body.
A write runs its Prefect flow in this process and answers once the flow has finished; with
``?dryRun=true`` it only plans. The doctor answers as soon as its probes are done; its
``restate-doctor`` run is recorded right after.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel

from restate_recovery.alerts import AlertmanagerWebhook, alert_events, emit_events
from restate_recovery.api.deps import CallDep, DryRunDep, RunnerDep
from restate_recovery.api.errors import ERROR_RESPONSES, ErrorBody
from restate_recovery.audit import audited
from restate_recovery.explain import Explanation, explain_with_settings
from restate_recovery.models import DoctorReadout
from restate_recovery.paths import PREFIX
from restate_recovery.runbooks import (
    CLEANUP_STALE_DEPLOYMENTS,
    DOCTOR,
    FORCE_REDEPLOY,
    RECOVER_STUCK_WORKFLOW,
    RECOVER_STUCK_WORKFLOWS,
    RESUME_PAUSED_INVOCATIONS,
)
from restate_recovery.schemas import (
    Acknowledged,
    BatchRecovered,
    CleanupStaleDeploymentsRequest,
    DoctorRequest,
    DryRunResult,
    ExplainRequest,
    ForceRedeployRequest,
    RecoverStuckWorkflowRequest,
    RecoverStuckWorkflowsRequest,
    Redeployed,
    ResumedInvocations,
    ResumePausedInvocationsRequest,
)

router = APIRouter(prefix=PREFIX, responses=ERROR_RESPONSES)

Responses = dict[int | str, dict[str, Any]]
NOT_FOUND: Responses = {404: {"model": ErrorBody, "description": "RESTATE_DEPLOYMENT_NOT_FOUND"}}
BLOCKED: Responses = {
    409: {
        "model": ErrorBody,
        "description": "RESTATE_WORKFLOW_RETRY_BLOCKED (reason, invocationIds) or "
        "RESTATE_RECOVERY_IN_PROGRESS",
    }
}


@router.post("/doctor", response_model=DoctorReadout, summary=DOCTOR.summary)
async def doctor(call: CallDep, runner: RunnerDep, body: DoctorRequest | None = None) -> Response:
    # A validated DoctorReadout, serialized once for all the calls it answers (no re-validation).
    answer = await runner.doctor.answer_json(call.attempt({}))
    return Response(answer, media_type="application/json")


@router.post(
    "/force-redeploy",
    response_model=Redeployed | DryRunResult,
    responses=BLOCKED,
    summary=FORCE_REDEPLOY.summary,
)
async def force_redeploy(
    call: CallDep, runner: RunnerDep, body: ForceRedeployRequest, dry_run: DryRunDep = False
) -> dict[str, Any]:
    return await runner.run(FORCE_REDEPLOY, body, call, dry_run=dry_run)


@router.post(
    "/cleanup-stale-deployments",
    response_model=Acknowledged | DryRunResult,
    responses={**NOT_FOUND, **BLOCKED},
    summary=CLEANUP_STALE_DEPLOYMENTS.summary,
)
async def cleanup_stale_deployments(
    call: CallDep,
    runner: RunnerDep,
    body: CleanupStaleDeploymentsRequest,
    dry_run: DryRunDep = False,
) -> dict[str, Any]:
    return await runner.run(CLEANUP_STALE_DEPLOYMENTS, body, call, dry_run=dry_run)


@router.post(
    "/recover-stuck-workflow",
    response_model=Acknowledged | DryRunResult,
    responses=BLOCKED,
    summary=RECOVER_STUCK_WORKFLOW.summary,
)
async def recover_stuck_workflow(
    call: CallDep,
    runner: RunnerDep,
    body: RecoverStuckWorkflowRequest,
    dry_run: DryRunDep = False,
) -> dict[str, Any]:
    return await runner.run(RECOVER_STUCK_WORKFLOW, body, call, dry_run=dry_run)


@router.post(
    "/resume-paused-invocations",
    response_model=ResumedInvocations | DryRunResult,
    responses={**NOT_FOUND, **BLOCKED},
    summary=RESUME_PAUSED_INVOCATIONS.summary,
)
async def resume_paused_invocations(
    call: CallDep,
    runner: RunnerDep,
    body: ResumePausedInvocationsRequest,
    dry_run: DryRunDep = False,
) -> dict[str, Any]:
    return await runner.run(RESUME_PAUSED_INVOCATIONS, body, call, dry_run=dry_run)


@router.post(
    "/recover-stuck-workflows",
    response_model=BatchRecovered | DryRunResult,
    responses=BLOCKED,
    summary=RECOVER_STUCK_WORKFLOWS.summary,
)
async def recover_stuck_workflows(
    call: CallDep,
    runner: RunnerDep,
    body: RecoverStuckWorkflowsRequest,
    dry_run: DryRunDep = False,
) -> dict[str, Any]:
    return await runner.run(RECOVER_STUCK_WORKFLOWS, body, call, dry_run=dry_run)


@router.post(
    "/explain",
    response_model=Explanation,
    responses={404: {"model": ErrorBody, "description": "RESTATE_INVOCATION_NOT_FOUND"}},
    summary="Read-only: an invocation's (or a workflow key's) story and the runbook that fits",
)
async def explain(call: CallDep, body: ExplainRequest) -> Explanation:
    async with audited(call.attempt(body.to_json())):
        return await explain_with_settings(body)


class AlertsAccepted(BaseModel):
    acknowledged: bool = True
    events: int


@router.post(
    "/alerts",
    response_model=AlertsAccepted,
    summary="Alertmanager webhook receiver: each alert becomes a Prefect event",
)
async def alerts(call: CallDep, body: AlertmanagerWebhook) -> AlertsAccepted:
    events = alert_events(body)
    async with audited(call.attempt({"alerts": [e.resource.id for e in events]})):
        await emit_events(events)
    return AlertsAccepted(events=len(events))
