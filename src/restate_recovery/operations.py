"""Audited runs of the runbook flows, shared by the HTTP API and the CLI.

Every attempt leaves one audit row: inserted before the flow starts (so a crash mid-route still
leaves a trace), finished once with the outcome, the error body and the Prefect flow run id.

The doctor (API and CLI) is the one exception to "answer when the flow has finished": it answers
as soon as its probes are done, then records that readout as a ``restate-doctor`` flow run right
after (``DoctorRecorder``, ``run_record``); its audit row is finished when the run is recorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlmodel import Session

from restate_recovery import store
from restate_recovery.doctor import (
    AnsweredReadout,
    Endpoints,
    ProbeClients,
    resolve_endpoints,
    run_doctor,
)
from restate_recovery.errors import OperatorError
from restate_recovery.models import DoctorReadout
from restate_recovery.run_record import RecordError, RunRecorder, doctor_run_record
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


async def call_flow(name: str, parameters: dict[str, Any], executor: Executor | None) -> Any:
    """Run a runbook flow in this process and return its final state.

    With an ``executor`` the run gets a thread (and event loop) of its own. A long-lived server
    needs that: while a flow runs on the main thread Prefect swaps the SIGTERM handler for one that
    raises inside whatever the main thread is doing, so a plain ``SIGTERM`` would kill the API
    mid-request instead of letting it finish its requests and shut down.
    """
    if executor is None:
        return await load_flow(name)(**parameters, return_state=True)

    def in_thread() -> Any:
        return asyncio.run(load_flow(name)(**parameters, return_state=True))

    return await asyncio.get_running_loop().run_in_executor(executor, in_thread)


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
    executor: Executor | None = None,
) -> Any:
    """Run a runbook flow in this process with its audit row; returns the flow's result."""

    async def call() -> tuple[Any, str | None]:
        state = await call_flow(flow_name, parameters, executor)
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


# A record is a few requests to Prefect; more of them at once only slow its server down.
RECORDS_AT_ONCE = 4


class DoctorRecorder:
    """Answers doctor calls (the API's, the CLI's), then records each answered readout as a
    ``restate-doctor`` flow run (``run_record``) and finishes its audit row.

    ``source`` says where the answer was given (in the run's log and tags). At most
    ``RECORDS_AT_ONCE`` records talk to Prefect at once, and at most ``max_pending`` answers may
    wait to be recorded; past that a new doctor call waits before it probes (nothing is dropped).
    ``drain`` waits for the records still pending.
    """

    def __init__(
        self, *, source: str, max_pending: int, recorder: RunRecorder | None = None
    ) -> None:
        self._source = source
        self._recorder = recorder or RunRecorder()
        self._recording = asyncio.Semaphore(RECORDS_AT_ONCE)
        self._pending = asyncio.Semaphore(max_pending)
        self._tasks: set[asyncio.Future[Any]] = set()
        self._clients: ProbeClients | None = None

    async def _clients_for(self, endpoints: Endpoints) -> ProbeClients:
        """Keep-alive clients for the probes, reused while the endpoints stay the same."""
        if self._clients is not None and self._clients.endpoints != endpoints:
            stale, self._clients = self._clients, None
            await stale.aclose()
        if self._clients is None:
            self._clients = ProbeClients(endpoints)
        return self._clients

    async def answer(
        self,
        *,
        actor: Actor,
        reason: str | None,
        request_id: str | None,
        started_at: datetime | None = None,
    ) -> DoctorReadout:
        """Probe, answer, and leave the audit row and the flow run to the background record."""
        await self._pending.acquire()
        try:
            attempt_id, answered = await self._probe(actor, reason, request_id, started_at)
        except BaseException:
            self._pending.release()
            raise
        task = asyncio.create_task(self._record(attempt_id, actor, answered))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return answered.unwrap()

    async def _probe(
        self, actor: Actor, reason: str | None, request_id: str | None, started_at: datetime | None
    ) -> tuple[int, AnsweredReadout]:
        # The audit row is written while the probes run (they only read); nothing is answered
        # unless it was written.
        attempt = _attempt(actor, "doctor", {}, reason, request_id)
        row = asyncio.ensure_future(asyncio.to_thread(record_start, attempt, started_at))
        try:
            try:
                endpoints = resolve_endpoints(get_settings())
                clients = await self._clients_for(endpoints)
                readout = await run_doctor(endpoints, clients=clients)
                answered = AnsweredReadout(readout=readout, error=None, request_id=request_id)
            except OperatorError as exc:  # the admin URL is unset or invalid
                answered = AnsweredReadout(readout=None, error=exc, request_id=request_id)
            return await asyncio.shield(row), answered
        except BaseException as exc:  # crashed or cancelled: finish the row once it is written
            self._finish_when_written(row, internal_error_body(exc))
            raise

    def _finish_when_written(self, row: asyncio.Future[int], error: dict[str, Any]) -> None:
        def finish(written: asyncio.Future[int]) -> None:
            if written.cancelled() or written.exception() is not None:
                return  # no row was written: nothing to finish
            task = asyncio.ensure_future(
                asyncio.to_thread(record_finish, written.result(), "failure", error, None)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._tasks.add(row)  # drain waits for the row too
        row.add_done_callback(self._tasks.discard)
        row.add_done_callback(finish)

    async def _record(self, attempt_id: int, actor: Actor, answered: AnsweredReadout) -> None:
        flow_run_id: str | None = None
        name = answered.request_id or f"({self._source})"
        try:
            record = doctor_run_record(
                answered,
                source=self._source,
                actor=actor.user_id,
                service_url=get_settings().restate_service_url,
            )
            async with self._recording:
                flow_run_id = await self._recorder.record(record)
        except asyncio.CancelledError:
            logger.warning("doctor answer %s was not recorded in Prefect: stopped first", name)
            raise
        except RecordError as exc:
            flow_run_id = exc.flow_run_id
            logger.error("doctor answer %s was not recorded in Prefect: %s", name, exc)
        except Exception:
            logger.exception("doctor answer %s was not recorded in Prefect", name)
        finally:
            try:
                outcome: store.Outcome = "success" if answered.error is None else "failure"
                error = answered.error.body() if answered.error is not None else None
                await asyncio.to_thread(record_finish, attempt_id, outcome, error, flow_run_id)
            finally:
                self._pending.release()

    async def aclose(self) -> None:
        """Close the probes' and Prefect's clients (after ``drain``)."""
        try:
            await self._recorder.aclose()
        finally:
            if self._clients is not None:
                clients, self._clients = self._clients, None
                await clients.aclose()

    async def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for the answers still being recorded."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks:  # a finished row can start its finishing write: look again
            remaining = deadline - loop.time()
            if remaining <= 0:
                logger.warning("%d doctor records were still pending at shutdown", len(self._tasks))
                return
            await asyncio.wait(set(self._tasks), timeout=remaining)
