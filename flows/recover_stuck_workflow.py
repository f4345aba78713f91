"""Runbook: recover-stuck-workflow.

Symptom: doctor's recentFailures shows a workflow key whose run failed terminally
(``status: completed``) and that should run again from scratch.
Guard: the doctor must reach the admin API; then the key's run invocations decide: any active
one refuses ``active-invocation``, a successful one ``already-succeeded``, an unreadable query
``query-failed`` (RESTATE_WORKFLOW_RETRY_BLOCKED, nothing touched).
The one write: kill and purge each terminal-failed run invocation, clear the key's state, and read
it back until it is empty (a failure part-way is ``purge-failed``, saying which steps ran).
Verify: the doctor afterwards no longer lists the key among recent failures; the next submission
of the key starts from blank state.
Undo: none; the failed run's journal and state are gone by design. Rerunning is safe.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from restate_recovery.doctor import resolve_endpoints
from restate_recovery.incident import IncidentRecord
from restate_recovery.models import ApiModel, DoctorReadout
from restate_recovery.schemas import RecoverStuckWorkflowRequest, WriteOutcome
from restate_recovery.settings import get_settings
from tasks.runbook import run_write_runbook
from tasks.writes import recover_workflow_key


def verify_recovery(service_name: str, service_key: str) -> Any:
    def verify(_: ApiModel, after: DoctorReadout) -> str:
        if after.invocations.status != "ok":
            return f"invocations are {after.invocations.status}: {after.invocations.error}"
        still = [
            f.id
            for f in after.invocations.recent_failures
            if f.service_name == service_name and f.service_key == service_key
        ]
        if still:
            return f"{service_name}/{service_key} is still among recent failures: {still}"
        return f"{service_name}/{service_key} is no longer among recent failures"

    return verify


@flow(
    name="recover-stuck-workflow",
    flow_run_name="recover-stuck-workflow/{service_name}/{service_key}",
)
async def recover_stuck_workflow(
    service_name: str,
    service_key: str,
    dry_run: bool = False,
    require_approval: bool = False,
) -> dict[str, Any]:
    """Prepare one terminal-failed workflow key for retry: kill, purge, clear its state.

    Args:
        service_name: Workflow service name (letters, digits, _ and -), e.g.
            IdentityRecoveryWorkflow.
        service_key: The exact workflow key of the failed invocation (letters, digits, _ and -).
        dry_run: Only plan: list the invocations that would be killed and purged and the state
            that would be cleared.
        require_approval: Plan first, then pause until an operator approves in the Prefect UI
            (used by the automations).
    """
    request = RecoverStuckWorkflowRequest(service_name=service_name, service_key=service_key)
    endpoints = resolve_endpoints(get_settings())
    record = IncidentRecord(
        action="recover-stuck-workflow",
        parameters=request.to_json(),
        dry_run=dry_run,
    )

    async def write(dry: bool) -> WriteOutcome:
        return await recover_workflow_key(endpoints, service_name, service_key, dry)

    return await run_write_runbook(
        record=record,
        endpoints=endpoints,
        lock_target=f"workflow:{service_name}:{service_key}",
        write=write,
        require_approval=require_approval,
        verify=verify_recovery(service_name, service_key),
    )
