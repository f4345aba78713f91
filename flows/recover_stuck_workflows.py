"""Runbook: recover-stuck-workflows (many keys of one workflow service).

Symptom: many keys of one workflow service failed terminally at once (an upstream outage): the
doctor finds 10 or more of them among recent failures.
Guard: the doctor must reach the admin API; each selected key is planned exactly as
recover-stuck-workflow plans one, and skipped with that route's reason when it would refuse it.
The one write: recover each recoverable key (its state cleared, its failed run purged), at most
``concurrency`` at once and ``rate`` a second, each under the single-key lock with its own audit
row beside the batch's.
Verify: the doctor afterwards lists none of the recovered keys among recent failures.
Undo: none, as for one key. A rerun continues where an interrupted batch stopped.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from pydantic import Field

from restate_recovery.models import AlertContext
from restate_recovery.runbooks import RECOVER_STUCK_WORKFLOWS, bulk
from restate_recovery.schemas import RecoverStuckWorkflowsRequest
from tasks.runbook import Requested, failed_parameters, run_name, run_write_runbook
from tasks.writes import recover_workflow_keys


@flow(
    name="recover-stuck-workflows",
    flow_run_name=run_name("recover-stuck-workflows"),
    on_failure=[failed_parameters],
)
async def recover_stuck_workflows(
    request: RecoverStuckWorkflowsRequest,
    operator: str = Field(min_length=1, max_length=255, description="Who runs this (user id)."),
    reason: str = Field(min_length=1, max_length=2000, description="Why (incident, ticket)."),
    dry_run: bool = True,
    require_approval: bool = False,
    alert: AlertContext | None = None,
) -> dict[str, Any] | State:
    """Recover many terminal-failed keys of one workflow service, each as one key is recovered.

    Args:
        request: The service, and optionally a text the failure holds, a failure time window, at
            most how many keys, how many a second and how many at once.
        operator: Who runs this (your user id); it signs the audit rows of a run started here.
        reason: Why (an incident or ticket): the audit rows and the incident record keep it.
        dry_run: Only plan (every key, and what would be done with it). On by default: turn
            it off to write.
        require_approval: Plan first, then pause until someone approves in the Prefect UI
            (set by the automations).
        alert: The alert behind this run (set by the automations; leave empty).
    """
    return await run_write_runbook(
        RECOVER_STUCK_WORKFLOWS,
        request,
        Requested(operator=operator, reason=reason, alert=alert),
        write=recover_workflow_keys,
        verify=bulk.verify,
        dry_run=dry_run,
        require_approval=require_approval,
    )
