"""The one write of each runbook, as a Prefect task. No retries: a write never retries blindly.

Each task opens its own admin client (write timeout) and hands the request, as the flow got it,
to the package's write function; in a dry run that only plans. An approved run passes the plan
the approver saw: the write refuses (``RESTATE_RECOVERY_PLAN_CHANGED``) when it is no longer that.
What the write did is noted for a caller in this process before Prefect is told
(``execution.note_write``): if Prefect goes away now, the caller still knows the write was made.
"""

from __future__ import annotations

from collections.abc import Awaitable

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from restate_recovery.client import RestateAdminClient
from restate_recovery.doctor.probes import Endpoints
from restate_recovery.errors import OperatorError
from restate_recovery.execution import note_write
from restate_recovery.runbooks import bulk, cleanup, recover, redeploy, resume
from restate_recovery.schemas import (
    CleanupStaleDeploymentsRequest,
    ForceRedeployRequest,
    PlannedStep,
    RecoverStuckWorkflowRequest,
    RecoverStuckWorkflowsRequest,
    ResumePausedInvocationsRequest,
    WriteOutcome,
)
from restate_recovery.settings import get_settings


def _admin(endpoints: Endpoints) -> RestateAdminClient:
    return RestateAdminClient.connect(endpoints.admin_url, timeout=_timeout())


def _timeout() -> float:
    return get_settings().recovery_write_timeout_seconds


async def _noted(what: str, write: Awaitable[WriteOutcome]) -> WriteOutcome:
    try:
        outcome = await write
    except OperatorError as exc:
        note_write(error=exc)
        raise
    note_write(outcome)
    logger = get_run_logger()
    for line in outcome.details or [f"planned {len(outcome.plan)} steps"]:
        logger.info("%s: %s", what, line)
    return outcome


@task(name="register-deployment", cache_policy=NO_CACHE, retries=0)
async def register_deployment(
    endpoints: Endpoints,
    request: ForceRedeployRequest,
    dry_run: bool,
    approved: list[PlannedStep] | None = None,
) -> WriteOutcome:
    async with _admin(endpoints) as client:
        return await _noted(
            f"register {request.target}",
            redeploy.write(client, request, timeout=_timeout(), dry_run=dry_run, approved=approved),
        )


@task(name="clean-stale-deployments", cache_policy=NO_CACHE, retries=0)
async def clean_stale_deployments(
    endpoints: Endpoints,
    request: CleanupStaleDeploymentsRequest,
    dry_run: bool,
    approved: list[PlannedStep] | None = None,
) -> WriteOutcome:
    async with _admin(endpoints) as client:
        return await _noted(
            f"clean up beside {request.target}",
            cleanup.write(
                client,
                request,
                timeout=_timeout(),
                drain_timeout=get_settings().recovery_drain_timeout_seconds,
                dry_run=dry_run,
                approved=approved,
            ),
        )


@task(name="recover-workflow-key", cache_policy=NO_CACHE, retries=0)
async def recover_workflow_key(
    endpoints: Endpoints,
    request: RecoverStuckWorkflowRequest,
    dry_run: bool,
    approved: list[PlannedStep] | None = None,
) -> WriteOutcome:
    async with _admin(endpoints) as client:
        return await _noted(
            f"recover {request.target}",
            recover.write(client, request, timeout=_timeout(), dry_run=dry_run, approved=approved),
        )


@task(name="resume-invocations", cache_policy=NO_CACHE, retries=0)
async def resume_invocations(
    endpoints: Endpoints,
    request: ResumePausedInvocationsRequest,
    dry_run: bool,
    approved: list[PlannedStep] | None = None,
) -> WriteOutcome:
    async with _admin(endpoints) as client:
        return await _noted(
            f"resume {request.target}",
            resume.write(client, request, timeout=_timeout(), dry_run=dry_run, approved=approved),
        )


@task(name="recover-workflow-keys", cache_policy=NO_CACHE, retries=0)
async def recover_workflow_keys(
    endpoints: Endpoints,
    request: RecoverStuckWorkflowsRequest,
    dry_run: bool,
    approved: list[PlannedStep] | None = None,
) -> WriteOutcome:
    async with _admin(endpoints) as client:
        return await _noted(
            f"recover keys of {request.service_name}",
            bulk.write(client, request, timeout=_timeout(), dry_run=dry_run, approved=approved),
        )
