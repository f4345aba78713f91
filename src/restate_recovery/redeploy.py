"""force-redeploy: register the live service URL with Restate and return the deployment id.

It registers only: nothing is drained or deleted. ``force`` is always sent explicitly (Restate
treats an omitted one as false, which silently keeps an old schema). A dry run asks Restate for a
``dry_run`` registration: discovery runs against the service and nothing is registered.
"""

from __future__ import annotations

from restate_recovery.client import RestateAdminClient
from restate_recovery.errors import AdminUnreachableError, RestateRejected, RestateUnreachable
from restate_recovery.schemas import ForceRedeployRequest, PlannedStep, Redeployed
from restate_recovery.urls import redact_url


def _refused(exc: RestateRejected, url: str) -> AdminUnreachableError:
    if exc.restate_code == "META0003":
        return AdminUnreachableError(
            f"Restate could not reach the service at {redact_url(url)} to discover it "
            f"(META0003); the registration was not made: {exc.message}"
        )
    return AdminUnreachableError(
        f"Restate refused the registration of {redact_url(url)} "
        f"({exc.status_code} {exc.restate_code or ''}): {exc.message}".replace("  ", " ")
    )


async def register(
    client: RestateAdminClient, request: ForceRedeployRequest, *, timeout: float, dry_run: bool
) -> Redeployed | list[PlannedStep]:
    try:
        registered = await client.register_deployment(
            uri=request.service_url, force=request.force, dry_run=dry_run, timeout=timeout
        )
    except RestateUnreachable as exc:
        raise AdminUnreachableError(f"Restate admin API unreachable: {exc}") from exc
    except RestateRejected as exc:
        raise _refused(exc, request.service_url) from exc
    if dry_run:
        names = ", ".join(str(s.get("name")) for s in registered.services) or "no services"
        return [
            PlannedStep(
                action="register",
                target=redact_url(request.service_url),
                detail=f"force={str(request.force).lower()}; discovery found {names}",
            )
        ]
    return Redeployed(deployment_id=registered.id)
