"""One pending plan per target: an approval-gated run (an automation's, started by a doctor
finding) claims its target before it pauses, and a second run for the same target does not
pause beside it. After a rejection the target stays quiet for ``RECOVERY_REJECTION_QUIET_SECONDS``
unless a new alert arrives. Kept in the audit database (``pending_plan``), so it holds across
processes, workers and API replicas.

The doctor reads the same table to tell a finding ``new`` (the automations act on it) from one
whose target already has a plan waiting (``pending``) or was rejected lately (``quiet``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from restate_recovery import store
from restate_recovery.errors import AuditUnavailableError
from restate_recovery.settings import get_settings

FindingState = Literal["new", "pending", "quiet"]
# An awaiting plan older than its approval window (and a margin) is one whose run died.
STALE_MARGIN = timedelta(minutes=5)


@dataclass(frozen=True)
class Claim:
    granted: bool
    why: str = ""
    holder: str | None = None  # the flow run whose plan waits, or was rejected


def _quiet() -> timedelta:
    return timedelta(seconds=get_settings().recovery_rejection_quiet_seconds)


def _stale_before(now: datetime) -> datetime:
    return now - timedelta(seconds=get_settings().recovery_approval_timeout_seconds) - STALE_MARGIN


def _plan(target: str) -> store.PendingPlan | None:
    with Session(store.engine()) as session:
        return store.plan_of(session=session, target=target)


def _take(plan: store.PendingPlan, replacing: store.PendingPlan | None) -> bool:
    with Session(store.engine()) as session:
        return store.take_plan(session=session, plan=plan, replacing=replacing)


async def claim(
    *,
    target: str,
    runbook: str,
    flow_run_id: str,
    fingerprint: str | None,
    new_alert: bool,
    alive: Callable[[str], Awaitable[bool]],
) -> Claim:
    """Make this run's plan the one pending for ``target``, unless another run's plan waits (and
    that run is alive), or the target was rejected lately and no new alert came."""
    now = store.utcnow()
    mine = store.PendingPlan(
        target=target,
        runbook=runbook,
        flow_run_id=flow_run_id,
        fingerprint=fingerprint,
        state="awaiting",
        created_at=now,
    )
    try:
        for _ in range(3):  # another run may change the row between our read and our write
            held = await asyncio.to_thread(_plan, target)
            if held is not None and held.flow_run_id == flow_run_id:
                return Claim(granted=True)
            if held is not None and held.state == "awaiting" and await alive(held.flow_run_id):
                return Claim(
                    False, f"a plan for {target} already waits for approval", held.flow_run_id
                )
            if (
                held is not None
                and held.state == "rejected"
                and held.quiet_until is not None
                and held.quiet_until > now
                and not new_alert
            ):
                return Claim(
                    False,
                    f"{target} was rejected by {held.decided_by}; quiet until "
                    f"{held.quiet_until:%Y-%m-%d %H:%M} UTC unless a new alert comes",
                    held.flow_run_id,
                )
            if await asyncio.to_thread(_take, mine, held):
                return Claim(granted=True)
    except SQLAlchemyError as exc:
        raise AuditUnavailableError(
            f"The audit database (which holds the pending plans) did not answer "
            f"({type(exc).__name__}): nothing was planned"
        ) from exc
    return Claim(False, f"{target}: other runs keep changing its plan", None)


def _decide(target: str, flow_run_id: str, rejected_by: str | None) -> None:
    with Session(store.engine()) as session:
        store.decide_plan(
            session=session,
            target=target,
            flow_run_id=flow_run_id,
            rejected_by=rejected_by,
            quiet_until=store.utcnow() + _quiet() if rejected_by else None,
        )


async def decided(target: str, flow_run_id: str, *, rejected_by: str | None = None) -> None:
    """The plan's end: rejected (the target turns quiet), or approved, timed out or abandoned."""
    await asyncio.to_thread(_decide, target, flow_run_id, rejected_by)


def finding_states(targets: list[str], *, alert: bool) -> dict[str, FindingState]:
    """What the doctor reports of each target's finding: ``pending`` while a plan for it waits,
    ``quiet`` after a rejection (unless an alert started this doctor), else ``new``."""
    now = store.utcnow()
    with Session(store.engine()) as session:
        held = {p.target: p for p in store.plans(session=session) if p.target in targets}
    states: dict[str, FindingState] = {}
    for target in targets:
        plan = held.get(target)
        created = store.aware(plan.created_at) if plan else None
        quiet_until = store.aware(plan.quiet_until) if plan else None
        if (
            plan is not None
            and plan.state == "awaiting"
            and created
            and created > _stale_before(now)
        ):
            states[target] = "pending"
        elif plan is not None and plan.state == "rejected" and quiet_until and quiet_until > now:
            states[target] = "new" if alert else "quiet"
        else:
            states[target] = "new"
    return states
