"""Runbook: cleanup-stale-deployments.

Symptom: doctor lists more than one deployment and you know which service URL should stay.
Guard: the doctor must reach the admin API; ``serviceUrl`` must exactly match a registered
deployment URL (else RESTATE_DEPLOYMENT_NOT_FOUND, listing the registered URLs; nothing deleted).
The one write: every other deployment is drained and deleted (see restate_recovery.runbooks.cleanup
for the drain rules and what ``forceDrain`` changes). Per-deployment failures are reported in the
incident record; the response stays ``{"acknowledged": true}``.
Verify: the doctor afterwards lists only the kept deployment (or says what remains and why).
Undo: re-register a deleted URL with force-redeploy (killed invocations stay killed).
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from pydantic import Field

from restate_recovery.models import AlertContext
from restate_recovery.runbooks import CLEANUP_STALE_DEPLOYMENTS, cleanup
from restate_recovery.schemas import CleanupStaleDeploymentsRequest
from tasks.runbook import Requested, failed_parameters, run_name, run_write_runbook
from tasks.writes import clean_stale_deployments


@flow(
    name="cleanup-stale-deployments",
    flow_run_name=run_name("cleanup-stale-deployments"),
    on_failure=[failed_parameters],
)
async def cleanup_stale_deployments(
    request: CleanupStaleDeploymentsRequest,
    operator: str = Field(min_length=1, max_length=255, description="Who runs this (user id)."),
    reason: str = Field(min_length=1, max_length=2000, description="Why (incident, ticket)."),
    dry_run: bool = True,
    require_approval: bool = False,
    alert: AlertContext | None = None,
) -> dict[str, Any] | State:
    """Keep the deployment whose URL matches exactly; drain and delete every other one.

    Args:
        request: The route's body: the exact registered service URL of the deployment to keep
            (copy it from the doctor, trailing slash included), and forceDrain, which kills
            invocations pinned to stale deployments instead of waiting for them to drain (also
            deleting a stale deployment that alone serves a service's latest revision). Use
            forceDrain only for known-dead stale deployments.
        operator: Who runs this (your user id); it signs the audit row of a run started here.
        reason: Why (an incident or ticket): the audit row and the incident record keep it.
        dry_run: Only plan: nothing is changed. On by default: turn it off to write.
        require_approval: Plan first, then pause until someone approves in the Prefect UI
            (set by the automations).
        alert: The alert behind this run (set by the automations; leave empty).
    """
    return await run_write_runbook(
        CLEANUP_STALE_DEPLOYMENTS,
        request,
        Requested(operator=operator, reason=reason, alert=alert),
        write=clean_stale_deployments,
        verify=cleanup.verify,
        dry_run=dry_run,
        require_approval=require_approval,
    )
