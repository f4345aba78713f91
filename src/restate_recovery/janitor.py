"""What a process that died, or a Prefect that went away, leaves behind, cleaned up: the operator
API sweeps at start-up and every ``leases.REAP_SECONDS``.

- audit rows left open by dead processes are closed as ``abandoned`` and their locks released
  (``leases.reap``);
- their Prefect runs, still Running or Pending, are marked Crashed;
- so is any run of an attempt this tool made in-process (tag ``AUDITED``) whose audit row is
  finished while Prefect still shows it unfinished (Prefect went away before the run's end was
  recorded: the row says what happened);
- only runs of this audit database are looked at (tag ``audit-db:<its id>``): another audit
  database's runs on the same Prefect are its own sweep's, whatever their row numbers;
- plans waiting for approval in runs that ended without a decision free their targets.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from sqlmodel import Session

from restate_recovery import leases, store

logger = logging.getLogger(__name__)

AUDITED = "restate-recovery:audited"  # tag of every in-process runbook run, beside audit:<id>
UNFINISHED = ("RUNNING", "PENDING")
SETTLE_AFTER = timedelta(seconds=10)  # a run younger than this may still be on its way


def database_tag() -> str:
    return f"audit-db:{store.database_id(store.database_url())}"


def attempt_tags(attempt_id: int) -> tuple[str, str, str]:
    return AUDITED, f"audit:{attempt_id}", database_tag()


def attempt_of(tags: list[str]) -> int | None:
    for tag in tags:
        if tag.startswith("audit:") and tag[6:].isdigit():
            return int(tag[6:])
    return None


async def sweep() -> list[store.Abandoned]:
    """One sweep; returns the attempts it closed. Prefect being away only defers its part."""
    closed = await asyncio.to_thread(leases.reap)
    try:
        await _crash_runs(closed)
    except Exception as exc:
        logger.warning("sweep: Prefect's runs were not checked: %s", type(exc).__name__)
    return closed


async def _crash_runs(closed: list[store.Abandoned]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    unfinished = FlowRunFilterState(
        type=FlowRunFilterStateType(any_=[StateType[name] for name in UNFINISHED])
    )
    ours = await asyncio.to_thread(database_tag)
    async with get_client() as client:
        crash: dict[Any, str] = {}
        for attempt in closed:
            ids = [attempt.flow_run_id] if attempt.flow_run_id else []
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=ids) if ids else None,
                    tags=None if ids else FlowRunFilterTags(all_=[f"audit:{attempt.id}", ours]),
                    state=unfinished,
                )
            )
            for run in runs:
                crash[run.id] = f"its process stopped: audit row {attempt.id} closed as abandoned"
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[AUDITED, ours]), state=unfinished
            ),
            limit=200,
        )
        settled = store.utcnow() - SETTLE_AFTER
        for run in runs:
            attempt_id = attempt_of(run.tags)
            if attempt_id is None or run.id in crash or (run.created and run.created > settled):
                continue
            row = await asyncio.to_thread(_row, attempt_id)
            if row is None or row.finished_at is not None:
                outcome = row.outcome if row is not None else "unknown"
                crash[run.id] = f"its attempt (audit row {attempt_id}) ended: {outcome}"
        for run_id, why in crash.items():
            await client.set_flow_run_state(run_id, Crashed(message=why), force=True)
            logger.warning("flow run %s marked Crashed: %s", run_id, why)
        await _forget_dead_plans(client)


async def _forget_dead_plans(client: Any) -> None:
    """Plans waiting for approval in runs that ended without a decision (crashed, cancelled
    from the UI): their targets are free for a new plan."""
    from uuid import UUID

    awaiting = await asyncio.to_thread(_awaiting_plans)
    dead = []
    for flow_run_id in awaiting:
        run = await client.read_flow_run(UUID(flow_run_id))
        if run.state is not None and run.state.is_final():
            dead.append(flow_run_id)
    if dead:
        await asyncio.to_thread(_drop_plans, dead)
        logger.warning("forgot the pending plans of ended runs %s", dead)


def _awaiting_plans() -> list[str]:
    with Session(store.engine()) as session:
        return [p.flow_run_id for p in store.plans(session=session) if p.state == "awaiting"]


def _drop_plans(flow_run_ids: list[str]) -> None:
    with Session(store.engine()) as session:
        store.drop_plans(session=session, flow_run_ids=flow_run_ids)


def _row(attempt_id: int) -> store.OperationAudit | None:
    with Session(store.engine()) as session:
        return session.get(store.OperationAudit, attempt_id)
