"""Runbook: cleanup-stale-deployments.

Symptom: doctor lists more than one deployment and you know which service URL should stay.
Guard: the doctor must reach the admin API; ``service_url`` must exactly match a registered
deployment URL (else RESTATE_DEPLOYMENT_NOT_FOUND, listing the registered URLs; nothing deleted).
The one write: every other deployment is drained and deleted (see restate_recovery.cleanup for the
drain rules and what ``force_drain`` changes). Per-deployment failures are reported in the incident
record; the response stays ``{"acknowledged": true}``.
Verify: the doctor afterwards lists only the kept deployment (or says what remains and why).
Undo: re-register a deleted URL with force-redeploy (killed invocations stay killed).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from restate_recovery.credentials import seal
from restate_recovery.doctor import resolve_endpoints
from restate_recovery.incident import IncidentRecord
from restate_recovery.models import ApiModel, DoctorReadout
from restate_recovery.schemas import CleanupStaleDeploymentsRequest, WriteOutcome
from restate_recovery.settings import get_settings
from restate_recovery.urls import redact_url
from tasks.runbook import run_write_runbook
from tasks.writes import clean_stale_deployments


def verify_cleanup(kept_url: str) -> Any:
    def verify(_: ApiModel, after: DoctorReadout) -> str:
        others = [d for d in after.deployments.items if d.service_url != kept_url]
        kept = [d.id for d in after.deployments.items if d.service_url == kept_url]
        if after.deployments.status != "ok":
            return f"deployments are {after.deployments.status}: {after.deployments.error}"
        if not others:
            return f"only the kept deployment remains ({', '.join(kept)})"
        remaining = ", ".join(f"{d.id} ({redact_url(d.service_url)})" for d in others)
        return f"stale deployments remain: {remaining}"

    return verify


@flow(name="cleanup-stale-deployments", flow_run_name="cleanup-stale-deployments/{service_url}")
async def cleanup_stale_deployments(
    service_url: str,
    force_drain: bool = False,
    dry_run: bool = False,
    require_approval: bool = False,
    credentials_ref: str | None = None,
) -> dict[str, Any]:
    """Keep the deployment whose URL matches exactly; drain and delete every other one.

    Args:
        service_url: The exact registered service URL of the deployment to keep (copy it from
            the doctor's deployments.items[].serviceUrl, trailing slash included).
        force_drain: Kill invocations pinned to stale deployments instead of waiting for them
            to drain; also deletes a stale deployment that alone serves a service's latest
            revision. Use only for known-dead stale deployments.
        dry_run: Only plan: list what would be kept, drained, killed and deleted.
        require_approval: Plan first, then pause until an operator approves in the Prefect UI
            (used by the automations).
        credentials_ref: Set by the CLI/API when the URL carried credentials; leave empty.
    """
    stored_url, sealed_ref = seal(service_url)
    credentials_ref = credentials_ref or sealed_ref
    CleanupStaleDeploymentsRequest(service_url=service_url, force_drain=force_drain)
    endpoints = resolve_endpoints(get_settings())
    record = IncidentRecord(
        action="cleanup-stale-deployments",
        parameters={"serviceUrl": stored_url, "forceDrain": force_drain},
        dry_run=dry_run,
    )

    async def write(dry: bool) -> WriteOutcome:
        return await clean_stale_deployments(
            endpoints, stored_url, credentials_ref, force_drain, dry
        )

    return await run_write_runbook(
        record=record,
        endpoints=endpoints,
        lock_target="deployments",
        write=write,
        require_approval=require_approval,
        verify=verify_cleanup(stored_url),
    )
