"""Runbook: restate-doctor (read-only).

Symptom: anything. Always run the doctor first, and again after any write runbook.
What it does: probes the Restate ingress, the admin API (and its version), the deployment list,
the service list and the invocation table, concurrently, each within its own timeout. A broken
component marks only itself ``degraded`` (error status, unexpected payload) or ``unreachable``
(refused, reset, timed out); the readout always comes back.
Guard: none needed, nothing is written. It fails only when RESTATE_ADMIN_URL is unset or invalid
(RESTATE_ADMIN_UNREACHABLE).
Through the operator API and the CLI the probes run at once, the answer is given as soon as they
are done, and that very readout is then recorded as a run of this flow, with the same artifact,
events and verdict (restate_recovery.run_record, over Prefect's REST API: no second probe).
Verify / undo: nothing to undo. The run leaves the readout as a markdown artifact, and emits a
Prefect event per finding (restate_recovery.findings) for automations to act on.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from restate_recovery.doctor import (
    ProbeSet,
    readout_markdown,
    resolve_endpoints,
    run_doctor,
    verdict,
)
from restate_recovery.findings import doctor_findings
from restate_recovery.models import DoctorReadout
from restate_recovery.run_record import ARTIFACT_DESCRIPTION, ARTIFACT_KEY
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
    readout = await run_doctor(resolve_endpoints(get_settings()), probes=PROBE_TASKS)
    await acreate_markdown_artifact(
        markdown=readout_markdown(readout),
        key=ARTIFACT_KEY,
        description=ARTIFACT_DESCRIPTION,
    )
    emit_findings(doctor_findings(readout, get_settings().restate_service_url))
    get_run_logger().info("doctor: %s", verdict(readout))
    return readout
