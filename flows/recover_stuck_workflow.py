"""Runbook: recover-stuck-workflow.

Symptom: doctor's recentFailures shows a workflow key whose run failed terminally
(``status: completed``) and that should run again from scratch.
Guard: the doctor must reach the admin API; then the key's run invocations decide: any active
one refuses ``active-invocation``, a successful one ``already-succeeded``, an unreadable query
``query-failed`` (RESTATE_WORKFLOW_RETRY_BLOCKED, nothing touched).
The one write: with the key's runs read again (they must be the planned ones, else
RESTATE_RECOVERY_PLAN_CHANGED), clear the key's state (versioned, read back until empty) and purge
each terminal-failed run invocation (a failure part-way is ``purge-failed``, saying which steps
ran). No kill: a terminal failure is completed already.
Verify: the doctor afterwards no longer lists the key among recent failures; the next submission
of the key starts from blank state.
Undo: none; the failed run's journal and state are gone by design. Rerunning is safe.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from pydantic import Field

from restate_recovery.models import AlertContext
from restate_recovery.runbooks import RECOVER_STUCK_WORKFLOW, recover
from restate_recovery.schemas import RecoverStuckWorkflowRequest
from tasks.runbook import Requested, failed_parameters, run_name, run_write_runbook
from tasks.writes import recover_workflow_key


@flow(
    name="recover-stuck-workflow",
    flow_run_name=run_name("recover-stuck-workflow"),
    on_failure=[failed_parameters],
)
async def recover_stuck_workflow(
    request: RecoverStuckWorkflowRequest,
    operator: str = Field(min_length=1, max_length=255, description="Who runs this (user id)."),
    reason: str = Field(min_length=1, max_length=2000, description="Why (incident, ticket)."),
    dry_run: bool = True,
    require_approval: bool = False,
    alert: AlertContext | None = None,
) -> dict[str, Any] | State:
    """Prepare one terminal-failed workflow key for retry: clear its state, purge its run.

    Args:
        request: The route's body: the workflow service name and the exact key of the failed
            invocation (letters, digits, _ and -).
        operator: Who runs this (your user id); it signs the audit row of a run started here.
        reason: Why (an incident or ticket): the audit row and the incident record keep it.
        dry_run: Only plan: nothing is changed. On by default: turn it off to write.
        require_approval: Plan first, then pause until someone approves in the Prefect UI
            (set by the automations).
        alert: The alert behind this run (set by the automations; leave empty).
    """
    return await run_write_runbook(
        RECOVER_STUCK_WORKFLOW,
        request,
        Requested(operator=operator, reason=reason, alert=alert),
        write=recover_workflow_key,
        verify=recover.verify,
        dry_run=dry_run,
        require_approval=require_approval,
    )
