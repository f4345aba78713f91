"""Run a runbook in the test process the way the CLI's local mode runs it: validated request,
its Prefect flow, one audit row (actor ``tests``)."""

from __future__ import annotations

from typing import Any

from restate_recovery.audit import Attempt, arguments_of
from restate_recovery.execution import run_runbook
from restate_recovery.runbooks import DOCTOR, runbook


async def run_flow(name: str, *, dry_run: bool = False, **fields: Any) -> Any:
    """``name``'s flow with a request of ``fields`` (snake_case); the doctor takes none."""
    if name == DOCTOR.name:
        doctor: Any = DOCTOR.flow()
        return await doctor()
    entry = runbook(name)
    request = entry.request(**fields)
    attempt = Attempt(
        actor="tests",
        role="tests",
        route=name,
        arguments=arguments_of(request, dry_run=dry_run),
    )
    return await run_runbook(entry, request, attempt, dry_run=dry_run)
