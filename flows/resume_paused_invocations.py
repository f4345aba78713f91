"""Runbook: resume-paused-invocations.

Symptom: doctor's recentFailures shows an invocation ``paused`` (since Restate 1.6, what an
invocation that used up its retries becomes), and the cause is fixed (often: a new deployment).
Guard: the doctor must reach the admin API; only paused invocations are touched, anything else is
listed as skipped with its status; a named deployment must exist and serve their services.
The one write: resume each paused invocation of the selection on ``latest`` (the service's newest
deployment), ``keep`` (where it is pinned) or a named deployment.
Verify: each resumed invocation is read back until it left ``paused``; the doctor afterwards no
longer lists it as paused.
Undo: pause it again (``PATCH /invocations/{id}/pause``); nothing was lost.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from pydantic import Field

from restate_recovery.models import AlertContext
from restate_recovery.runbooks import RESUME_PAUSED_INVOCATIONS, resume
from restate_recovery.schemas import ResumePausedInvocationsRequest
from tasks.runbook import Requested, failed_parameters, run_name, run_write_runbook
from tasks.writes import resume_invocations


@flow(
    name="resume-paused-invocations",
    flow_run_name=run_name("resume-paused-invocations"),
    on_failure=[failed_parameters],
)
async def resume_paused_invocations(
    request: ResumePausedInvocationsRequest,
    operator: str = Field(min_length=1, max_length=255, description="Who runs this (user id)."),
    reason: str = Field(min_length=1, max_length=2000, description="Why (incident, ticket)."),
    dry_run: bool = True,
    require_approval: bool = False,
    alert: AlertContext | None = None,
) -> dict[str, Any] | State:
    """Resume paused invocations: one id, or a service's (or one key's), on a deployment.

    Args:
        request: Which invocations (one invocation id, or a service name and optionally a key),
            on which deployment (latest, keep, or dp_...), at most how many.
        operator: Who runs this (your user id); it signs the audit row of a run started here.
        reason: Why (an incident or ticket): the audit row and the incident record keep it.
        dry_run: Only plan: nothing is changed. On by default: turn it off to write.
        require_approval: Plan first, then pause until someone approves in the Prefect UI
            (set by the automations).
        alert: The alert behind this run (set by the automations; leave empty).
    """
    return await run_write_runbook(
        RESUME_PAUSED_INVOCATIONS,
        request,
        Requested(operator=operator, reason=reason, alert=alert),
        write=resume_invocations,
        verify=resume.verify,
        dry_run=dry_run,
        require_approval=require_approval,
    )
