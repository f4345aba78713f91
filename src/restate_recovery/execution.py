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
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from restate_recovery import metrics
from restate_recovery.audit import Attempt, AuditedAttempt, audited
from restate_recovery.doctor.findings import Finding, doctor_findings
from restate_recovery.doctor.probes import (
    Endpoints,
    ProbeClients,
    choose_admin,
    resolve_endpoints,
    run_doctor,
)
from restate_recovery.errors import OperatorError, PrefectUnavailableError
from restate_recovery.janitor import attempt_tags
from restate_recovery.models import DoctorAnswer, DoctorReadout
from restate_recovery.redaction import redact, redact_text
from restate_recovery.runbooks import DOCTOR, Runbook
from restate_recovery.schemas import RequestModel, WriteOutcome
from restate_recovery.settings import get_settings
from restate_recovery.store import utcnow

logger = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class InProcessRun:
    """What the caller of a runbook run in this process learns of it, whatever Prefect manages to
    record: the audit row and flow run it belongs to, what its one write did (noted by the write
    task itself, before Prefect is told), and when the flow's body has ended (``note_end``)."""

    attempt_id: int | None = None
    outcome: WriteOutcome | None = None
    error: OperatorError | None = None
    flow_run_id: str | None = None
    loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    body_ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def answered(self) -> bool:
        """Whether the run itself said what happened: the write noted an outcome or an error."""
        return self.outcome is not None or self.error is not None

    def end(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.body_ended.set)


CURRENT_RUN: ContextVar[InProcessRun | None] = ContextVar("restate_recovery_run", default=None)

# Once a run's body has ended with its answer, how long its caller waits for Prefect to record
# the run's end before answering anyway (a busy Prefect is retried for about a minute, a lost one
# for as long: the answer does not depend on either). The run goes on recording in the background.
RECORD_GRACE_SECONDS = 10.0
_RECORDING: set[asyncio.Future[Any]] = set()  # runs still recording after their caller was answered
# A readout alike the last recorded one (same signature) becomes a run no sooner than this after
# that run started; alike ones read meanwhile join it. A change is recorded at once.
RECORD_SPACING_SECONDS = 5.0


def note_write(outcome: WriteOutcome | None = None, error: OperatorError | None = None) -> None:
    """The write task's result, for a caller in this process (no-op in a deployment run)."""
    run = CURRENT_RUN.get()
    if run is not None:
        run.outcome, run.error = outcome, error


def note_begin(flow_run_id: str) -> None:
    """A runbook's flow body has begun as run ``flow_run_id`` (no-op in a deployment run)."""
    run = CURRENT_RUN.get()
    if run is not None:
        run.flow_run_id = flow_run_id


def note_end(error: BaseException | None = None) -> None:
    """A runbook's flow body has ended (with ``error`` when it refused before its write): its
    caller need not wait for Prefect to record the end (no-op in a deployment run)."""
    run = CURRENT_RUN.get()
    if run is None:
        return
    if isinstance(error, OperatorError) and not run.answered:
        run.error = error
    run.end()


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


@contextmanager
def untagged_tasks() -> Iterator[None]:
    """Inside a flow's body: the task runs it starts carry none of the flow run's tags (as in a
    deployment's run, where only the flow run has the deployment's tags).

    Prefect's task engine asks the server for concurrency slots for every task run that has
    tags: a write transaction per task run, which its cache of "no limits here" cannot spare
    when one tag (``audit:<row id>``) is new with every attempt. Under load those were the
    requests a busy Prefect answered 503, and a write runbook was reported unavailable.
    The tags are for finding flow runs (``janitor``); no task run needs them.
    """
    from prefect.context import TagsContext

    with TagsContext(current_tags=set()):
        yield


def untagged(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """``fn`` run under ``untagged_tasks``."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with untagged_tasks():
            return await fn(*args, **kwargs)

    return wrapper


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


def cause(exc: BaseException) -> str:
    """One line for a log: the exception's type and (redacted) message."""
    return redact_text(f"{type(exc).__name__}: {exc}")[:500]


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
        logger.error(
            "%s (audit row %s): Prefect did not run it: %s",
            runbook.name,
            run.attempt_id,
            cause(exc),
        )
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
        run = InProcessRun(attempt_id=attempt_id, loop=asyncio.get_running_loop())
        flow_run = asyncio.ensure_future(
            run_flow(
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
        )
        try:
            state = await until_recorded(flow_run, run)
        except OperatorError:
            raise
        except Exception as exc:  # Prefect could not run it (or record its end)
            row.flow_run_id = run.flow_run_id
            return settle(runbook, run, exc)
        if state is None:  # answered by the run itself; Prefect is still recording its end
            row.flow_run_id = run.flow_run_id
            return settle(runbook, run, RunNotRecordedError(RECORD_GRACE_SECONDS))
        row.flow_run_id = str(state.state_details.flow_run_id)
        try:
            body: dict[str, Any] = await state.aresult(raise_on_failure=True)
        except OperatorError:
            raise
        except Exception as exc:
            return settle(runbook, run, exc)
        return body


class RunNotRecordedError(Exception):
    """Prefect had not recorded a run's end this long after its body ended."""

    def __init__(self, seconds: float):
        super().__init__(f"Prefect had not recorded the run's end {seconds:g} s after it ended")


async def until_recorded(flow_run: asyncio.Future[Any], run: InProcessRun) -> Any:
    """The run's final state once Prefect has recorded it; ``None`` when the run's body ended
    with its answer and Prefect did not record the end within ``RECORD_GRACE_SECONDS`` (then
    the run finishes recording in the background, and a sweep marks it Crashed should Prefect
    never take it)."""
    body_ended = asyncio.ensure_future(run.body_ended.wait())
    try:
        await asyncio.wait({flow_run, body_ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        body_ended.cancel()
    if not flow_run.done() and run.answered:
        await asyncio.wait({flow_run}, timeout=RECORD_GRACE_SECONDS)
        if not flow_run.done():
            _RECORDING.add(flow_run)
            flow_run.add_done_callback(_recorded_late)
            return None
    return await flow_run


def _recorded_late(flow_run: asyncio.Future[Any]) -> None:
    _RECORDING.discard(flow_run)
    if not flow_run.cancelled() and (exc := flow_run.exception()) is not None:
        logger.warning("a run answered before Prefect recorded its end: %s", cause(exc))


def record_flow() -> Any:
    """The flow that records an answered doctor readout (``flows/doctor.py``, beside the doctor)."""
    return DOCTOR.flow("record_answer")


# A readout (or the error it is answered with) and its ``signature``.
Probed = tuple[DoctorReadout | None, OperatorError | None, tuple[Any, ...]]


@dataclass
class _SharedProbe:
    """One doctor readout being read, and the rows of every call it answers."""

    probe: asyncio.Future[Probed] | None = None
    rows: list[AuditedAttempt] = field(default_factory=list)
    holds_slot: bool = False  # it took one of ``max_pending`` (given back once recorded or merged)
    body: bytes | None = None  # the answer's JSON, made by the first call that needs it


def signature(readout: DoctorReadout, findings: list[Finding]) -> tuple[Any, ...]:
    """What a record stands for: each component's status and every finding (kind, subject and
    identity). Readouts with the same signature differ only in timings."""
    return (
        tuple((name, part.status) for name, part in readout.components()),
        tuple(
            sorted(
                (
                    f.event,
                    tuple(sorted(f.resource.items())),
                    str(f.payload.get("fingerprint") or f.payload.get("error") or ""),
                )
                for f in findings
            )
        ),
    )


@dataclass
class _Record:
    """Consecutive readouts with one signature, waiting to become one ``restate-doctor`` run:
    the last readout (what is true now), how many there were and when, and every call's row."""

    signature: tuple[Any, ...]
    readout: DoctorReadout | None
    error: OperatorError | None
    rows: list[AuditedAttempt]
    holds_slot: bool
    readouts: int = 1
    first_read_at: datetime = field(default_factory=utcnow)
    last_read_at: datetime = field(default_factory=utcnow)

    def merge(self, readout: DoctorReadout | None, rows: list[AuditedAttempt]) -> None:
        self.readout = readout
        self.rows.extend(rows)
        self.readouts += 1
        self.last_read_at = utcnow()


class DoctorAnswers:
    """Answers doctor calls (the API's, the CLI's local mode) and records each readout as a
    ``restate-doctor`` flow run soon after, then finishes the audit rows it answered.

    Calls that come while a readout is being read share it: one probe, one answer each and one
    audit row each. Records are made one at a time, in order; readouts read while one is being
    made wait for the next, and consecutive ones with the same ``signature`` (the same component
    statuses and findings) become one run, which shows the last readout and names how many there
    were, when, and every caller. A run alike the one before it starts no sooner than
    ``RECORD_SPACING_SECONDS`` after it (a readout that differs ends the wait). So under load
    Prefect gets a run per change of the doctor's verdict, or one per ``RECORD_SPACING_SECONDS``,
    not one per probe, and every call's row points at the run of its readout. ``source`` says
    where the answer was given (in the run's tags and log). At most
    ``max_pending`` records may wait; past that a new readout waits before it probes (nothing is
    dropped). ``drain`` waits for the records still pending. The probes' clients are kept open
    between calls.
    """

    def __init__(self, *, source: str, max_pending: int, executor: Executor | None = None):
        self._source = source
        self._executor = executor
        self._pending = asyncio.Semaphore(max_pending)
        self._tasks: set[asyncio.Future[Any]] = set()
        self._clients: ProbeClients | None = None
        self._current: _SharedProbe | None = None
        self._waiting: deque[_Record] = deque()  # read, not yet being recorded (oldest first)
        self._recorder: asyncio.Future[Any] | None = None
        self._last_record: tuple[tuple[Any, ...], float] | None = None  # signature, started at
        self._news = asyncio.Event()  # a readout unlike the waiting one, or a drain
        self._draining = False
        self.probes_read = 0  # how many readouts were read (fewer than calls under load)
        self.records_made = 0  # how many restate-doctor runs were started (fewer than readouts)

    async def _clients_for(self, endpoints: Endpoints) -> ProbeClients:
        """Keep-alive clients for the probes, reused while the endpoints stay the same."""
        if self._clients is not None and self._clients.endpoints != endpoints:
            stale, self._clients = self._clients, None
            await stale.aclose()
        if self._clients is None:
            self._clients = ProbeClients(endpoints)
        return self._clients

    async def _read(self, shared: _SharedProbe) -> Probed:
        await self._pending.acquire()  # released once this readout is recorded or merged
        shared.holds_slot = True
        self.probes_read += 1
        try:
            endpoints = await choose_admin(resolve_endpoints(get_settings()))
            clients = await self._clients_for(endpoints)
            readout = await run_doctor(endpoints, clients=clients)
        except OperatorError as exc:  # the admin URL is unset or invalid
            return None, exc, ("error", exc.code)
        findings = doctor_findings(readout, get_settings().restate_service_url)
        metrics.readout_read(readout, findings)
        return readout, None, signature(readout, findings)

    def _shared(self) -> _SharedProbe:
        """The readout being read now, or a new one (no await here: callers cannot race)."""
        current = self._current
        if current is None or current.probe is None or current.probe.done():
            current = self._current = _SharedProbe()
            current.probe = asyncio.ensure_future(self._read(current))
            self._keep(self._queue(current))
        return current

    async def answer(self, attempt: Attempt) -> DoctorReadout:
        """Probe (or join the probe under way) and answer; the audit row is written while the
        probes run (they only read), and nothing is answered unless it was written."""
        readout, _ = await self._answer(attempt)
        return readout

    async def answer_json(self, attempt: Attempt) -> bytes:
        """``answer`` as the JSON body (camelCase), serialized once for every call it answers."""
        readout, shared = await self._answer(attempt)
        if shared.body is None:
            shared.body = readout.model_dump_json(by_alias=True).encode()
        return shared.body

    async def _answer(self, attempt: Attempt) -> tuple[DoctorReadout, _SharedProbe]:
        row = AuditedAttempt(attempt)
        row.begin()
        shared = self._shared()
        shared.rows.append(row)
        assert shared.probe is not None
        try:
            readout, error, _ = await asyncio.shield(shared.probe)
            await row.start()
        except BaseException as exc:  # crashed or cancelled: the row is finished all the same
            shared.rows.remove(row)
            if not shared.rows and not shared.probe.done():
                shared.probe.cancel()  # nobody waits for this readout any more
            self._keep(self._finish(row, exc))
            raise
        if error is not None:
            raise error
        assert readout is not None
        return readout, shared

    async def refresh(self, max_age: float) -> None:
        """Read a readout for the metrics when this process's last one is older than
        ``max_age`` (or there is none): join the one being read, or read one. It answers nobody,
        so it has no audit row and no record (unless a call joins it: then it is that call's)."""
        age = metrics.readout_age()
        if age is not None and age < max_age:
            return
        shared = self._shared()
        assert shared.probe is not None
        try:
            await asyncio.shield(shared.probe)  # an unusable admin URL comes back, not raised
        except Exception as exc:  # the scrape still gets the metrics as they are
            logger.error("the readout for the metrics was not read: %s", cause(exc))

    def _keep(self, coroutine: Any) -> asyncio.Future[Any]:
        task: asyncio.Future[Any] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _finish(self, row: AuditedAttempt, error: BaseException | None) -> None:
        try:
            await row.finish(error)
        except Exception as exc:
            logger.error(
                "the audit row of doctor answer %s was not finished: %s",
                row.attempt.request_id,
                type(exc).__name__,
            )

    async def _queue(self, shared: _SharedProbe) -> None:
        """Once the readout is read: join the record waiting with the same signature, or wait
        as a record of its own."""
        assert shared.probe is not None
        try:
            readout, error, sign = await asyncio.shield(shared.probe)
        except BaseException as exc:  # the probe itself crashed: each row says so
            await asyncio.gather(*(self._finish(row, exc) for row in list(shared.rows)))
            if shared.holds_slot:
                self._pending.release()
            raise
        rows = list(shared.rows)  # no call joins a readout once it is read
        if not rows:  # every caller went away: nothing to record
            if shared.holds_slot:
                self._pending.release()
            return
        last = self._waiting[-1] if self._waiting else None
        if last is not None and last.signature == sign:
            last.merge(readout, rows)
            if shared.holds_slot:
                self._pending.release()
        else:
            self._waiting.append(_Record(sign, readout, error, rows, shared.holds_slot))
            self._news.set()
        if self._recorder is None or self._recorder.done():
            self._recorder = self._keep(self._record_waiting())

    async def _record_waiting(self) -> None:
        while self._waiting:
            await self._spaced(self._waiting[0])
            await self._record(self._waiting.popleft())

    async def _spaced(self, record: _Record) -> None:
        """A record alike the last one made waits until ``RECORD_SPACING_SECONDS`` after it
        started (alike readouts read meanwhile join it); one unlike it behind, or a drain, ends
        the wait."""
        if self._last_record is None or self._last_record[0] != record.signature:
            return
        loop = asyncio.get_running_loop()
        until = self._last_record[1] + RECORD_SPACING_SECONDS
        while not self._draining and len(self._waiting) == 1 and (left := until - loop.time()) > 0:
            self._news.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), left)

    async def _record(self, record: _Record) -> None:
        """One ``restate-doctor`` run for the record, then its rows (each pointing at the run)."""
        self._last_record = (record.signature, asyncio.get_running_loop().time())
        rows = record.rows
        first = rows[0].attempt
        name = first.request_id or f"({self._source})"
        readout, error = record.readout, record.error
        try:
            answer = DoctorAnswer(  # what Prefect stores: redacted (the answer was not)
                readout=DoctorReadout.model_validate(redact(readout.to_json()))
                if readout
                else None,
                error=error.body() if error else None,
                source=self._source,
                actor=first.actor,
                request_id=first.request_id,
                also_answered=[
                    f"{r.attempt.actor} ({r.attempt.request_id or 'no request id'})"
                    for r in rows[1:]
                ],
                readouts=record.readouts,
                first_read_at=record.first_read_at,
                last_read_at=record.last_read_at,
            )
            self.records_made += 1
            state = await run_flow(
                record_flow(), {"answer": answer}, self._executor, (f"via:{self._source}",)
            )
            for row in rows:
                row.flow_run_id = str(state.state_details.flow_run_id)
        except asyncio.CancelledError:
            logger.warning("doctor answer %s was not recorded in Prefect: stopped first", name)
            raise
        except Exception as exc:
            metrics.RECORD_FAILURES.inc()
            logger.error("doctor answer %s was not recorded in Prefect: %s", name, cause(exc))
        finally:
            try:
                await asyncio.gather(*(self._finish(row, error) for row in rows))
            finally:
                if record.holds_slot:
                    self._pending.release()

    async def aclose(self) -> None:
        """Close the probes' clients (after ``drain``)."""
        if self._clients is not None:
            clients, self._clients = self._clients, None
            await clients.aclose()

    async def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for the answers still being recorded (at once: no spacing)."""
        self._draining = True
        self._news.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks:
            remaining = deadline - loop.time()
            if remaining <= 0:
                logger.warning("%d doctor records were still pending at shutdown", len(self._tasks))
                return
            await asyncio.wait(set(self._tasks), timeout=remaining)
