"""recover-stuck-workflow: decide whether one workflow key may be retried, then make it blank.

Decision (pure, ``classify_run_invocations``): among the key's *run* invocations (the handler of
type ``Workflow``), anything not ``completed`` is active -> refuse ``active-invocation``; a
successful completion -> refuse ``already-succeeded``; otherwise every terminal failure (killed
and cancelled included: Restate 1.7 shows them as completed with a ``[409]`` failure) is killed
(an "already completed" 409 is fine) and purged (an "already purged" 404 is fine), then the key's
state is cleared and read back until it is empty. A key with no run invocation left only has its
state cleared, so re-running after a partial failure converges.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from restate_recovery.client import RestateAdminClient
from restate_recovery.errors import (
    AdminUnreachableError,
    RestateRejected,
    RestateUnreachable,
    RetryBlockedError,
)
from restate_recovery.models import ApiModel, DoctorReadout, ServiceInfo
from restate_recovery.schemas import (
    Acknowledged,
    DryRunResult,
    PlannedStep,
    RecoverStuckWorkflowRequest,
    WriteOutcome,
)
from restate_recovery.sql import literal, name_literal

logger = logging.getLogger(__name__)

STATE_CLEAR_DEADLINE_SECONDS = 10.0


@dataclass(frozen=True)
class RecoveryPlan:
    service_name: str
    service_key: str
    handler: str
    terminal_failed: list[str]
    state_keys: list[str]

    def steps(self) -> list[PlannedStep]:
        steps = [PlannedStep(action="kill", target=i) for i in self.terminal_failed]
        steps += [PlannedStep(action="purge", target=i) for i in self.terminal_failed]
        steps.append(
            PlannedStep(
                action="clear-state",
                target=f"{self.service_name}/{self.service_key}",
                detail=f"{len(self.state_keys)} state entries now"
                + (f": {', '.join(self.state_keys)}" if self.state_keys else ""),
            )
        )
        return steps


@dataclass
class RecoveryReport:
    killed: list[str] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    state_cleared: bool = False

    def done(self) -> str:
        return (
            f"killed {self.killed or 'none'}, purged {self.purged or 'none'}, "
            f"state cleared: {'yes' if self.state_cleared else 'no'}"
        )


def run_invocations_sql(service_name: str, service_key: str, handler: str) -> str:
    return (
        "SELECT id, status, completion_result, completion_failure, created_at "
        "FROM sys_invocation "
        f"WHERE target_service_name = {name_literal(service_name)} "
        f"AND target_service_key = {name_literal(service_key)} "
        f"AND target_handler_name = {literal(handler)}"
    )


def state_keys_sql(service_name: str, service_key: str) -> str:
    return (
        "SELECT key FROM state "
        f"WHERE service_name = {name_literal(service_name)} "
        f"AND service_key = {name_literal(service_key)}"
    )


def workflow_run_handler(services: list[ServiceInfo], service_name: str) -> str:
    """The name of the service's main (``Workflow``-typed) handler, or a ``query-failed`` refusal."""
    service = next((s for s in services if s.name == service_name), None)
    if service is None:
        raise RetryBlockedError(
            f"{service_name} is not a registered service: cannot identify its run invocations",
            "query-failed",
        )
    handler = next((h.name for h in service.handlers if h.ty == "Workflow"), None)
    if handler is None:
        raise RetryBlockedError(
            f"{service_name} has no Workflow handler (it is a {service.ty}): "
            "recover-stuck-workflow only recovers workflows",
            "query-failed",
        )
    return handler


def classify_run_invocations(rows: list[dict[str, Any]]) -> list[str]:
    """The terminal-failed run invocation ids, or a refusal when retry would be unsafe."""
    active, succeeded, failed, unreadable = [], [], [], []
    for row in rows:
        invocation_id, status = row.get("id"), row.get("status")
        if not isinstance(invocation_id, str) or not isinstance(status, str):
            unreadable.append(str(invocation_id))
        elif status != "completed":  # pending, scheduled, ..., paused, and any future status
            active.append(invocation_id)
        elif row.get("completion_result") == "success":
            succeeded.append(invocation_id)
        elif row.get("completion_result") == "failure":
            failed.append(invocation_id)
        else:
            unreadable.append(invocation_id)
    if unreadable:
        raise RetryBlockedError(
            "Workflow retry is blocked: the invocation query returned rows without a readable "
            "status or completion result",
            "query-failed",
            unreadable,
        )
    if active:
        raise RetryBlockedError(
            "Workflow retry is blocked by an active invocation", "active-invocation", active
        )
    if succeeded:
        raise RetryBlockedError(
            "Workflow retry is blocked: the workflow already completed successfully",
            "already-succeeded",
            succeeded,
        )
    return failed


def _unreachable(exc: RestateUnreachable, doing: str) -> AdminUnreachableError:
    return AdminUnreachableError(f"Restate admin API unreachable while {doing}: {exc}")


async def plan_recovery(
    client: RestateAdminClient, request: RecoverStuckWorkflowRequest, *, timeout: float
) -> RecoveryPlan:
    name, key = request.service_name, request.service_key
    try:
        handler = workflow_run_handler(await client.list_services(timeout=timeout), name)
        rows = await client.query(run_invocations_sql(name, key, handler), timeout=timeout)
        state = await client.query(state_keys_sql(name, key), timeout=timeout)
    except RestateUnreachable as exc:
        raise _unreachable(exc, f"querying {name}/{key}") from exc
    except RestateRejected as exc:
        raise RetryBlockedError(
            f"Workflow retry is blocked: querying {name}/{key} failed ({exc})", "query-failed"
        ) from exc
    return RecoveryPlan(
        service_name=name,
        service_key=key,
        handler=handler,
        terminal_failed=classify_run_invocations(rows),
        state_keys=sorted(str(r.get("key")) for r in state),
    )


async def execute_recovery(
    client: RestateAdminClient, plan: RecoveryPlan, *, timeout: float
) -> RecoveryReport:
    """Kill and purge the terminal-failed runs, clear the key's state, and read it back."""
    report = RecoveryReport()
    target = f"{plan.service_name}/{plan.service_key}"

    def blocked(step: str, exc: Exception, ids: list[str]) -> RetryBlockedError:
        return RetryBlockedError(
            f"Workflow recovery of {target} stopped: {step} failed ({exc}); done before: "
            f"{report.done()}",
            "purge-failed",
            ids,
        )

    try:
        for invocation_id in plan.terminal_failed:
            try:
                await client.kill_invocation(invocation_id, timeout=timeout)
            except RestateRejected as exc:
                if exc.status_code not in (404, 409):  # already completed / already gone
                    raise blocked(f"kill of {invocation_id}", exc, [invocation_id]) from exc
            report.killed.append(invocation_id)
        for invocation_id in plan.terminal_failed:
            try:
                await client.purge_invocation(invocation_id, timeout=timeout)
            except RestateRejected as exc:
                if exc.status_code != 404:  # already purged
                    raise blocked(f"purge of {invocation_id}", exc, [invocation_id]) from exc
            report.purged.append(invocation_id)
        try:
            await client.set_state(
                service_name=plan.service_name,
                service_key=plan.service_key,
                new_state={},
                timeout=timeout,
            )
            remaining = await _wait_for_blank_state(client, plan, timeout=timeout)
        except RestateRejected as exc:
            raise blocked("clearing the state", exc, plan.terminal_failed) from exc
        if remaining:
            raise RetryBlockedError(
                f"Workflow recovery of {target} stopped: the state still has {remaining} after "
                f"clearing it; done before: {report.done()}",
                "purge-failed",
                plan.terminal_failed,
            )
        report.state_cleared = True
    except RestateUnreachable as exc:
        raise _unreachable(exc, f"recovering {target} ({report.done()})") from exc
    return report


async def _wait_for_blank_state(
    client: RestateAdminClient, plan: RecoveryPlan, *, timeout: float
) -> list[str]:
    """Restate answers 202 to a state write even when it ignores it: read back until empty."""
    sql = state_keys_sql(plan.service_name, plan.service_key)
    deadline = time.monotonic() + STATE_CLEAR_DEADLINE_SECONDS
    while True:
        keys = sorted(str(r.get("key")) for r in await client.query(sql, timeout=timeout))
        if not keys or time.monotonic() > deadline:
            return keys
        await asyncio.sleep(0.1)


async def write(
    client: RestateAdminClient,
    request: RecoverStuckWorkflowRequest,
    *,
    timeout: float,
    dry_run: bool,
) -> WriteOutcome:
    """Plan (refusing unsafe states), and unless this is a dry run, make the key blank."""
    plan = await plan_recovery(client, request, timeout=timeout)
    steps = plan.steps()
    if dry_run:
        return WriteOutcome(result=DryRunResult(plan=steps), plan=steps)
    report = await execute_recovery(client, plan, timeout=timeout)
    return WriteOutcome(result=Acknowledged(), plan=steps, details=[report.done()])


def verify(request: RecoverStuckWorkflowRequest, result: ApiModel, after: DoctorReadout) -> str:
    """Whether the doctor after still lists the key among recent failures."""
    if after.invocations.status != "ok":
        return f"invocations are {after.invocations.status}: {after.invocations.error}"
    still = [
        f.id
        for f in after.invocations.recent_failures
        if f.service_name == request.service_name and f.service_key == request.service_key
    ]
    if still:
        return f"{request.target} is still among recent failures: {still}"
    return f"{request.target} is no longer among recent failures"
