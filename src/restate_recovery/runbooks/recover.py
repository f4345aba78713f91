"""recover-stuck-workflow: decide whether one workflow key may be retried, then make it blank.

Decision (pure, ``classify_run_invocations``): among the key's *run* invocations (the handler of
type ``Workflow``), anything not ``completed`` is active -> refuse ``active-invocation``; a
successful completion -> refuse ``already-succeeded``; otherwise every terminal failure (killed
and cancelled included: Restate 1.7 shows them as completed with a ``[409]`` failure) is made
blank, in an order no resubmission can race:

1. the key's runs are read again and must be the ones planned (same ids, same ``created_at``:
   a workflow run's id is the same for every run of a key, so only its creation time tells a new
   run from the planned one), else ``RESTATE_RECOVERY_PLAN_CHANGED`` and nothing is written;
2. clear the key's state while the completed run still holds the key (a resubmission meanwhile is
   "previously accepted": nothing runs). The clear carries the version of the state the plan
   read (what the plan, and its approver, saw), so Restate drops it if anything changed the state
   since; it is read back until empty (not empty: refused, nothing purged);
3. purge each run, each re-checked first (an "already purged" 404 is fine). Purging a workflow
   run frees the key and deletes its state and promises; nothing writes state after it, so a run
   submitted from then on starts blank and keeps what it writes.

No kill is sent: a terminal failure is already completed (Restate answers a kill of it with 409),
and since the id of a key's next run is the same, a kill sent after someone else's purge and
resubmission would kill that new run. A key whose runs are gone already has nothing left to do;
leftover state with no run is cleared with its version only, and a run that appeared meanwhile is
reported (``active-invocation``), its state untouched. Re-running after a partial failure
converges. A write given the plan an approver saw (``approved``) refuses with
``RESTATE_RECOVERY_PLAN_CHANGED`` when the key's plan is no longer that one.

A run killed while it slept still has its timer in Restate, and on 1.7.12 that timer, once due,
wakes the key's *next* run (restatedev/restate#5425, fixed in 1.8.0; reproduced here: a new run's
12 s sleep ended after 3 s). The killed run's journal (kept for its retention) names each sleep's
wake-up time: a purge waits until every one of them has passed, when that is within
``RECOVERY_TIMER_WAIT_SECONDS``; a later one refuses ``RESTATE_WORKFLOW_TIMER_PENDING`` before
anything is written.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from restate_recovery.client import RestateAdminClient
from restate_recovery.errors import (
    AdminUnreachableError,
    PlanChangedError,
    RestateRejected,
    RestateUnreachable,
    RetryBlockedError,
    StateWriteUnsafeError,
    TimerPendingError,
)
from restate_recovery.models import ApiModel, DoctorReadout, ServiceInfo
from restate_recovery.schemas import (
    Acknowledged,
    DryRunResult,
    PlannedStep,
    RecoverStuckWorkflowRequest,
    WriteOutcome,
    check_approved,
)
from restate_recovery.settings import get_settings
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
    created: dict[str, str] = field(default_factory=dict)  # run id -> its created_at
    timers: dict[str, float] = field(default_factory=dict)  # run id -> its last timer (epoch s)
    state_version: str = ""  # Restate's version of the state when planned (what the clear carries)

    def steps(self) -> list[PlannedStep]:
        steps = []
        if self.terminal_failed or self.state_keys:
            steps.append(
                PlannedStep(
                    action="clear-state",
                    target=f"{self.service_name}/{self.service_key}",
                    detail=f"{len(self.state_keys)} state "
                    + ("entry" if len(self.state_keys) == 1 else "entries")
                    + " when planned"
                    + (f": {', '.join(self.state_keys)}" if self.state_keys else ""),
                )
            )
        steps += [
            PlannedStep(
                action="wait",
                target=i,
                detail=f"until its timer at {iso(self.timers[i])} has passed (restatedev/restate"
                "#5425: it would wake the key's next run)",
            )
            for i in self.terminal_failed
            if i in self.timers
        ]
        steps += [
            PlannedStep(
                action="purge",
                target=i,
                detail=f"terminal failure, run created {self.created.get(i) or 'at an unknown time'}",
            )
            for i in self.terminal_failed
        ]
        return steps


@dataclass
class RecoveryReport:
    purged: list[str] = field(default_factory=list)
    state_cleared: bool = False

    def done(self) -> str:
        return (
            f"state cleared: {'yes' if self.state_cleared else 'no'}, "
            f"purged {', '.join(self.purged) or 'none'}"
        )


def run_invocations_sql(
    service_name: str, service_key: str, handler: str, ids: list[str] | None = None
) -> str:
    """The key's run invocations; with ``ids``, read by id (see ``planned_ids``)."""
    return (
        "SELECT id, status, completion_result, completion_failure, created_at "
        f"FROM sys_invocation WHERE {_runs_of(service_name, service_key, handler, ids)}"
    )


def state_and_runs_sql(
    service_name: str, service_key: str, handler: str, ids: list[str] | None = None
) -> str:
    """The key's run invocations (``row_kind`` ``run``, the columns of ``run_invocations_sql``)
    and its state keys (``row_kind`` ``state``, in ``key``) in one read."""
    return (
        "SELECT 'run' AS row_kind, id, status, completion_result, completion_failure, created_at, "
        f"NULL AS key FROM sys_invocation WHERE {_runs_of(service_name, service_key, handler, ids)} "
        "UNION ALL SELECT 'state', NULL, NULL, NULL, NULL, NULL, key FROM state "
        f"WHERE service_name = {name_literal(service_name)} "
        f"AND service_key = {name_literal(service_key)}"
    )


def _runs_of(service_name: str, service_key: str, handler: str, ids: list[str] | None) -> str:
    where = (
        f"target_service_name = {name_literal(service_name)} "
        f"AND target_service_key = {name_literal(service_key)} "
        f"AND target_handler_name = {literal(handler)}"
    )
    if ids:
        where = f"id IN ({', '.join(literal(i) for i in ids)}) AND {where}"
    return where


def planned_ids(plan: RecoveryPlan) -> list[str] | None:
    """The ids to read the key's runs by once it is planned, or None (by key).

    Every run of a workflow key has the same id (Restate derives it from the key; checked on
    1.7.12), and no new run can start while a completed one holds the key: read by the planned
    ids, the runs that matter are all seen (a point read in Restate, where the key alone scans
    the service's invocations: 5-7 ms against 11-15 ms a read with 1,500 of them). Were a new run
    ever to get another id, it could start only once the planned one is gone, which the check
    sees (planned, now none: ``RESTATE_RECOVERY_PLAN_CHANGED``)."""
    return sorted(plan.created) or None


def iso(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat(timespec="milliseconds")


def timers_sql(invocation_ids: list[str]) -> str:
    ids = ", ".join(literal(i) for i in invocation_ids)
    return (
        "SELECT id, entry_json FROM sys_journal "
        f"WHERE id IN ({ids}) AND entry_type = {literal('Command: Sleep')}"
    )


def pending_timers(rows: list[dict[str, Any]], now: float) -> dict[str, float]:
    """Each run's latest sleep wake-up time still ahead of ``now`` (epoch seconds; pure)."""
    due: dict[str, float] = {}
    for row in rows:
        try:
            sleep = json.loads(str(row.get("entry_json")))["Command"]["Sleep"]
            at = float(sleep["wake_up_time"]) / 1000
        except (KeyError, TypeError, ValueError):
            continue
        invocation_id = str(row.get("id"))
        if at > now and at > due.get(invocation_id, 0):
            due[invocation_id] = at
    return due


def state_keys_sql(service_name: str, service_key: str) -> str:
    return (
        "SELECT key, value FROM state "
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
    client: RestateAdminClient,
    request: RecoverStuckWorkflowRequest,
    *,
    timeout: float,
    services: list[ServiceInfo] | None = None,
) -> RecoveryPlan:
    """The key's plan (``services``: Restate's service list, when the caller has just read it)."""
    name, key = request.service_name, request.service_key
    try:
        if services is None:
            services = await client.list_services(timeout=timeout)
        handler = workflow_run_handler(services, name)
        await refuse_unsafe_state_writes(client, timeout=timeout)
        rows = await client.query(run_invocations_sql(name, key, handler), timeout=timeout)
        state = await client.query(state_keys_sql(name, key), timeout=timeout)
    except RestateUnreachable as exc:
        raise _unreachable(exc, f"querying {name}/{key}") from exc
    except RestateRejected as exc:
        raise RetryBlockedError(
            f"Workflow retry is blocked: querying {name}/{key} failed ({exc})", "query-failed"
        ) from exc
    failed = classify_run_invocations(rows)
    journal: list[dict[str, Any]] = []
    if failed:
        try:
            journal = await client.query(timers_sql(failed), timeout=timeout)
        except RestateUnreachable as exc:
            raise _unreachable(exc, f"querying {name}/{key}") from exc
        except RestateRejected as exc:
            raise RetryBlockedError(
                f"Workflow retry is blocked: reading the journal of {name}/{key} failed ({exc})",
                "query-failed",
            ) from exc
    return plan_from_rows(name, key, handler, rows, state, journal)


async def refuse_unsafe_state_writes(client: RestateAdminClient, *, timeout: float) -> None:
    """``RESTATE_STATE_WRITE_UNSAFE`` where Restate would not clear a state on every replica
    (restatedev/restate#5416: a server before 1.8.0 with vqueues on)."""
    info = await client.version(timeout=timeout)
    if info.drops_follower_state_writes():
        raise StateWriteUnsafeError(
            f"Restate {info.version} runs with vqueues on: before 1.8.0 its followers skip admin "
            "state writes (restatedev/restate#5416), so a cleared state can come back after a "
            "leader change. Nothing was written. Upgrade to 1.8.0 or later, or turn "
            "experimental-enable-vqueues off, then retry."
        )


def plan_from_rows(
    name: str,
    key: str,
    handler: str,
    rows: list[dict[str, Any]],
    state: list[dict[str, Any]],
    journal: list[dict[str, Any]],
) -> RecoveryPlan:
    """The key's plan from what Restate said of it: its run invocations (``rows``), its state
    entries, and the Sleep commands of its runs' journals; a refusal where retry is unsafe."""
    failed = classify_run_invocations(rows)
    timers = pending_timers([j for j in journal if j.get("id") in failed], time.time())
    wait = get_settings().recovery_timer_wait_seconds
    late = {i: at for i, at in timers.items() if at - time.time() > wait}
    if late:
        raise TimerPendingError(
            f"Workflow recovery of {name}/{key} would let a killed run's timer wake the key's "
            f"next run (restatedev/restate#5425, before Restate 1.8.0): "
            + ", ".join(f"{i} at {iso(at)}" for i, at in sorted(late.items()))
            + f", more than {wait:g} s away. Nothing was written; retry after it."
        )
    return RecoveryPlan(
        service_name=name,
        service_key=key,
        handler=handler,
        terminal_failed=failed,
        state_keys=sorted(str(r.get("key")) for r in state),
        created=created_at(rows, failed),
        timers=timers,
        state_version=state_version(state),
    )


def created_at(rows: list[dict[str, Any]], ids: list[str]) -> dict[str, str]:
    return {str(r["id"]): str(r.get("created_at") or "") for r in rows if r.get("id") in ids}


async def _check_runs_unchanged(
    client: RestateAdminClient,
    plan: RecoveryPlan,
    report: RecoveryReport,
    *,
    timeout: float,
    rows: list[dict[str, Any]] | None = None,
) -> None:
    """The key's runs are still the planned ones (ids and creation times), and none is active.
    ``rows``: the runs as read a moment ago (else they are read now)."""
    if rows is None:
        sql = run_invocations_sql(
            plan.service_name, plan.service_key, plan.handler, planned_ids(plan)
        )
        try:
            rows = await client.query(sql, timeout=timeout)
        except RestateRejected as exc:
            raise RetryBlockedError(
                f"Workflow recovery of {plan.service_name}/{plan.service_key} stopped: reading "
                f"its runs again failed ({exc}); done before: {report.done()}",
                "query-failed",
            ) from exc
    failed = classify_run_invocations(rows)  # active or succeeded meanwhile: refused as such
    now = created_at(rows, failed)
    remaining = {i: c for i, c in plan.created.items() if i not in report.purged}
    if now != remaining:
        raise PlanChangedError(
            f"The runs of {plan.service_name}/{plan.service_key} changed since they were planned "
            f"(planned {remaining or 'none'}, now {now or 'none'}): a new run was submitted and "
            f"ended meanwhile; done before: {report.done()}. Run the recovery again to plan anew."
        )


def state_version(rows: list[dict[str, Any]]) -> str:
    """Restate's version of a key's state (what a state write must carry to be applied): base64url
    of SHA-256 over the entries sorted by key, each ``index (8 bytes big-endian) 0x01 key 0x02 value
    0x03``. ``/query`` gives each value as hex."""
    digest = hashlib.sha256()
    entries = sorted((str(r["key"]), bytes.fromhex(str(r.get("value") or ""))) for r in rows)
    for index, (key, value) in enumerate(entries):
        digest.update(index.to_bytes(8, "big") + b"\x01" + key.encode() + b"\x02" + value + b"\x03")
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


async def execute_recovery(
    client: RestateAdminClient, plan: RecoveryPlan, *, timeout: float
) -> RecoveryReport:
    """Check the runs are the planned ones, clear the key's state (versioned, read back), purge
    each run (checked again first)."""
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
        await _check_runs_unchanged(client, plan, report, timeout=timeout)
        runs: list[dict[str, Any]] | None = None  # the runs as read with the emptied state
        if plan.terminal_failed or plan.state_keys:
            try:
                remaining, runs = await _clear_state(client, plan, timeout=timeout)
            except RestateRejected as exc:
                raise blocked("clearing the state", exc, plan.terminal_failed) from exc
            if remaining:
                await _refuse_if_a_run_started(client, plan, timeout=timeout)
                raise RetryBlockedError(
                    f"Workflow recovery of {target} stopped: the state still has {remaining} "
                    f"after clearing it (it changed meanwhile, and was left as it is); done "
                    f"before: {report.done()}",
                    "purge-failed",
                    plan.terminal_failed,
                )
            report.state_cleared = True
        for invocation_id in plan.terminal_failed:
            if invocation_id in plan.timers:  # let it fire into the killed run, not the next
                await asyncio.sleep(max(0.0, plan.timers[invocation_id] + 1.0 - time.time()))
                runs = None  # time passed: read them again
            # Right before the purge: the runs read with the state found empty, else read now.
            await _check_runs_unchanged(client, plan, report, timeout=timeout, rows=runs)
            runs = None
            try:
                await client.purge_invocation(invocation_id, timeout=timeout)
            except RestateRejected as exc:
                if exc.status_code != 404:  # already purged
                    raise blocked(f"purge of {invocation_id}", exc, [invocation_id]) from exc
            report.purged.append(invocation_id)
    except RestateUnreachable as exc:
        raise _unreachable(exc, f"recovering {target} ({report.done()})") from exc
    return report


async def _clear_state(
    client: RestateAdminClient, plan: RecoveryPlan, *, timeout: float
) -> tuple[list[str], list[dict[str, Any]]]:
    """Clear the state the plan saw: the write carries its version, so Restate drops it if the
    state changed since (what is cleared is what was planned, and approved). Then read it back
    until empty (Restate answers 202 either way), with the key's runs in the same read; returns
    the state keys left and the runs as last read."""
    sql = state_and_runs_sql(plan.service_name, plan.service_key, plan.handler, planned_ids(plan))
    if plan.state_keys:
        await client.set_state(
            service_name=plan.service_name,
            service_key=plan.service_key,
            new_state={},
            version=plan.state_version,
            timeout=timeout,
        )
    deadline = time.monotonic() + STATE_CLEAR_DEADLINE_SECONDS
    for delay in read_back_delays():
        rows = await client.query(sql, timeout=timeout)
        keys = sorted(str(r.get("key")) for r in rows if r.get("row_kind") == "state")
        if not keys or time.monotonic() > deadline:
            return keys, [r for r in rows if r.get("row_kind") == "run"]
        await asyncio.sleep(delay)
    raise AssertionError("unreachable: read_back_delays never ends")


def read_back_delays() -> Iterator[float]:
    """Pauses between read-backs of a write Restate applies a moment later: 10 ms, doubling,
    at most 200 ms (most clears are visible within the first few)."""
    delay = 0.01
    while True:
        yield delay
        delay = min(delay * 2, 0.2)


async def _refuse_if_a_run_started(
    client: RestateAdminClient, plan: RecoveryPlan, *, timeout: float
) -> None:
    """State that would not clear: a run submitted meanwhile (possible only once no run held the
    key) refuses as ``active-invocation``, its state untouched."""
    sql = run_invocations_sql(plan.service_name, plan.service_key, plan.handler)
    rows = await client.query(sql, timeout=timeout)
    new = [str(r["id"]) for r in rows if r.get("status") != "completed" and "id" in r]
    if new:
        raise RetryBlockedError(
            f"Workflow recovery of {plan.service_name}/{plan.service_key} stopped: a new run "
            "started while it cleared the state; that run and its state were left as they are",
            "active-invocation",
            new,
        )


async def write(
    client: RestateAdminClient,
    request: RecoverStuckWorkflowRequest,
    *,
    timeout: float,
    dry_run: bool,
    approved: list[PlannedStep] | None = None,
) -> WriteOutcome:
    """Plan (refusing unsafe states, and a plan other than the ``approved`` one), and unless
    this is a dry run, make the key blank."""
    plan = await plan_recovery(client, request, timeout=timeout)
    steps = plan.steps()
    check_approved(approved, steps, request.target)
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
