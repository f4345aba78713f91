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

from restate_recovery.runbooks import RECOVER_STUCK_WORKFLOW, recover
from restate_recovery.schemas import RecoverStuckWorkflowRequest
from tasks.runbook import run_write_runbook
from tasks.writes import recover_workflow_key


@flow(name="recover-stuck-workflow", flow_run_name="recover-stuck-workflow/{request.target}")
async def recover_stuck_workflow(
    request: RecoverStuckWorkflowRequest,
    dry_run: bool = False,
    require_approval: bool = False,
) -> dict[str, Any]:
    """Prepare one terminal-failed workflow key for retry: kill, purge, clear its state.

    Args:
        request: The route's body: the workflow service name and the exact key of the failed
            invocation (letters, digits, _ and -).
        dry_run: Only plan: list the invocations that would be killed and purged and the state
            that would be cleared.
        require_approval: Plan first, then pause until an operator approves in the Prefect UI
            (used by the automations).
    """
    return await run_write_runbook(
        RECOVER_STUCK_WORKFLOW,
        request,
        write=recover_workflow_key,
        verify=recover.verify,
        dry_run=dry_run,
        require_approval=require_approval,
    )
