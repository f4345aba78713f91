"""The one write of each runbook, as a Prefect task. No retries: a write never retries blindly.

Each task opens its own admin client (write timeout), and in a dry run only plans. Service URLs
arrive redacted with a reference (see ``restate_recovery.credentials``) and are unsealed here,
right before Restate is called.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from restate_recovery import cleanup, recover, redeploy
from restate_recovery.client import RestateAdminClient
from restate_recovery.credentials import unseal
from restate_recovery.doctor import Endpoints
from restate_recovery.schemas import (
    Acknowledged,
    CleanupStaleDeploymentsRequest,
    DryRunResult,
    ForceRedeployRequest,
    PlannedStep,
    RecoverStuckWorkflowRequest,
    WriteOutcome,
)
from restate_recovery.settings import get_settings


def _admin(endpoints: Endpoints) -> RestateAdminClient:
    timeout = get_settings().recovery_write_timeout_seconds
    return RestateAdminClient.connect(endpoints.admin_url, timeout=timeout)


def _timeout() -> float:
    return get_settings().recovery_write_timeout_seconds


@task(name="register-deployment", cache_policy=NO_CACHE, retries=0)
async def register_deployment(
    endpoints: Endpoints,
    service_url: str,
    credentials_ref: str | None,
    force: bool,
    dry_run: bool,
) -> WriteOutcome:
    request = ForceRedeployRequest(service_url=unseal(service_url, credentials_ref), force=force)
    async with _admin(endpoints) as client:
        result = await redeploy.register(client, request, timeout=_timeout(), dry_run=dry_run)
    if isinstance(result, list):
        return WriteOutcome(result=DryRunResult(plan=result), plan=result)
    get_run_logger().info("registered %s as %s", service_url, result.deployment_id)
    return WriteOutcome(
        result=result,
        plan=[
            PlannedStep(action="register", target=service_url, detail=f"force={str(force).lower()}")
        ],
        details=[f"registered as {result.deployment_id}"],
    )


@task(name="clean-stale-deployments", cache_policy=NO_CACHE, retries=0)
async def clean_stale_deployments(
    endpoints: Endpoints,
    service_url: str,
    credentials_ref: str | None,
    force_drain: bool,
    dry_run: bool,
) -> WriteOutcome:
    logger = get_run_logger()
    request = CleanupStaleDeploymentsRequest(
        service_url=unseal(service_url, credentials_ref), force_drain=force_drain
    )
    settings = get_settings()
    async with _admin(endpoints) as client:
        plan = await cleanup.plan_cleanup(client, request, timeout=_timeout())
        steps = plan.steps()
        if dry_run:
            return WriteOutcome(result=DryRunResult(plan=steps), plan=steps)
        report = await cleanup.execute_cleanup(
            client,
            plan,
            timeout=_timeout(),
            drain_timeout=settings.recovery_drain_timeout_seconds,
        )
    details = [f"deleted: {', '.join(report.deleted) or 'none'}"]
    for deployment_id, killed in report.killed.items():
        details.append(f"killed pinned to {deployment_id}: {', '.join(killed)}")
    for deployment_id, why in report.failures.items():
        details.append(f"NOT deleted {deployment_id}: {why}")
        logger.warning("not deleted %s: %s", deployment_id, why)
    logger.info("kept %s, deleted %s", plan.keep.id, report.deleted or "none")
    return WriteOutcome(result=Acknowledged(), plan=steps, details=details)


@task(name="recover-workflow-key", cache_policy=NO_CACHE, retries=0)
async def recover_workflow_key(
    endpoints: Endpoints,
    service_name: str,
    service_key: str,
    dry_run: bool,
) -> WriteOutcome:
    request = RecoverStuckWorkflowRequest(service_name=service_name, service_key=service_key)
    async with _admin(endpoints) as client:
        plan = await recover.plan_recovery(client, request, timeout=_timeout())
        steps = plan.steps()
        if dry_run:
            return WriteOutcome(result=DryRunResult(plan=steps), plan=steps)
        report = await recover.execute_recovery(client, plan, timeout=_timeout())
    get_run_logger().info("recovered %s/%s: %s", service_name, service_key, report.done())
    return WriteOutcome(result=Acknowledged(), plan=steps, details=[report.done()])
