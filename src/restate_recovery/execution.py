"""Runbooks run in this process, audited: what the operator API's routes and the CLI's local mode
do with a validated request.

A write runbook runs as its Prefect flow here and is answered once the flow has finished
(``run_runbook``). The doctor answers as soon as its probes are done and records that very
answer right after as a ``restate-doctor`` run (``DoctorAnswers``: the same flow module, the same
artifact, events and verdict as the scheduled doctor, no second probe); its audit row is finished
once the run is recorded.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from restate_recovery.audit import Attempt, AuditedAttempt, audited
from restate_recovery.doctor.probes import Endpoints, ProbeClients, resolve_endpoints, run_doctor
from restate_recovery.errors import OperatorError, PrefectUnavailableError
from restate_recovery.janitor import attempt_tags
from restate_recovery.models import DoctorAnswer, DoctorReadout
from restate_recovery.redaction import redact
from restate_recovery.runbooks import DOCTOR, Runbook
from restate_recovery.schemas import RequestModel, WriteOutcome
from restate_recovery.settings import get_settings

logger = logging.getLogger(__name__)


@dataclass
class InProcessRun:
    """What the caller of a runbook run in this process learns of it, whatever Prefect manages to
    record: the audit row it belongs to, and what its one write did (noted by the write task
    itself, before Prefect is told)."""

    attempt_id: int | None = None
    outcome: WriteOutcome | None = None
    error: OperatorError | None = None


CURRENT_RUN: ContextVar[InProcessRun | None] = ContextVar("restate_recovery_run", default=None)


def note_write(outcome: WriteOutcome | None = None, error: OperatorError | None = None) -> None:
    """The write task's result, for a caller in this process (no-op in a deployment run)."""
    run = CURRENT_RUN.get()
    if run is not None:
        run.outcome, run.error = outcome, error


async def run_flow(
    flow: Any,
    parameters: dict[str, Any],
    executor: Executor | None,
    tags: tuple[str, ...] = (),
    context: InProcessRun | None = None,
) -> Any:
    """Run a flow in this process (its run tagged with ``tags``, ``context`` as the current run)
    and return its final state.

    With an ``executor`` the run gets a thread (and event loop) of its own. A long-lived server
    needs that: while a flow runs on the main thread Prefect swaps the SIGTERM handler for one that
    raises inside whatever the main thread is doing, so a plain ``SIGTERM`` would kill the API
    mid-request instead of letting it finish its requests and shut down.
    """
    from prefect import tags as tagged

    async def run() -> Any:
        with tagged(*tags):
            return await flow(**parameters, return_state=True)

    def in_context() -> Any:
        token = CURRENT_RUN.set(context)
        try:
            return asyncio.run(run())
        finally:
            CURRENT_RUN.reset(token)

    if executor is None:
        token = CURRENT_RUN.set(context)
        try:
            return await run()
        finally:
            CURRENT_RUN.reset(token)
    return await asyncio.get_running_loop().run_in_executor(executor, in_context)


def prefect_trouble(exc: BaseException) -> bool:
    """Whether a failure came from talking to Prefect (not from the runbook itself)."""
    import httpx

    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, httpx.HTTPError | OSError) or type(cause).__name__ in (
            "PrefectHTTPStatusError",
            "ObjectNotFound",
        ):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def settle(runbook: Runbook, run: InProcessRun, exc: Exception) -> dict[str, Any]:
    """The answer of a run whose flow did not end as Prefect should have recorded it: what its
    write did if it ran (a write that happened is never reported as failed), else the error."""
    if run.outcome is not None:
        logger.warning(
            "%s (audit row %s): the write was made, but its Prefect run did not end cleanly: %s",
            runbook.name,
            run.attempt_id,
            type(exc).__name__,
        )
        body: dict[str, Any] = run.outcome.result.to_json()
        return body
    if run.error is not None:
        raise run.error from exc
    if prefect_trouble(exc):
        raise PrefectUnavailableError(
            f"Prefect did not run {runbook.name} ({type(exc).__name__}): no write was made. "
            "Check PREFECT_API_URL and Prefect's health, then retry."
        ) from exc
    raise exc


async def run_runbook(
    runbook: Runbook,
    request: RequestModel,
    attempt: Attempt,
    *,
    dry_run: bool,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Run a write runbook's flow with its audit row; returns the route's body. The run is tagged
    ``audit:<row id>`` (so a run left behind by a crash is found and marked Crashed)."""
    async with audited(attempt) as row:
        attempt_id = await row.start()
        run = InProcessRun(attempt_id=attempt_id)
        try:
            state = await run_flow(
                runbook.flow(),
                {
                    "request": request,
                    "operator": attempt.actor,
                    "reason": attempt.reason or "(no reason given)",
                    "dry_run": dry_run,
                },
                executor=executor,
                tags=await asyncio.to_thread(attempt_tags, attempt_id),
                context=run,
            )
        except OperatorError:
            raise
        except Exception as exc:  # Prefect could not run it (or record its end)
            return settle(runbook, run, exc)
        row.flow_run_id = str(state.state_details.flow_run_id)
        try:
            body: dict[str, Any] = await state.aresult(raise_on_failure=True)
        except OperatorError:
            raise
        except Exception as exc:
            return settle(runbook, run, exc)
        return body


def record_flow() -> Any:
    """The flow that records an answered doctor readout (``flows/doctor.py``, beside the doctor)."""
    return DOCTOR.flow("record_answer")


# A record is a flow run; more of them at once only slow Prefect's server down.
RECORDS_AT_ONCE = 4


class DoctorAnswers:
    """Answers doctor calls (the API's, the CLI's local mode) and records each answer as a
    ``restate-doctor`` flow run right after, then finishes its audit row.

    ``source`` says where the answer was given (in the run's tags and log). At most
    ``RECORDS_AT_ONCE`` records run at once and at most ``max_pending`` answers may wait to be
    recorded; past that a new doctor call waits before it probes (nothing is dropped). ``drain``
    waits for the records still pending. The probes' clients are kept open between calls.
    """

    def __init__(self, *, source: str, max_pending: int, executor: Executor | None = None):
        self._source = source
        self._executor = executor
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

    async def answer(self, attempt: Attempt) -> DoctorReadout:
        """Probe and answer; the audit row is written while the probes run (they only read), and
        nothing is answered unless it was written."""
        await self._pending.acquire()
        row = AuditedAttempt(attempt)
        row.begin()
        try:
            try:
                endpoints = resolve_endpoints(get_settings())
                clients = await self._clients_for(endpoints)
                readout: DoctorReadout | None = await run_doctor(endpoints, clients=clients)
                error: OperatorError | None = None
            except OperatorError as exc:  # the admin URL is unset or invalid
                readout, error = None, exc
            await row.start()
        except BaseException as exc:  # crashed or cancelled: the row is finished all the same
            self._keep(self._finish(row, exc))
            raise
        self._keep(self._record(row, readout, error))
        if error is not None:
            raise error
        assert readout is not None
        return readout

    def _keep(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, row: AuditedAttempt, error: BaseException | None) -> None:
        try:
            await row.finish(error)
        except Exception as exc:
            logger.error(
                "the audit row of doctor answer %s was not finished: %s",
                row.attempt.request_id,
                type(exc).__name__,
            )
        finally:
            self._pending.release()

    async def _record(
        self, row: AuditedAttempt, readout: DoctorReadout | None, error: OperatorError | None
    ) -> None:
        attempt = row.attempt
        name = attempt.request_id or f"({self._source})"
        try:
            answer = DoctorAnswer(  # what Prefect stores: redacted (the answer was not)
                readout=DoctorReadout.model_validate(redact(readout.to_json()))
                if readout
                else None,
                error=error.body() if error else None,
                source=self._source,
                actor=attempt.actor,
                request_id=attempt.request_id,
            )
            async with self._recording:
                state = await run_flow(
                    record_flow(), {"answer": answer}, self._executor, (f"via:{self._source}",)
                )
            row.flow_run_id = str(state.state_details.flow_run_id)
        except asyncio.CancelledError:
            logger.warning("doctor answer %s was not recorded in Prefect: stopped first", name)
            raise
        except Exception as exc:
            logger.error(
                "doctor answer %s was not recorded in Prefect: %s", name, type(exc).__name__
            )
        finally:
            await self._finish(row, error)

    async def aclose(self) -> None:
        """Close the probes' clients (after ``drain``)."""
        if self._clients is not None:
            clients, self._clients = self._clients, None
            await clients.aclose()

    async def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for the answers still being recorded."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks:
            remaining = deadline - loop.time()
            if remaining <= 0:
                logger.warning("%d doctor records were still pending at shutdown", len(self._tasks))
                return
            await asyncio.wait(set(self._tasks), timeout=remaining)
