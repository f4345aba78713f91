"""Runbook: force-redeploy.

Symptom: doctor shows the live service URL missing from deployments, or its services need to be
registered again (a new schema, a moved service).
Guard: the doctor must reach the admin API (else RESTATE_ADMIN_UNREACHABLE, nothing written).
The one write: register ``serviceUrl`` with Restate, ``force`` sent explicitly (default true).
Nothing is drained or deleted. An unreachable service URL (Restate's META0003) fails clearly.
Verify: the doctor afterwards lists the returned deployment id at that URL.
Undo: register the previous URL again; remove extra deployments with cleanup-stale-deployments.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from pydantic import Field

from restate_recovery.models import AlertContext
from restate_recovery.runbooks import FORCE_REDEPLOY, redeploy
from restate_recovery.schemas import ForceRedeployRequest
from restate_recovery.settings import get_settings
from tasks.runbook import Requested, failed_parameters, run_name, run_write_runbook
from tasks.writes import register_deployment


@flow(
    name="force-redeploy",
    flow_run_name=run_name("force-redeploy"),
    on_failure=[failed_parameters],
)
async def force_redeploy(
    request: ForceRedeployRequest,
    operator: str = Field(min_length=1, max_length=255, description="Who runs this (user id)."),
    reason: str = Field(min_length=1, max_length=2000, description="Why (incident, ticket)."),
    dry_run: bool = True,
    require_approval: bool = False,
    alert: AlertContext | None = None,
) -> dict[str, Any] | State:
    """Register the live durable workflow service URL with Restate; returns the deployment id.

    Args:
        request: The route's body. Credentials in the service URL are never stored: give them
            to the operator API or the CLI, or set RESTATE_SERVICE_URL where the flow runs.
        operator: Who runs this (your user id); it signs the audit row of a run started here.
        reason: Why (an incident or ticket): the audit row and the incident record keep it.
        dry_run: Only plan: nothing is changed. On by default: turn it off to write.
        require_approval: Plan first, then pause until someone approves in the Prefect UI
            (set by the automations).
        alert: The alert behind this run (set by the automations; leave empty).
    """
    return await run_write_runbook(
        FORCE_REDEPLOY,
        request,
        Requested(operator=operator, reason=reason, alert=alert),
        write=register_deployment,
        verify=redeploy.verify,
        dry_run=dry_run,
        require_approval=require_approval,
        auto_approve_reason=redeploy.auto_approval(request, get_settings()),
    )
