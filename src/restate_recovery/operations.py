"""Audited runs of the runbook flows, shared by the HTTP API and the CLI.

Every attempt leaves one audit row: inserted before the flow starts (so a crash mid-route still
leaves a trace), finished once with the outcome, the error body and the Prefect flow run id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlmodel import Session

from restate_recovery import store
from restate_recovery.errors import OperatorError
from restate_recovery.runbooks import load_flow
from restate_recovery.settings import get_settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Actor:
    user_id: str
    role: str | None


@cache
def _migrated(url: str) -> bool:
    store.migrate(url)
    return True


def database_url() -> str:
    url = get_settings().recovery_database_url
    _migrated(url)
    return url


def record_start(attempt: store.AuditCreate, started_at: datetime | None) -> int:
    with Session(store.engine_for(database_url())) as session:
        return store.record_attempt(session=session, attempt=attempt, started_at=started_at)


def record_finish(
    attempt_id: int,
    outcome: store.Outcome,
    error: dict[str, Any] | None,
    flow_run_id: str | None,
) -> None:
    with Session(store.engine_for(database_url())) as session:
        store.finish_attempt(
            session=session,
            attempt_id=attempt_id,
            outcome=outcome,
            error=error,
            flow_run_id=flow_run_id,
        )


def _attempt(
    actor: Actor,
    route: str,
    arguments: dict[str, Any],
    reason: str | None,
    request_id: str | None,
) -> store.AuditCreate:
    return store.AuditCreate(
        actor_user_id=actor.user_id,
        role_at_time=actor.role,
        route=route,
        arguments=arguments,
        reason=reason,
        request_id=request_id,
    )


def internal_error_body(exc: BaseException) -> dict[str, Any]:
    return {"code": "INTERNAL_ERROR", "message": f"unexpected {type(exc).__name__}"}


async def audit_refusal(
    *,
    actor: Actor,
    route: str,
    arguments: dict[str, Any],
    reason: str | None,
    request_id: str | None,
    error: OperatorError,
    started_at: datetime | None = None,
) -> None:
    """An attempt refused before any flow ran (invalid input, missing permission)."""
    attempt = _attempt(actor, route, arguments, reason, request_id)
    attempt_id = await asyncio.to_thread(record_start, attempt, started_at)
    await asyncio.to_thread(record_finish, attempt_id, "failure", error.body(), None)


async def run_audited(
    *,
    actor: Actor,
    route: str,
    arguments: dict[str, Any],
    reason: str | None,
    request_id: str | None,
    flow_name: str,
    parameters: dict[str, Any],
    started_at: datetime | None = None,
) -> Any:
    """Run a runbook flow in this process with its audit row; returns the flow's result."""

    async def call() -> tuple[Any, str | None]:
        state = await load_flow(flow_name)(**parameters, return_state=True)
        flow_run_id = str(state.state_details.flow_run_id)
        try:
            return await state.aresult(raise_on_failure=True), flow_run_id
        except BaseException as exc:
            exc.flow_run_id = flow_run_id  # type: ignore[attr-defined]
            raise

    return await audited(
        actor=actor,
        route=route,
        arguments=arguments,
        reason=reason,
        request_id=request_id,
        started_at=started_at,
        call=call,
    )


async def audited(
    *,
    actor: Actor,
    route: str,
    arguments: dict[str, Any],
    reason: str | None,
    request_id: str | None,
    call: Callable[[], Awaitable[tuple[Any, str | None]]],
    started_at: datetime | None = None,
) -> Any:
    """Run ``call`` (which returns its result and a flow run id) between the two audit writes."""
    attempt = _attempt(actor, route, arguments, reason, request_id)
    attempt_id = await asyncio.to_thread(record_start, attempt, started_at)
    try:
        result, flow_run_id = await call()
    except OperatorError as exc:
        run_id = getattr(exc, "flow_run_id", None)
        await asyncio.to_thread(record_finish, attempt_id, "failure", exc.body(), run_id)
        raise
    except BaseException as exc:
        run_id = getattr(exc, "flow_run_id", None)
        body = internal_error_body(exc)
        await asyncio.to_thread(record_finish, attempt_id, "failure", body, run_id)
        raise
    await asyncio.to_thread(record_finish, attempt_id, "success", None, flow_run_id)
    return result
