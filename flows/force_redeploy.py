"""Runbook: force-redeploy.

Symptom: doctor shows the live service URL missing from deployments, or its services need to be
registered again (a new schema, a moved service).
Guard: the doctor must reach the admin API (else RESTATE_ADMIN_UNREACHABLE, nothing written).
The one write: register ``service_url`` with Restate, ``force`` sent explicitly (default true).
Nothing is drained or deleted. An unreachable service URL (Restate's META0003) fails clearly.
Verify: the doctor afterwards lists the returned deployment id at that URL.
Undo: register the previous URL again; remove extra deployments with cleanup-stale-deployments.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from restate_recovery.credentials import seal
from restate_recovery.doctor import resolve_endpoints
from restate_recovery.incident import IncidentRecord
from restate_recovery.models import ApiModel, DoctorReadout
from restate_recovery.schemas import ForceRedeployRequest, Redeployed, WriteOutcome
from restate_recovery.settings import get_settings
from restate_recovery.urls import redact_url
from tasks.runbook import run_write_runbook
from tasks.writes import register_deployment


def verify_registration(result: ApiModel, after: DoctorReadout) -> str:
    assert isinstance(result, Redeployed)
    listed = {d.id: d.service_url for d in after.deployments.items}
    if result.deployment_id in listed:
        return f"deployment {result.deployment_id} is registered at {listed[result.deployment_id]}"
    return (
        f"deployment {result.deployment_id} is NOT in the doctor's list "
        f"(deployments: {after.deployments.status})"
    )


def auto_approval(stored_url: str) -> str | None:
    """Auto-approval only for the configured live service URL, and only when enabled."""
    settings = get_settings()
    live = settings.restate_service_url
    if settings.recovery_auto_approve_redeploy and live and redact_url(live) == stored_url:
        return "force-redeploy of the configured RESTATE_SERVICE_URL (auto-approval enabled)"
    return None


@flow(name="force-redeploy", flow_run_name="force-redeploy/{service_url}")
async def force_redeploy(
    service_url: str,
    force: bool = True,
    dry_run: bool = False,
    require_approval: bool = False,
    credentials_ref: str | None = None,
) -> dict[str, Any]:
    """Register the live durable workflow service URL with Restate; returns the deployment id.

    Args:
        service_url: The live durable workflow service URL (absolute http/https). Credentials
            in it are never stored: give them to the CLI/API, or set RESTATE_SERVICE_URL.
        force: Send a forced registration (Restate's own default is false).
        dry_run: Only plan: Restate runs discovery against the URL and registers nothing.
        require_approval: Plan first, then pause until an operator approves in the Prefect UI
            (used by the automations).
        credentials_ref: Set by the CLI/API when the URL carried credentials; leave empty.
    """
    stored_url, sealed_ref = seal(service_url)  # never keep a credential in the record
    credentials_ref = credentials_ref or sealed_ref
    ForceRedeployRequest(service_url=service_url, force=force)  # refuse bad input up front
    endpoints = resolve_endpoints(get_settings())
    record = IncidentRecord(
        action="force-redeploy",
        parameters={"serviceUrl": stored_url, "force": force},
        dry_run=dry_run,
    )

    async def write(dry: bool) -> WriteOutcome:
        return await register_deployment(endpoints, stored_url, credentials_ref, force, dry)

    return await run_write_runbook(
        record=record,
        endpoints=endpoints,
        lock_target="deployments",
        write=write,
        require_approval=require_approval,
        auto_approve_reason=auto_approval(stored_url),
        verify=verify_registration,
    )
