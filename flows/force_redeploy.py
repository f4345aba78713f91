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

from restate_recovery.runbooks import FORCE_REDEPLOY, redeploy
from restate_recovery.schemas import ForceRedeployRequest
from restate_recovery.settings import get_settings
from tasks.runbook import run_write_runbook
from tasks.writes import register_deployment


@flow(name="force-redeploy", flow_run_name="force-redeploy/{request.target}")
async def force_redeploy(
    request: ForceRedeployRequest, dry_run: bool = False, require_approval: bool = False
) -> dict[str, Any]:
    """Register the live durable workflow service URL with Restate; returns the deployment id.

    Args:
        request: The route's body. Credentials in the service URL are never stored: give them
            to the operator API or the CLI, or set RESTATE_SERVICE_URL where the flow runs.
        dry_run: Only plan: Restate runs discovery against the URL and registers nothing.
        require_approval: Plan first, then pause until an operator approves in the Prefect UI
            (used by the automations).
    """
    return await run_write_runbook(
        FORCE_REDEPLOY,
        request,
        write=register_deployment,
        verify=redeploy.verify,
        dry_run=dry_run,
        require_approval=require_approval,
        auto_approve_reason=redeploy.auto_approval(request, get_settings()),
    )
