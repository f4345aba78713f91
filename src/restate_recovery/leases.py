"""Leases: what a process that dies leaves behind is cleaned up within seconds, by others.

- Every open audit row has an owner (``host:pid:start:namespace``) and a lease its process renews every
  ``RENEW_SECONDS`` (``ATTEMPT_LEASE`` long). ``reap`` closes the rows of dead processes with the
  outcome ``abandoned``, marks their Prefect runs Crashed and releases their locks; the operator
  API runs it at start-up and every ``REAP_SECONDS``. A dead process of this host is known dead at
  once; one elsewhere once its lease has run out for ``REAP_GRACE``.
- ``lock(target)`` is the one-write-per-target lock: a row in the audit database with a
  ``LOCK_LEASE`` lease its holder renews, so a dead holder's lock is free again within seconds.
- A row whose finish could not be written (the database was away) is finished by the keeper as
  soon as the database is back.

One keeper thread per process does the renewing and the late finishing, whatever event loops
the attempts run on.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import cache
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from restate_recovery import store, writes
from restate_recovery.errors import AuditUnavailableError, RecoveryInProgressError

logger = logging.getLogger(__name__)

RENEW_SECONDS = 2.0
ATTEMPT_LEASE = timedelta(seconds=30)
LOCK_LEASE = timedelta(seconds=10)
REAP_GRACE = timedelta(seconds=60)
REAP_SECONDS = 15.0
LOCK_POLL_SECONDS = 0.25
EXIT_FLUSH_SECONDS = 10.0  # how long a process ending waits for its unwritten finishes


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a process (clock ticks since boot), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _namespace() -> str:
    """Which process table a pid belongs to: this boot (``boot_id``) and this pid namespace (its
    inode). Two containers may share a host name (host networking), never both of these."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            boot_id = boot.read().strip().replace("-", "")[:12]
        pid_namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return "unknown"
    return f"{boot_id}.{pid_namespace}"


@cache
def owner() -> str:
    """This process, as audit rows and locks name it: ``host:pid:start:namespace``."""
    pid = os.getpid()
    start = _start_time(pid) or uuid.uuid4().hex[:8]
    return f"{socket.gethostname()[:64]}:{pid}:{start}:{_namespace()}"


def is_dead(name: str | None) -> bool:
    """Whether ``name`` is a process of this very process table (same host, boot and pid
    namespace) that is gone, or was replaced under its pid. Anything else (another host, another
    container under the same host name, a machine without ``/proc``, an owner of an older
    format) is never known dead here: its lease says so."""
    if not name:
        return False
    parts = name.split(":")
    if len(parts) != 4 or _namespace() == "unknown":
        return False
    host, pid, start, namespace = parts
    if host != socket.gethostname()[:64] or namespace != _namespace() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return name != owner()
    return _start_time(int(pid)) != start


class Keeper:
    """The process's keeper thread: renews the leases of its open attempts and held locks, and
    writes the finishes the database could not take when they were made (each in the database it
    belongs to)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._attempts: dict[int, str] = {}  # attempt id -> database URL
        self._holders: dict[str, str] = {}  # lock holder -> database URL
        self._late: dict[tuple[str, int], tuple[dict[str, Any] | None, str | None]] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def _ensure_started(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            if self._thread is None:
                atexit.register(self.flush, EXIT_FLUSH_SECONDS)
            self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
            self._thread.start()

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` for the finishes not yet written (at exit: a CLI call or a flow
        process ending right after the database refused one); returns how many are left, each
        then closed by a sweep as abandoned."""
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.1)
        left = self.pending()
        if left:
            logger.error(
                "%d audit row(s) not finished: the database did not answer for %g s; a sweep "
                "will close them as abandoned",
                left,
                timeout,
            )
        return left

    def hold_attempt(self, attempt_id: int, url: str) -> None:
        with self._lock:
            self._attempts[attempt_id] = url
            self._ensure_started()

    def drop_attempt(self, attempt_id: int) -> None:
        with self._lock:
            self._attempts.pop(attempt_id, None)

    def hold_lock(self, holder: str, url: str) -> None:
        with self._lock:
            self._holders[holder] = url
            self._ensure_started()

    def drop_lock(self, holder: str) -> None:
        with self._lock:
            self._holders.pop(holder, None)

    def finish_late(
        self, url: str, attempt_id: int, error: dict[str, Any] | None, flow_run_id: str | None
    ) -> None:
        """A finish the database did not take: written as soon as it is back."""
        with self._lock:
            self._late[(url, attempt_id)] = (error, flow_run_id)
            self._ensure_started()
        self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._late)

    def _run(self) -> None:
        while True:
            self._wake.wait(RENEW_SECONDS)
            self._wake.clear()
            with self._lock:
                urls = {*self._attempts.values(), *self._holders.values()}
                urls |= {url for url, _ in self._late}
            for url in urls:
                try:
                    self.tick(url)
                except Exception as exc:  # the database is away: try again next tick
                    logger.warning("lease keeper: %s", type(exc).__name__)

    def tick(self, url: str) -> None:
        with self._lock:
            late = {key: value for key, value in self._late.items() if key[0] == url}
            attempts = sorted(i for i, u in self._attempts.items() if u == url)
            holders = sorted(h for h, u in self._holders.items() if u == url)
        with Session(store.engine(url)) as session:
            now = store.db_now(session)
            for (_, attempt_id), (error, flow_run_id) in late.items():
                store.finish_attempt(
                    session=session,
                    attempt_id=attempt_id,
                    outcome="failure" if error else "success",
                    error=error,
                    flow_run_id=flow_run_id,
                )
                with self._lock:
                    self._late.pop((url, attempt_id), None)
                    self._attempts.pop(attempt_id, None)
                logger.info("audit row %s finished now that the database is back", attempt_id)
            if attempts:
                store.renew_attempts(
                    session=session, attempt_ids=attempts, until=now + ATTEMPT_LEASE
                )
            if holders:
                lost = store.renew_locks(session=session, holders=holders, until=now + LOCK_LEASE)
                for holder in lost:
                    with self._lock:
                        still_held = self._holders.pop(holder, None) is not None
                    if still_held:  # not released by its writer meanwhile: it lost it
                        logger.error(
                            "write lock %s was lost (its lease ran out before it was renewed; "
                            "another writer may act on its target now)",
                            holder,
                        )


KEEPER = Keeper()


@asynccontextmanager
async def lock(
    target: str, *, timeout: float, attempt_id: int | None = None, flow_run_id: str | None = None
) -> AsyncIterator[None]:
    """Hold the write lock of ``target`` (waiting up to ``timeout``, then
    ``RESTATE_RECOVERY_IN_PROGRESS`` naming who holds it). Released on the way out; if this
    process dies instead, its lease runs out within ``LOCK_LEASE``."""
    holder, url = uuid.uuid4().hex, store.database_url()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def row(now: Any) -> store.RecoveryLock:
        return store.RecoveryLock(
            target=target,
            holder=holder,
            owner=owner(),
            attempt_id=attempt_id,
            flow_run_id=flow_run_id,
            acquired_at=now,
            expires_at=now + LOCK_LEASE,
        )

    def in_session(session: Session, *, commit: bool = False) -> store.RecoveryLock | None:
        now = store.db_now(session)
        return store.try_lock(session=session, lock=row(now), now=now, commit=commit)

    def alone() -> store.RecoveryLock | None:
        with Session(store.engine(url)) as session:
            return in_session(session, commit=True)

    take = writes.Write(run=in_session, alone=alone)
    while (held := await _unavailable_as_refusal(writes.submit(url, take))) is not None:
        if loop.time() >= deadline:
            who = f"attempt {held.attempt_id}" if held.attempt_id else f"run {held.flow_run_id}"
            raise RecoveryInProgressError(
                f"Another write to {target} ({who}, since {held.acquired_at:%H:%M:%S} UTC) still "
                f"holds it after {timeout:g} s: run doctor, then retry"
            )
        await asyncio.sleep(LOCK_POLL_SECONDS)
    KEEPER.hold_lock(holder, url)
    try:
        yield
    finally:
        KEEPER.drop_lock(holder)
        release = writes.Write(
            run=lambda session: store.release_lock(session=session, holder=holder, commit=False),
            alone=lambda: _release(url, holder),
        )
        try:
            await asyncio.shield(writes.submit(url, release))
        except SQLAlchemyError as exc:  # the database is away: the lease runs out on its own
            _not_released(holder, exc)


async def _unavailable_as_refusal(taken: asyncio.Future[Any]) -> store.RecoveryLock | None:
    try:
        held: store.RecoveryLock | None = await taken
    except SQLAlchemyError as exc:
        raise AuditUnavailableError(
            f"The audit database (which holds the write locks) did not answer "
            f"({type(exc).__name__}): no write was made"
        ) from exc
    return held


def _release(url: str, holder: str) -> None:
    try:
        with Session(store.engine(url)) as session:
            store.release_lock(session=session, holder=holder)
    except SQLAlchemyError as exc:
        _not_released(holder, exc)


def _not_released(holder: str, exc: BaseException) -> None:
    logger.warning(
        "lock %s not released (%s): free within %s", holder, type(exc).__name__, LOCK_LEASE
    )


def reap() -> list[store.Abandoned]:
    """Close the attempts dead processes left open, release their locks; returns them (their
    Prefect runs are the caller's to mark Crashed)."""
    with Session(store.engine()) as session:
        closed = store.close_abandoned(
            session=session, now=store.db_now(session), grace=REAP_GRACE, dead=is_dead
        )
        dead_owners = sorted(
            {lock.owner for lock in store.locks(session=session) if is_dead(lock.owner)}
        )
        released = store.release_locks_of(
            session=session, attempt_ids=[a.id for a in closed], owners=dead_owners
        )
    for attempt in closed:
        logger.warning(
            "audit row %s (%s, run %s) closed as abandoned: its process %s stopped",
            attempt.id,
            attempt.route,
            attempt.flow_run_id,
            attempt.owner,
        )
    if released:
        logger.warning("released %d locks of stopped processes", released)
    return closed
