"""force-redeploy: register the live service URL with Restate and return the deployment id.

It registers only: nothing is drained or deleted. ``force`` is always sent explicitly (Restate
treats an omitted one as false, which silently keeps an old schema). A URL Restate refuses as
such (a 4xx) is the caller's to fix (``INVALID_REQUEST``); one it cannot reach to discover is
``RESTATE_ADMIN_UNREACHABLE``, as the spec has it. A dry run asks Restate for a
``dry_run`` registration: discovery runs against the service and nothing is registered.
"""

from __future__ import annotations

from restate_recovery.client import RestateAdminClient
from restate_recovery.errors import (
    AdminUnreachableError,
    InvalidRequestError,
    RestateRejected,
    RestateUnreachable,
)
from restate_recovery.models import ApiModel, DoctorReadout
from restate_recovery.redaction import redact_text
from restate_recovery.schemas import (
    DryRunResult,
    ForceRedeployRequest,
    PlannedStep,
    Redeployed,
    WriteOutcome,
)
from restate_recovery.settings import Settings


def _refused(exc: RestateRejected, url: str) -> AdminUnreachableError | InvalidRequestError:
    if 400 <= exc.status_code < 500:  # Restate will not take this URL as it is: fix the input
        message = (
            f"Restate refused serviceUrl {redact_text(url)} ({exc.status_code}): {exc.message}"
        )
        return InvalidRequestError(message, [{"field": "serviceUrl", "message": exc.message}])
    if exc.restate_code == "META0003":
        return AdminUnreachableError(
            f"Restate could not reach the service at {redact_text(url)} to discover it "
            f"(META0003); the registration was not made: {exc.message}"
        )
    return AdminUnreachableError(
        f"Restate refused the registration of {redact_text(url)} "
        f"({exc.status_code} {exc.restate_code or ''}): {exc.message}".replace("  ", " ")
    )


async def write(
    client: RestateAdminClient,
    request: ForceRedeployRequest,
    *,
    timeout: float,
    dry_run: bool,
    approved: list[PlannedStep] | None = None,
) -> WriteOutcome:
    """Register the URL (or, in a dry run, let Restate discover it without registering). An
    approved plan is this same registration: nothing about it can change meanwhile."""
    del approved
    try:
        registered = await client.register_deployment(
            uri=request.service_url, force=request.force, dry_run=dry_run, timeout=timeout
        )
    except RestateUnreachable as exc:
        raise AdminUnreachableError(f"Restate admin API unreachable: {exc}") from exc
    except RestateRejected as exc:
        raise _refused(exc, request.service_url) from exc
    force = str(request.force).lower()
    if dry_run:
        names = ", ".join(str(s.get("name")) for s in registered.services) or "no services"
        plan = [
            PlannedStep(
                action="register",
                target=request.target,
                detail=f"force={force}; discovery found {names}",
            )
        ]
        return WriteOutcome(result=DryRunResult(plan=plan), plan=plan)
    return WriteOutcome(
        result=Redeployed(deployment_id=registered.id),
        plan=[PlannedStep(action="register", target=request.target, detail=f"force={force}")],
        details=[f"registered as {registered.id}"],
    )


def verify(request: ForceRedeployRequest, result: ApiModel, after: DoctorReadout) -> str:
    """Whether the doctor after lists the returned deployment id."""
    assert isinstance(result, Redeployed)
    listed = {d.id: d.service_url for d in after.deployments.items}
    if result.deployment_id in listed:
        return f"deployment {result.deployment_id} is registered at {listed[result.deployment_id]}"
    return (
        f"deployment {result.deployment_id} is NOT in the doctor's list "
        f"(deployments: {after.deployments.status})"
    )


def auto_approval(request: ForceRedeployRequest, settings: Settings) -> str | None:
    """Auto-approval only for the configured live service URL, and only when enabled."""
    live = settings.restate_service_url
    if settings.recovery_auto_approve_redeploy and live and live == request.service_url:
        return "force-redeploy of the configured RESTATE_SERVICE_URL (auto-approval enabled)"
    return None
