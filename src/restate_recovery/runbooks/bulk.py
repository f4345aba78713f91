"""recover-stuck-workflows: recover-stuck-workflow over a selection of keys of one workflow service.

- Selection: the service's terminal-failed run invocations (newest failure first), narrowed by a
  text their failure message holds and a failure time window, at most ``limit`` keys.
- Each key is planned exactly as the single-key route plans it (``recover.plan_from_rows``):
  recoverable, or skipped with the reason that route would refuse it (``active-invocation``,
  ``already-succeeded``, ``query-failed``, a pending timer). The plan lists every key. What the
  planner reads is read for ``PLAN_CHUNK`` keys at once (their runs, their state, their failed
  runs' timers: three queries, not three per key).
- The write recovers the recoverable keys, at most ``concurrency`` at once and ``rate`` starts a
  second, each under the single-key route's own lock (``workflow:<service>:<key>``), each with its
  own audit row (route ``recover-stuck-workflow``, signed as the batch's row, which it names) beside
  the batch's row. A key whose plan changed since the batch's plan (or since its approval) is
  skipped, saying so; a key that fails is reported, and the others go on.
- A rerun continues where an interrupted batch stopped: the keys already recovered are no longer
  terminal-failed, so they are not selected again (skipped, not refused).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from restate_recovery import leases, store
from restate_recovery.audit import PARENT_ATTEMPT, Attempt, AuditedAttempt
from restate_recovery.client import RestateAdminClient
from restate_recovery.errors import (
    AdminUnreachableError,
    OperatorError,
    QueryFailedError,
    RestateRejected,
    RestateUnreachable,
    RetryBlockedError,
)
from restate_recovery.models import ApiModel, DoctorReadout
from restate_recovery.runbooks import recover
from restate_recovery.schemas import (
    BatchRecovered,
    DryRunResult,
    KeyOutcome,
    PlannedStep,
    RecoverStuckWorkflowsRequest,
    WriteOutcome,
)
from restate_recovery.settings import get_settings
from restate_recovery.sql import NAME_PATTERN, is_name, literal, name_literal

SCAN_LIMIT = 10_000  # failed runs read to find the keys (newest first)
PLAN_CHUNK = 100  # keys planned with one read of their runs, one of their state, one of timers


@dataclass
class KeyPlan:
    key: str
    plan: recover.RecoveryPlan | None = None
    refused: str | None = None  # why the single-key route would refuse it

    def step(self, service: str) -> PlannedStep:
        if self.plan is None:
            return PlannedStep(action="skip", target=f"{service}/{self.key}", detail=self.refused)
        runs = ", ".join(self.plan.terminal_failed) or "no run left"
        return PlannedStep(action="recover", target=f"{service}/{self.key}", detail=runs)


@dataclass
class BatchPlan:
    service_name: str
    keys: list[KeyPlan] = field(default_factory=list)

    def steps(self) -> list[PlannedStep]:
        return [k.step(self.service_name) for k in self.keys]


def failed_runs_sql(service_name: str, handler: str) -> str:
    return (
        "SELECT target_service_key, id, completed_at, completion_failure FROM sys_invocation "
        f"WHERE target_service_name = {name_literal(service_name)} "
        f"AND target_handler_name = {literal(handler)} "
        "AND status = 'completed' AND completion_result = 'failure' "
        f"ORDER BY completed_at DESC LIMIT {SCAN_LIMIT}"
    )


def _instant(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def selected_keys(rows: list[dict[str, Any]], request: RecoverStuckWorkflowsRequest) -> list[str]:
    """The keys the selection names, newest failure first, at most ``limit`` (pure)."""
    since, until = _instant(request.failed_since), _instant(request.failed_until)
    keys: list[str] = []
    for row in rows:
        key, failed_at = row.get("target_service_key"), _instant(row.get("completed_at"))
        if not isinstance(key, str) or key in keys:
            continue
        if request.error_contains and request.error_contains not in str(
            row.get("completion_failure") or ""
        ):
            continue
        if failed_at is not None and (
            (since and failed_at < since) or (until and failed_at > until)
        ):
            continue
        keys.append(key)
        if len(keys) == request.limit:
            break
    return keys


async def plan_batch(
    client: RestateAdminClient, request: RecoverStuckWorkflowsRequest, *, timeout: float
) -> BatchPlan:
    name = request.service_name
    try:
        services = await client.list_services(timeout=timeout)
        handler = recover.workflow_run_handler(services, name)
        await recover.refuse_unsafe_state_writes(client, timeout=timeout)
        rows = await client.query(failed_runs_sql(name, handler), timeout=timeout)
    except RestateUnreachable as exc:
        raise AdminUnreachableError(f"Restate admin API unreachable: {exc}") from exc
    except RestateRejected as exc:
        raise QueryFailedError(f"Reading the failed runs of {name} failed: {exc}") from exc
    keys = selected_keys(rows, request)
    gate = asyncio.Semaphore(request.concurrency)

    async def chunk(part: list[str]) -> list[KeyPlan]:
        async with gate:
            return await _plan_keys(client, name, handler, part, timeout)

    parts = [keys[i : i + PLAN_CHUNK] for i in range(0, len(keys), PLAN_CHUNK)]
    planned = await asyncio.gather(*(chunk(part) for part in parts))
    return BatchPlan(service_name=name, keys=[k for part in planned for k in part])


def runs_of_keys_sql(service_name: str, handler: str, keys: list[str]) -> str:
    return (
        "SELECT target_service_key, id, status, completion_result, completion_failure, "
        "created_at FROM sys_invocation "
        f"WHERE target_service_name = {name_literal(service_name)} "
        f"AND target_handler_name = {literal(handler)} "
        f"AND target_service_key IN ({', '.join(name_literal(k) for k in keys)})"
    )


def states_of_keys_sql(service_name: str, keys: list[str]) -> str:
    return (
        "SELECT service_key, key, value FROM state "
        f"WHERE service_name = {name_literal(service_name)} "
        f"AND service_key IN ({', '.join(name_literal(k) for k in keys)})"
    )


def by_key(rows: list[dict[str, Any]], column: str) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(str(row.get(column)), []).append(row)
    return grouped


async def _plan_keys(
    client: RestateAdminClient, service: str, handler: str, keys: list[str], timeout: float
) -> list[KeyPlan]:
    """Plans of some keys, each as the single-key route plans it (``recover.plan_from_rows``),
    from three reads for all of them (their runs, their state, their failed runs' timers)."""
    named = [k for k in keys if is_name(k)]
    refused = {
        k: f"query-failed: the key does not match {NAME_PATTERN} (the single-key route's pattern)"
        for k in keys
        if k not in named
    }
    try:
        runs = by_key(
            await client.query(runs_of_keys_sql(service, handler, named), timeout=timeout)
            if named
            else [],
            "target_service_key",
        )
        states = by_key(
            await client.query(states_of_keys_sql(service, named), timeout=timeout)
            if named
            else [],
            "service_key",
        )
        failed = [
            str(r["id"])
            for rows in runs.values()
            for r in rows
            if r.get("status") == "completed" and r.get("completion_result") == "failure"
        ]
        journal = await client.query(recover.timers_sql(failed), timeout=timeout) if failed else []
    except RestateUnreachable as exc:
        why = f"{AdminUnreachableError.code}: Restate admin API unreachable while planning: {exc}"
        return [KeyPlan(key=k, refused=refused.get(k, why)) for k in keys]
    except RestateRejected as exc:
        why = f"query-failed: Workflow retry is blocked: reading the keys' runs failed ({exc})"
        return [KeyPlan(key=k, refused=refused.get(k, why)) for k in keys]
    plans = []
    for key in keys:
        if key in refused:
            plans.append(KeyPlan(key=key, refused=refused[key]))
            continue
        try:
            plan = recover.plan_from_rows(
                service, key, handler, runs.get(key, []), states.get(key, []), journal
            )
            plans.append(KeyPlan(key=key, plan=plan))
        except RetryBlockedError as exc:
            plans.append(KeyPlan(key=key, refused=f"{exc.reason}: {exc.message}"))
        except OperatorError as exc:  # a pending timer
            plans.append(KeyPlan(key=key, refused=f"{exc.code}: {exc.message}"))
    return plans


class Pace:
    """At most ``rate`` starts a second (one start every ``1 / rate`` s), across tasks."""

    def __init__(self, rate: float) -> None:
        self.interval, self.next = 1.0 / rate, time.monotonic()
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self.lock:
            now = time.monotonic()
            if self.next > now:
                await asyncio.sleep(self.next - now)
            self.next = max(now, self.next) + self.interval


async def execute_batch(
    client: RestateAdminClient,
    plan: BatchPlan,
    request: RecoverStuckWorkflowsRequest,
    *,
    timeout: float,
    approved: list[PlannedStep] | None,
) -> BatchRecovered:
    parent = await asyncio.to_thread(_parent_row)
    wanted = {s.target: s for s in approved} if approved is not None else None
    gate, pace = asyncio.Semaphore(request.concurrency), Pace(request.rate)
    outcomes: dict[str, KeyOutcome] = {}

    async def one(key_plan: KeyPlan) -> None:
        step = key_plan.step(plan.service_name)
        if key_plan.plan is None:
            outcomes[key_plan.key] = KeyOutcome(
                service_key=key_plan.key, outcome="skipped", detail=key_plan.refused
            )
            return
        if wanted is not None and wanted.get(step.target) != step:
            outcomes[key_plan.key] = KeyOutcome(
                service_key=key_plan.key,
                outcome="skipped",
                detail="RESTATE_RECOVERY_PLAN_CHANGED: not the plan that was approved",
            )
            return
        async with gate:
            await pace.wait()
            outcomes[key_plan.key] = await _recover_key(client, plan, key_plan, parent, timeout)

    await asyncio.gather(*(one(k) for k in plan.keys))
    keys = [outcomes[k.key] for k in plan.keys]
    count = {o: sum(1 for k in keys if k.outcome == o) for o in ("recovered", "skipped", "failed")}
    return BatchRecovered(keys=keys, **count)


def _parent_row() -> store.OperationAudit | None:
    """The batch's own audit row (the per-key rows are signed as it is)."""
    attempt_id = PARENT_ATTEMPT.get()
    if attempt_id is None:
        return None
    from sqlmodel import Session

    with Session(store.engine()) as session:
        return session.get(store.OperationAudit, attempt_id)


async def _recover_key(
    client: RestateAdminClient,
    plan: BatchPlan,
    key_plan: KeyPlan,
    parent: store.OperationAudit | None,
    timeout: float,
) -> KeyOutcome:
    assert key_plan.plan is not None
    row = AuditedAttempt(
        Attempt(
            actor=parent.actor_user_id if parent is not None else "recover-stuck-workflows",
            role=(parent.role_at_time or "unknown") if parent is not None else "batch",
            route="recover-stuck-workflow",
            arguments={
                "serviceName": plan.service_name,
                "serviceKey": key_plan.key,
                "batchAttemptId": parent.id if parent is not None else None,
            },
            reason=parent.reason if parent is not None else None,
            request_id=parent.request_id if parent is not None else None,
        )
    )
    try:  # no row, no write: this key is reported, the others go on
        attempt_id = await row.start()
    except OperatorError as exc:
        return KeyOutcome(service_key=key_plan.key, outcome="failed", detail=exc.message)
    error: Exception | None = None
    finished: asyncio.Future[None] | None = None
    try:
        async with leases.lock(
            f"workflow:{plan.service_name}:{key_plan.key}",
            timeout=get_settings().recovery_lock_timeout_seconds,
            attempt_id=attempt_id,
        ):
            try:
                report = await recover.execute_recovery(client, key_plan.plan, timeout=timeout)
            except Exception as exc:  # the row says it, whatever it is
                error = exc
            # Queued now, the finish goes into the lock release's transaction (one commit).
            finished = asyncio.ensure_future(row.finish(error))
    except OperatorError as exc:
        if finished is None:  # the lock was not taken: nothing was written
            await row.finish(exc)
            return KeyOutcome(service_key=key_plan.key, outcome="failed", detail=exc.message)
        # Raised on the lock's way out, after the key's write: the write's outcome stands (an
        # unreleased lock runs out on its own).
    if finished is not None:
        await finished
    if isinstance(error, OperatorError):
        return KeyOutcome(service_key=key_plan.key, outcome="failed", detail=error.message)
    if error is not None:
        raise error
    return KeyOutcome(service_key=key_plan.key, outcome="recovered", detail=report.done())


async def write(
    client: RestateAdminClient,
    request: RecoverStuckWorkflowsRequest,
    *,
    timeout: float,
    dry_run: bool,
    approved: list[PlannedStep] | None = None,
) -> WriteOutcome:
    """Plan every key of the selection; unless this is a dry run, recover the recoverable ones."""
    plan = await plan_batch(client, request, timeout=timeout)
    steps = plan.steps()
    if dry_run:
        return WriteOutcome(result=DryRunResult(plan=steps), plan=steps)
    result = await execute_batch(client, plan, request, timeout=timeout, approved=approved)
    details = [
        f"{k.service_key}: {k.outcome}" + (f" ({k.detail})" if k.detail else "")
        for k in result.keys
    ]
    return WriteOutcome(result=result, plan=steps, details=details)


def verify(request: RecoverStuckWorkflowsRequest, result: ApiModel, after: DoctorReadout) -> str:
    """Whether any recovered key is still among the doctor's recent failures."""
    if after.invocations.status != "ok":
        return f"invocations are {after.invocations.status}: {after.invocations.error}"
    recovered = {k.service_key for k in getattr(result, "keys", []) if k.outcome == "recovered"}
    still = sorted(
        f.service_key or ""
        for f in after.invocations.recent_failures
        if f.service_name == request.service_name and f.service_key in recovered
    )
    if still:
        return f"still among recent failures: {', '.join(still)}"
    return f"{len(recovered)} keys recovered; none of them among recent failures"
