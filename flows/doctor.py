"""Runbook: restate-doctor (read-only).

Symptom: anything. Always run the doctor first, and again after any write runbook.
What it does: probes the Restate ingress, the admin API (and its version), the deployment list,
the service list and the invocation table, concurrently, each within its own timeout. A broken
component marks only itself ``degraded`` (error status, unexpected payload) or ``unreachable``
(refused, reset, timed out); the readout always comes back.
Guard: none needed, nothing is written. It fails only when RESTATE_ADMIN_URL is unset or invalid
(RESTATE_ADMIN_UNREACHABLE).
Through the operator API and the CLI the probes run at once and the answer is given as soon as
they are done; this flow then records that very readout (it does not probe again).
Verify / undo: nothing to undo. The run leaves the readout as a markdown artifact, and emits a
Prefect event per finding (restate_recovery.findings) for automations to act on.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from restate_recovery.doctor import (
    ANSWERED_READOUT,
    ProbeSet,
    readout_markdown,
    resolve_endpoints,
    run_doctor,
    unhealthy_components,
)
from restate_recovery.findings import doctor_findings
from restate_recovery.models import DoctorReadout
from restate_recovery.settings import get_settings
from tasks import probes
from tasks.events import emit_findings

PROBE_TASKS = ProbeSet(
    ingress=probes.probe_ingress,
    admin=probes.probe_admin,
    deployments=probes.probe_deployments,
    services=probes.probe_services,
    invocations=probes.probe_invocations,
)


@flow(name="restate-doctor", flow_run_name="restate-doctor", validate_parameters=False)
async def doctor() -> DoctorReadout:
    """Read-only readout of Restate: ingress, admin, deployments, services, invocations."""
    logger = get_run_logger()
    answered = ANSWERED_READOUT.get()
    if answered is None:
        readout = await run_doctor(resolve_endpoints(get_settings()), probes=PROBE_TASKS)
    else:
        logger.info(
            "recording the readout already answered (request %s)", answered.request_id or "CLI"
        )
        readout = answered.unwrap(fresh_error=True)
    await acreate_markdown_artifact(
        markdown=readout_markdown(readout),
        key="restate-doctor",
        description="Restate doctor readout",
    )
    emit_findings(doctor_findings(readout, get_settings().restate_service_url))
    not_ok = unhealthy_components(readout)
    logger.info("doctor: %s", "not ok: " + ", ".join(not_ok) if not_ok else "all ok")
    return readout
