"""The routes' dependencies: who calls (``OperatorDep``), the call's context (``CallDep``: request
id, reason, start time, and the attempt it makes) and the process's runbook runner
(``RunnerDep``)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from restate_recovery import store
from restate_recovery.api.errors import request_id_of
from restate_recovery.audit import Attempt, arguments_of, check_reason, refused, stored_reason
from restate_recovery.errors import (
    AuditUnavailableError,
    ForbiddenError,
    InvalidRequestError,
    OperatorError,
    UnauthenticatedError,
)
from restate_recovery.execution import DoctorAnswers, run_runbook
from restate_recovery.runbooks import Runbook
from restate_recovery.schemas import RequestModel, invalid_request


@dataclass(frozen=True)
class Operator:
    """The holder of a live API key: the audit row's actor and role."""

    actor: str
    role: str


def _lookup_key(presented: str) -> store.KeyHolder | None:
    try:
        with Session(store.engine()) as session:
            return store.authenticate(session=session, presented=presented)
    except SQLAlchemyError as exc:
        raise AuditUnavailableError(
            f"The audit database (which holds the API keys) did not answer "
            f"({type(exc).__name__}): nothing was done"
        ) from exc


# Lookups under way, by event loop and presented key; an entry lives only while its read runs.
_LOOKUPS: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future[store.KeyHolder | None]] = {}


async def _holder_of(presented: str) -> store.KeyHolder | None:
    """The key's holder, read from the audit database. Calls with the same key that come while
    its read runs share that read (it began before they came, as a shared doctor probe does):
    nothing is cached, and a revoked key is refused by every read that starts after the
    revocation."""
    key = (asyncio.get_running_loop(), presented)
    lookup = _LOOKUPS.get(key)
    if lookup is None or lookup.done():  # a read that has ended is never reused
        lookup = asyncio.ensure_future(asyncio.to_thread(_lookup_key, presented))
        _LOOKUPS[key] = lookup

        def ended(done: asyncio.Future[store.KeyHolder | None]) -> None:
            if _LOOKUPS.get(key) is done:
                del _LOOKUPS[key]

        lookup.add_done_callback(ended)
    return await asyncio.shield(lookup)


def reason_of(request: Request) -> str | None:
    """``X-Operator-Reason``: why the operator calls, as sent (clients send UTF-8)."""
    value = request.headers.get("x-operator-reason")
    if not value:
        return None
    try:  # the server decoded the header's bytes as latin-1
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def route_of(request: Request) -> str:
    return request.url.path.rsplit("/", 1)[-1]


def attempt_of(
    request: Request, operator: Operator, arguments: dict[str, Any] | None = None
) -> Attempt:
    return Attempt(
        actor=operator.actor,
        role=operator.role,
        route=route_of(request),
        arguments=arguments or {},
        reason=stored_reason(reason_of(request)),
        request_id=request_id_of(request),
        started_at=request.state.started_at,
    )


async def operator(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> Operator:
    """The caller, from ``X-Api-Key``: 401 if unknown, 403 (audited) without ``system:operate``."""
    if not x_api_key:
        raise UnauthenticatedError("Missing X-Api-Key header")
    key = await _holder_of(x_api_key)
    if key is None:
        raise UnauthenticatedError("Unknown or revoked API key")
    caller = Operator(actor=key.actor_user_id, role=key.role)
    request.state.operator = caller
    if store.SYSTEM_OPERATE not in key.permissions:
        error = ForbiddenError("This API key lacks system:operate permission")
        await refused(attempt_of(request, caller), error)
        raise error
    try:
        check_reason(reason_of(request), field="X-Operator-Reason")
    except InvalidRequestError as invalid:
        await refused(attempt_of(request, caller), invalid)
        raise
    return caller


OperatorDep = Annotated[Operator, Depends(operator)]


async def refuse_invalid(request: Request, errors: list[dict[str, str]]) -> OperatorError:
    """The error for an invalid body: ``INVALID_REQUEST``, audited once the caller is known to be
    an operator (FastAPI reads the body before it authenticates: that is done here first)."""
    caller: Operator | None = getattr(request.state, "operator", None)
    if caller is None:
        try:
            caller = await operator(request, request.headers.get("x-api-key"))
        except OperatorError as auth:
            return auth
    error = invalid_request(errors)
    await refused(attempt_of(request, caller, {"invalidBody": True}), error)
    return error


@dataclass(frozen=True)
class Call:
    """One authenticated call of an operator route."""

    request: Request
    operator: Operator

    def attempt(self, arguments: dict[str, Any]) -> Attempt:
        return attempt_of(self.request, self.operator, arguments)


async def call(request: Request, caller: OperatorDep) -> Call:  # async: no thread hop
    return Call(request=request, operator=caller)


CallDep = Annotated[Call, Depends(call)]
DryRunDep = Annotated[
    bool, Query(alias="dryRun", description="Only plan: answer what would be done, change nothing.")
]


class Runner:
    """Runs the runbooks of this API process: every write call is a Prefect flow run here, at
    most ``max_runs`` at once (the rest queue), each on a thread of its own; doctor answers are
    recorded right after they are given."""

    def __init__(self, *, max_runs: int, max_pending_records: int) -> None:
        self._runs = asyncio.Semaphore(max_runs)
        self.threads = ThreadPoolExecutor(max_workers=max_runs + 2, thread_name_prefix="flow-run")
        self.doctor = DoctorAnswers(
            source="operator API", max_pending=max_pending_records, executor=self.threads
        )

    async def run(
        self, runbook: Runbook, request: RequestModel, call: Call, *, dry_run: bool
    ) -> dict[str, Any]:
        async with self._runs:
            return await run_runbook(
                runbook,
                request,
                call.attempt(arguments_of(request, dry_run=dry_run)),
                dry_run=dry_run,
                executor=self.threads,
            )

    async def close(self, drain_seconds: float) -> None:
        await self.doctor.drain(timeout=drain_seconds)
        await self.doctor.aclose()
        self.threads.shutdown(wait=False)


async def runner(request: Request) -> Runner:
    value: Runner = request.app.state.runner
    return value


RunnerDep = Annotated[Runner, Depends(runner)]
