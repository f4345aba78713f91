"""Human approval of a write, in the Prefect UI (``pause_flow_run`` with a typed input).

A run started with ``require_approval`` first plans (a dry run, shown in its incident record), then
pauses until an operator resumes it with an ``Approval``: approve or reject, who, and why. The
decision (who, when, why) goes into the incident record and the audit row.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger
from prefect.flow_runs import apause_flow_run
from prefect.input import RunInput
from pydantic import Field

from restate_recovery.errors import ApprovalRejectedError


class Approval(RunInput):
    """Approve or reject the planned write."""

    approve: bool = Field(description="Run the write shown in the plan?")
    approver: str = Field(description="Who decides (user id).", min_length=1, max_length=255)
    reason: str = Field(description="Why (goes into the audit row).", min_length=1, max_length=2000)


def decision(approval: Approval, *, how: str) -> dict[str, Any]:
    return {
        "approved": approval.approve,
        "approver": approval.approver,
        "reason": approval.reason,
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "how": how,
    }


async def await_approval(*, timeout: int, auto_reason: str | None) -> dict[str, Any]:
    """Pause for an operator (or approve at once when ``auto_reason`` is given)."""
    logger = get_run_logger()
    if auto_reason is not None:
        logger.info("auto-approved: %s", auto_reason)
        approval = Approval(approve=True, approver="auto-approval", reason=auto_reason)
        return decision(approval, how="auto")
    logger.info("waiting for approval in the Prefect UI (resume the run with an Approval)")
    try:
        approval = await apause_flow_run(wait_for_input=Approval, timeout=timeout, poll_interval=2)
    except TimeoutError as exc:
        raise ApprovalRejectedError(f"No approval within {timeout} s: nothing was written") from exc
    return decision(approval, how="prefect-ui")


def refuse_unless_approved(approval: dict[str, Any]) -> None:
    if not approval["approved"]:
        raise ApprovalRejectedError(
            f"Rejected by {approval['approver']}: {approval['reason']}. Nothing was written."
        )
