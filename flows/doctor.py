"""Runbook: restate-doctor (read-only).

Symptom: anything. Always run the doctor first, and again after any write runbook.
What it does: probes the Restate ingress, the admin API (and its version), the deployment list,
the service list and the invocation table, concurrently, each within its own timeout; with
RESTATE_NODE_URLS set, the cluster too (nodes, partitions, logs, freezes, draining; beside the
spec's five components). A broken
component marks only itself ``degraded`` (error status, unexpected payload) or ``unreachable``
(refused, reset, timed out); the readout always comes back.
Guard: none needed, nothing is written. It fails only when RESTATE_ADMIN_URL is unset or invalid
(RESTATE_ADMIN_UNREACHABLE).
Through the operator API and the CLI the probes run at once, the answer is given as soon as they
are done, and that very answer is then recorded by ``record_answer`` below: a run of this same
flow name, with the same artifact, events and verdict, and no second probe.
Verify / undo: nothing to undo. The run leaves the readout as a markdown artifact, and emits a
Prefect event per finding (restate_recovery.doctor.findings) for automations to act on.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State

from restate_recovery.doctor.probes import ProbeSet, resolve_endpoints, run_doctor
from restate_recovery.execution import untagged_tasks
from restate_recovery.models import AlertContext, DoctorAnswer
from restate_recovery.settings import get_settings
from tasks import probes
from tasks.report import report_readout

PROBE_TASKS = ProbeSet(
    ingress=probes.probe_ingress,
    admin=probes.probe_admin,
    deployments=probes.probe_deployments,
    services=probes.probe_services,
    invocations=probes.probe_invocations,
    cluster=probes.probe_cluster,
)


@flow(name="restate-doctor", flow_run_name="restate-doctor")
async def doctor(alert: AlertContext | None = None) -> State:
    """Read-only readout of Restate: ingress, admin, deployments, services, invocations.

    Args:
        alert: The alert that started this run (set by the automation; leave empty).
    """
    with untagged_tasks():
        readout = await run_doctor(resolve_endpoints(get_settings()), probes=PROBE_TASKS)
        return await report_readout(readout, alert)


@flow(name="restate-doctor", flow_run_name="restate-doctor")
async def record_answer(answer: DoctorAnswer) -> State:
    """A doctor answer the operator API or the CLI already gave, recorded as it was.

    Args:
        answer: The answered readout (redacted) or error, who asked, and where.
    """
    get_run_logger().info(
        "answered by the %s to %s (request %s)", answer.source, answer.actor, answer.request_id
    )
    if answer.readouts > 1:
        get_run_logger().info(
            "%d readouts with these component statuses and findings, read between %s and %s "
            "while earlier answers were being recorded; this run shows the last",
            answer.readouts,
            _moment(answer.first_read_at),
            _moment(answer.last_read_at),
        )
    if answer.also_answered:
        get_run_logger().info(
            "the same %s answered %d more: %s",
            "readout" if answer.readouts == 1 else "readouts",
            len(answer.also_answered),
            ", ".join(answer.also_answered),
        )
    readout = answer.unwrap()  # an answered error ends this run Failed with its code
    with untagged_tasks():
        return await report_readout(readout)


def _moment(at: datetime | None) -> str:
    """A readout's time for a person: UTC, to the millisecond."""
    if at is None:
        return "?"
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
