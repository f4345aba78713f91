"""Human approval of a write, in the Prefect UI (``pause_flow_run`` with a typed input).

A run started with ``require_approval`` first plans (a dry run, shown in its incident record and
in the Resume form's description), then pauses until an operator resumes it with an
``ApprovalForm``: approve or reject (a choice the form requires: none is made for them), who,
and why. The decision goes into the incident record as
plain lines and into the audit row. No lock is held while it waits: the write's lock is taken
after the approval.
"""

from __future__ import annotations

from typing import Literal

from prefect import get_run_logger
from prefect.flow_runs import apause_flow_run
from prefect.input import RunInput
from pydantic import Field

from restate_recovery.runbooks.incident import Approval, now_iso


class ApprovalForm(RunInput):
    """Approve or reject the planned write shown above."""

    decision: Literal["approve", "reject"] = Field(
        description="approve: run the write shown in the plan. reject: end the run, nothing "
        "written. There is no default: Resume without choosing is refused by the form."
    )
    approver: str = Field(description="Who decides (user id).", min_length=1, max_length=255)
    reason: str = Field(
        description="Why (goes into the audit row and the record).", min_length=1, max_length=2000
    )


async def await_approval(*, timeout: int, auto_reason: str | None, plan: str) -> Approval:
    """Pause for an operator (or approve at once when ``auto_reason`` is given); ``plan`` is
    markdown shown in the Resume form."""
    logger = get_run_logger()
    if auto_reason is not None:
        logger.info("auto-approved: %s", auto_reason)
        return Approval(True, "auto-approval", auto_reason, now_iso(), "auto")
    logger.info("waiting up to %d s for approval in the Prefect UI (Resume the run)", timeout)
    form = ApprovalForm.with_initial_data(
        description="Choose approve or reject for this plan; nothing has been written yet.\n\n"
        + plan
    )
    try:
        answer = await apause_flow_run(wait_for_input=form, timeout=timeout, poll_interval=2)
    except TimeoutError:
        return Approval(False, "nobody", f"no approval within {timeout} s", now_iso(), "timeout")
    approved = answer.decision == "approve"
    return Approval(approved, answer.approver, answer.reason, now_iso(), "prefect-ui")
