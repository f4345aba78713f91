"""The audit database's writes of one event loop, a batch per transaction (group commit).

Audit rows (insert, finish) and write locks (take, release) all come here. Writes that come while
a batch commits go together in the next one (one at a time when idle: nothing waits). Under load
that is one thread hop and one commit for many writes instead of one each (SQLite takes one
writer at a time, and each hop and commit costs CPU the runbook's own calls need). A batch the
database refuses is written again one write at a time, each with its own outcome.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from restate_recovery import store


@dataclass
class Write:
    """One write: ``run`` in a batch's transaction (it must not commit), ``alone`` in its own
    (when the batch is refused; it raises or returns as the caller expects), ``committed`` once
    the batch's transaction has committed, with ``run``'s result."""

    run: Callable[[Session], Any]
    alone: Callable[[], Any]
    committed: Callable[[Any], None] | None = None


@dataclass
class _Queued:
    write: Write
    done: asyncio.Future[Any]


class _GroupCommit:
    def __init__(self, url: str) -> None:
        self.url = url
        self.queued: list[_Queued] = []
        self.writing: asyncio.Future[None] | None = None  # the task writing (kept referenced)

    def submit(self, write: Write) -> asyncio.Future[Any]:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queued.append(_Queued(write, done))
        if self.writing is None:
            self.writing = asyncio.ensure_future(self._drain())
        return done

    async def _drain(self) -> None:
        try:
            while self.queued:
                batch, self.queued = self.queued, []
                try:
                    results = await asyncio.to_thread(_write_batch, self.url, batch)
                except asyncio.CancelledError:  # shutdown: each waiter learns it
                    for queued in batch + self.queued:
                        queued.done.cancel()
                    raise
                except Exception as exc:  # not the database's: each of this batch gets it
                    results = [exc] * len(batch)
                for queued, result in zip(batch, results, strict=True):
                    if queued.done.done():
                        continue
                    if isinstance(result, BaseException):
                        queued.done.set_exception(result)
                    else:
                        queued.done.set_result(result)
        finally:
            self.writing = None


_GROUPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _GroupCommit]] = (
    weakref.WeakKeyDictionary()
)


def submit(url: str, write: Write) -> asyncio.Future[Any]:
    """Queue ``write`` for this event loop's next batch to ``url``; its result (or error)."""
    groups = _GROUPS.setdefault(asyncio.get_running_loop(), {})
    if url not in groups:
        groups[url] = _GroupCommit(url)
    return groups[url].submit(write)


def _alone(write: Write) -> Any:
    try:
        return write.alone()
    except Exception as exc:  # each write's own error (AuditUnavailableError, ...)
        return exc


def _write_batch(url: str, batch: list[_Queued]) -> list[Any]:
    """The batch in one transaction; if the database refuses it, each write on its own."""
    if len(batch) == 1:
        return [_alone(batch[0].write)]
    try:
        with Session(store.engine(url)) as session:
            results = [queued.write.run(session) for queued in batch]
            session.commit()
    except SQLAlchemyError:
        return [_alone(queued.write) for queued in batch]
    for queued, result in zip(batch, results, strict=True):
        if queued.write.committed is not None:
            queued.write.committed(result)
    return results
