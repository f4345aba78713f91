"""The one way an attempt is audited, whoever makes it: the operator API, the CLI's local mode,
or a Prefect deployment run (UI, schedule, automation).

An ``Attempt`` carries who (actor and role), what (route and arguments), why (reason) and the
request id. Its row is inserted once when the attempt starts (so a crash mid-way still leaves a
trace) and finished once with the outcome, the error body and the Prefect flow run id
(``AuditedAttempt``). ``audited`` is the usual form: a block whose exception, if any, is the
failure. Refusals before anything runs (a missing permission, an invalid body) are attempts too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from restate_recovery import leases, metrics, store, writes
from restate_recovery.errors import (
    AuditUnavailableError,
    InvalidRequestError,
    OperatorError,
    error_body,
)
from restate_recovery.models import ApiModel
from restate_recovery.redaction import redact_text

logger = logging.getLogger(__name__)

# The audit row of the write that runs now (set around a runbook's write): a write made of many
# (recover-stuck-workflows) signs its per-key rows as this one.
PARENT_ATTEMPT: ContextVar[int | None] = ContextVar("restate_recovery_parent", default=None)

MAX_REASON = 2000  # characters, as the table stores them


def check_reason(reason: str | None, *, field: str) -> str | None:
    """A reason as given (UTF-8, any characters), or ``INVALID_REQUEST`` when the table could not
    keep it whole."""
    if not reason:
        return None
    if len(reason) > MAX_REASON:
        message = f"at most {MAX_REASON} characters (got {len(reason)})"
        raise InvalidRequestError(
            f"Invalid request: {field}: {message}", [{"field": field, "message": message}]
        )
    return reason


def stored_reason(reason: str | None) -> str | None:
    """What an attempt keeps of a reason (its row, its Prefect run's parameters): redacted, and
    cut (and marked) where redaction or an over-long text went past ``MAX_REASON``."""
    if not reason:
        return None
    kept = redact_text(reason)
    if len(kept) <= MAX_REASON:
        return kept
    marker = " [truncated]"
    return kept[: MAX_REASON - len(marker)] + marker


@dataclass(frozen=True)
class Attempt:
    """One attempt at an operator route, as its audit row starts."""

    actor: str
    role: str
    route: str
    arguments: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    request_id: str | None = None
    started_at: datetime = field(default_factory=store.utcnow)


def arguments_of(
    request: ApiModel, *, dry_run: bool = False, approval: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The arguments an attempt's row keeps: the route's body (serialized, so redacted), and
    ``dryRun`` / ``approval`` when they apply."""
    arguments = request.to_json()
    if dry_run:
        arguments["dryRun"] = True
    if approval:
        arguments["approval"] = approval
    return arguments


def _row_of(attempt: Attempt) -> store.AuditCreate:
    return store.AuditCreate(
        actor_user_id=attempt.actor,
        role_at_time=attempt.role,
        route=attempt.route,
        arguments=attempt.arguments,
        reason=attempt.reason,
        request_id=attempt.request_id,
    )


def _record(session: Session, attempt: Attempt, flow_run_id: str | None, *, commit: bool) -> int:
    return store.record_attempt(
        session=session,
        attempt=_row_of(attempt),
        started_at=attempt.started_at,
        owner=leases.owner(),
        lease_expires_at=store.db_now(session) + leases.ATTEMPT_LEASE,
        flow_run_id=flow_run_id,
        commit=commit,
    )


def _close(
    session: Session,
    row_id: int,
    error: dict[str, Any] | None,
    flow_run_id: str | None,
    *,
    commit: bool,
) -> None:
    store.finish_attempt(
        session=session,
        attempt_id=row_id,
        outcome="failure" if error else "success",
        error=error,
        flow_run_id=flow_run_id,
        commit=commit,
    )


def _insert(attempt: Attempt, flow_run_id: str | None, url: str) -> int:
    try:
        with Session(store.engine(url)) as session:
            row_id = _record(session, attempt, flow_run_id, commit=True)
    except SQLAlchemyError as exc:
        metrics.AUDIT_FAILURES.labels(step="begin").inc()
        raise AuditUnavailableError(
            f"The audit database did not take the attempt's row ({type(exc).__name__}): nothing "
            "was done. Check RECOVERY_DATABASE_URL and the database, then retry."
        ) from exc
    leases.KEEPER.hold_attempt(row_id, url)
    return row_id


def _finish(url: str, row_id: int, error: dict[str, Any] | None, flow_run_id: str | None) -> None:
    try:
        with Session(store.engine(url)) as session:
            _close(session, row_id, error, flow_run_id, commit=True)
    except SQLAlchemyError as exc:  # what was done stands: the row is finished once it is back
        metrics.AUDIT_FAILURES.labels(step="finish").inc()
        logger.error(
            "audit row %s not finished (%s): it will be, once the database is back",
            row_id,
            type(exc).__name__,
        )
        leases.KEEPER.finish_late(url, row_id, error, flow_run_id)
        return
    leases.KEEPER.drop_attempt(row_id)


def _insert_write(attempt: Attempt, flow_run_id: str | None, url: str) -> writes.Write:
    """The row's insert, in a batch (``_insert`` when alone)."""
    return writes.Write(
        run=lambda session: _record(session, attempt, flow_run_id, commit=False),
        alone=lambda: _insert(attempt, flow_run_id, url),
        committed=lambda row_id: leases.KEEPER.hold_attempt(row_id, url),
    )


def _finish_write(
    url: str, row_id: int, error: dict[str, Any] | None, flow_run_id: str | None
) -> writes.Write:
    """The row's finish, in a batch (``_finish`` when alone)."""
    return writes.Write(
        run=lambda session: _close(session, row_id, error, flow_run_id, commit=False),
        alone=lambda: _finish(url, row_id, error, flow_run_id),
        committed=lambda _: leases.KEEPER.drop_attempt(row_id),
    )


class AuditedAttempt:
    """The row of one attempt: ``begin`` inserts it (once), ``finish`` finishes it (once).

    ``begin`` returns at once (the insert runs in a thread), so a read-only doctor can probe
    while its row is written; ``finish`` waits for the insert first. Set ``flow_run_id`` once
    the attempt's Prefect run is known (before ``begin``, it goes into the row at once). While the
    row is open its process renews its lease (``leases``). A database that cannot take the row
    refuses the attempt (``AUDIT_DATABASE_UNAVAILABLE``); one that cannot take its finish delays
    it, never what the attempt did.
    """

    def __init__(self, attempt: Attempt) -> None:
        self.attempt = attempt
        self.flow_run_id: str | None = None
        self._url = store.database_url()
        self._insert: asyncio.Future[int] | None = None
        self._finished = False

    def begin(self) -> asyncio.Future[int]:
        if self._insert is None:
            inserted = writes.submit(
                self._url, _insert_write(self.attempt, self.flow_run_id, self._url)
            )
            self._insert = asyncio.ensure_future(_row_id(inserted))
        return self._insert

    async def start(self) -> int:
        """The row's id, once it is written."""
        return await asyncio.shield(self.begin())

    async def finish(self, error: BaseException | dict[str, Any] | None = None) -> None:
        """Finish the row: success without ``error``, else failure with its body."""
        if self._finished:
            return
        self._finished = True
        row_id = await asyncio.shield(self.begin())
        body = error_body(error) if isinstance(error, BaseException) else error
        finished = writes.submit(
            self._url, _finish_write(self._url, row_id, body, self.flow_run_id)
        )
        await asyncio.shield(finished)
        seconds = (store.utcnow() - self.attempt.started_at).total_seconds()
        metrics.attempt_finished(self.attempt.route, "failure" if body else "success", seconds)


async def _row_id(inserted: asyncio.Future[Any]) -> int:
    row_id = await inserted
    assert isinstance(row_id, int)
    return row_id


@asynccontextmanager
async def audited(attempt: Attempt) -> AsyncIterator[AuditedAttempt]:
    """Audit a block: its row is written before it runs and finished with its outcome."""
    row = AuditedAttempt(attempt)
    await row.start()
    try:
        yield row
    except BaseException as exc:
        await row.finish(exc)
        raise
    await row.finish()


async def refused(attempt: Attempt, error: OperatorError) -> None:
    """An attempt refused before anything ran (a missing permission, an invalid body)."""
    row = AuditedAttempt(attempt)
    await row.finish(error)
