"""The one write of each runbook, as a Prefect task. No retries: a write never retries blindly.

Each task opens its own admin client (write timeout) and hands the request, as the flow got it,
to the package's write function; in a dry run that only plans.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from restate_recovery.client import RestateAdminClient
from restate_recovery.doctor.probes import Endpoints
from restate_recovery.runbooks import cleanup, recover, redeploy
from restate_recovery.schemas import (
    CleanupStaleDeploymentsRequest,
    ForceRedeployRequest,
    RecoverStuckWorkflowRequest,
    WriteOutcome,
)
from restate_recovery.settings import get_settings


def _admin(endpoints: Endpoints) -> RestateAdminClient:
    return RestateAdminClient.connect(endpoints.admin_url, timeout=_timeout())


def _timeout() -> float:
    return get_settings().recovery_write_timeout_seconds


def _logged(what: str, outcome: WriteOutcome) -> WriteOutcome:
    logger = get_run_logger()
    for line in outcome.details or [f"planned {len(outcome.plan)} steps"]:
        logger.info("%s: %s", what, line)
    return outcome


@task(name="register-deployment", cache_policy=NO_CACHE, retries=0)
async def register_deployment(
    endpoints: Endpoints, request: ForceRedeployRequest, dry_run: bool
) -> WriteOutcome:
    async with _admin(endpoints) as client:
        outcome = await redeploy.write(client, request, timeout=_timeout(), dry_run=dry_run)
    return _logged(f"register {request.target}", outcome)


@task(name="clean-stale-deployments", cache_policy=NO_CACHE, retries=0)
async def clean_stale_deployments(
    endpoints: Endpoints, request: CleanupStaleDeploymentsRequest, dry_run: bool
) -> WriteOutcome:
    async with _admin(endpoints) as client:
        outcome = await cleanup.write(
            client,
            request,
            timeout=_timeout(),
            drain_timeout=get_settings().recovery_drain_timeout_seconds,
            dry_run=dry_run,
        )
    return _logged(f"clean up beside {request.target}", outcome)


@task(name="recover-workflow-key", cache_policy=NO_CACHE, retries=0)
async def recover_workflow_key(
    endpoints: Endpoints, request: RecoverStuckWorkflowRequest, dry_run: bool
) -> WriteOutcome:
    async with _admin(endpoints) as client:
        outcome = await recover.write(client, request, timeout=_timeout(), dry_run=dry_run)
    return _logged(f"recover {request.target}", outcome)
