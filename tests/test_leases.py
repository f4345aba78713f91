"""Leases on both audit databases (SQLite, the machine's PostgreSQL): the per-target lock, the
open rows a dead process leaves, and finishes the database could not take at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from restate_recovery import leases, store
from restate_recovery.audit import Attempt, AuditedAttempt
from restate_recovery.errors import AuditUnavailableError, RecoveryInProgressError
from restate_recovery.settings import get_settings


@pytest.fixture(params=["sqlite", "postgresql"])
def database(
    request: pytest.FixtureRequest, tmp_path: Path, settings_env: pytest.MonkeyPatch
) -> Iterator[str]:
    """The audit database of this test (``store.engine()`` is it), and quick leases."""
    url = (
        f"sqlite:///{tmp_path / 'audit.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    settings_env.setenv("RECOVERY_DATABASE_URL", url)
    get_settings.cache_clear()
    settings_env.setattr(leases, "LOCK_LEASE", timedelta(seconds=1))
    settings_env.setattr(leases, "RENEW_SECONDS", 0.2)
    yield url


def dead_owner() -> str:
    """The owner name of a process of this host that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    host, _, _, namespace = leases.owner().split(":")
    return f"{host}:{process.pid}:1:{namespace}"


async def test_one_holder_at_a_time_and_every_waiter_gets_it(database: str) -> None:
    target = f"workflow:W:{uuid.uuid4().hex[:8]}"
    inside: list[int] = []
    overlaps: list[int] = []

    async def writer(n: int) -> None:
        async with leases.lock(target, timeout=30):
            if inside:
                overlaps.append(n)
            inside.append(n)
            await asyncio.sleep(0.05)
            inside.remove(n)

    await asyncio.gather(*(writer(n) for n in range(8)))

    assert overlaps == []
    with Session(store.engine()) as session:
        assert [lock.target for lock in store.locks(session=session)] == []


async def test_a_held_lock_outlives_its_lease_while_renewed_and_the_waiter_is_told_who(
    database: str,
) -> None:
    target = f"deployments-{uuid.uuid4().hex[:8]}"
    async with leases.lock(target, timeout=5, attempt_id=41):
        await asyncio.sleep(2.5)  # 2.5 leases: the keeper renewed it
        with pytest.raises(RecoveryInProgressError, match="attempt 41"):
            async with leases.lock(target, timeout=0.5):
                pass


async def test_a_dead_holders_lock_is_free_at_once_after_reaping_and_by_lease_anyway(
    database: str,
) -> None:
    dead, remote = f"dead-{uuid.uuid4().hex[:6]}", f"remote-{uuid.uuid4().hex[:6]}"
    now = store.utcnow()
    with Session(store.engine()) as session:
        for target, owner, expires in [
            (dead, dead_owner(), now + timedelta(hours=1)),  # would hold for an hour
            (remote, "elsewhere:1:1", now - timedelta(seconds=1)),  # lease ran out
        ]:
            session.add(
                store.RecoveryLock(
                    target=target,
                    holder=uuid.uuid4().hex,
                    owner=owner,
                    acquired_at=now,
                    expires_at=expires,
                )
            )
        session.commit()

    leases.reap()
    for target in (dead, remote):
        async with leases.lock(target, timeout=0.5):  # no wait
            pass


def open_row(owner: str | None, lease: timedelta | None) -> int:
    row = store.AuditCreate(actor_user_id="u", role_at_time="ops", route="recover-stuck-workflow")
    with Session(store.engine()) as session:
        return store.record_attempt(
            session=session,
            attempt=row,
            owner=owner,
            lease_expires_at=None if lease is None else store.utcnow() + lease,
        )


def row(attempt_id: int) -> store.OperationAudit:
    with Session(store.engine()) as session:
        found = session.get(store.OperationAudit, attempt_id)
        assert found is not None
        return found


def test_rows_of_dead_processes_are_closed_as_abandoned_and_live_ones_kept(database: str) -> None:
    dead = open_row(dead_owner(), timedelta(hours=1))
    expired = open_row("elsewhere:1:1", -timedelta(minutes=5))
    recent = open_row("elsewhere:1:1", -timedelta(seconds=5))  # within the grace
    alive = open_row(leases.owner(), timedelta(seconds=30))

    closed = {a.id for a in leases.reap()}

    assert {dead, expired} <= closed and not {recent, alive} & closed
    for attempt_id in (dead, expired):
        closed_row = row(attempt_id)
        assert closed_row.outcome == "abandoned" and closed_row.finished_at is not None
        assert closed_row.error == {"code": store.ABANDONED, "message": store.ABANDONED_MESSAGE}
    assert row(recent).finished_at is None and row(alive).finished_at is None


async def test_an_open_row_is_renewed_while_its_attempt_runs(database: str) -> None:
    audited = AuditedAttempt(Attempt(actor="u", role="ops", route="doctor"))
    attempt_id = await audited.start()
    first = row(attempt_id).lease_expires_at
    deadline = asyncio.get_running_loop().time() + 3 * 2.0  # the keeper may sleep 2 s still
    while (renewed := row(attempt_id).lease_expires_at) == first:
        assert asyncio.get_running_loop().time() < deadline, "the lease was never renewed"
        await asyncio.sleep(0.1)
    await audited.finish()

    assert first is not None and renewed is not None and renewed > first
    assert row(attempt_id).outcome == "success"


async def test_a_finish_the_database_refused_is_written_once_it_is_back(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    audited = AuditedAttempt(Attempt(actor="u", role="ops", route="force-redeploy"))
    attempt_id = await audited.start()
    real = store.finish_attempt
    refusals = [True] * 3  # the finish itself and the keeper's first two tries

    def finish_attempt(**kwargs: object) -> None:
        if refusals:
            refusals.pop()
            raise sa.exc.OperationalError("UPDATE", {}, Exception("database is gone"))
        real(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "finish_attempt", finish_attempt)
    await audited.finish()  # returns: what was done stands
    assert row(attempt_id).finished_at is None and leases.KEEPER.pending() == 1
    deadline = asyncio.get_running_loop().time() + 10
    while row(attempt_id).finished_at is None:
        assert asyncio.get_running_loop().time() < deadline, "never finished"
        await asyncio.sleep(0.1)
    assert row(attempt_id).outcome == "success" and leases.KEEPER.pending() == 0


async def test_an_attempt_the_database_cannot_take_is_refused(
    settings_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings_env.setenv("RECOVERY_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    get_settings.cache_clear()
    with pytest.raises(AuditUnavailableError) as refused:
        await AuditedAttempt(Attempt(actor="u", role="ops", route="doctor")).start()
    assert refused.value.http_status == 503
    assert refused.value.code == "AUDIT_DATABASE_UNAVAILABLE"


async def test_the_longest_targets_fit_the_lock_and_plan_tables_and_stay_apart(
    database: str,
) -> None:
    """A service name and a key of 255 characters each (what the request allows) make a target
    of 520: it is kept bounded (a hash of the whole at its end), and two that differ only at the
    end hold separate locks and plans, on PostgreSQL's VARCHAR(255) as on SQLite."""
    from restate_recovery import plans
    from restate_recovery.runbooks import RECOVER_STUCK_WORKFLOW, bounded
    from restate_recovery.schemas import RecoverStuckWorkflowRequest

    name = "W" * 255
    one, two = (
        RECOVER_STUCK_WORKFLOW.lock_target(
            RecoverStuckWorkflowRequest(service_name=name, service_key="k" * 254 + end)
        )
        for end in "ab"
    )
    assert len(one) <= 255 and len(two) <= 255 and one != two
    assert bounded("workflow:W:k") == "workflow:W:k"  # a target that fits is kept as it is
    assert (
        RECOVER_STUCK_WORKFLOW.target_of({"serviceName": name, "serviceKey": "k" * 254 + "a"})
        == one
    )

    async with leases.lock(one, timeout=5), leases.lock(two, timeout=5):
        with Session(store.engine()) as session:
            assert sorted(lock.target for lock in store.locks(session=session)) == sorted(
                [one, two]
            )

    async def alive(_: str) -> bool:
        return True

    for target, run in ((one, "run-1"), (two, "run-2")):
        claim = await plans.claim(
            target=target,
            runbook="recover-stuck-workflow",
            flow_run_id=run,
            fingerprint=None,
            new_alert=False,
            alive=alive,
        )
        assert claim.granted


def test_a_process_is_known_dead_only_in_its_own_process_table() -> None:
    """A pid is looked up only where it means the same process: same host name, boot and pid
    namespace. Another container with this host name (its own pid namespace), a previous boot,
    or an owner named the old way are left to their lease."""
    host, pid, start, namespace = leases.owner().split(":")
    boot, _, pid_namespace = namespace.partition(".")
    gone = dead_owner()
    assert leases.is_dead(gone)
    assert not leases.is_dead(leases.owner())
    _, gone_pid, gone_start, _ = gone.split(":")
    for other in (
        f"{host}:{gone_pid}:{gone_start}:{boot}.{int(pid_namespace) + 1}",  # another container
        f"{host}:{gone_pid}:{gone_start}:{'0' * len(boot)}.{pid_namespace}",  # another boot
        f"{host}:{gone_pid}:{gone_start}",  # the old format
        f"elsewhere:{gone_pid}:{gone_start}:{namespace}",
    ):
        assert not leases.is_dead(other), other


async def test_a_host_whose_clock_is_behind_keeps_its_lock_on_postgresql(
    postgres_url: str, settings_env: pytest.MonkeyPatch
) -> None:
    """Leases are set and compared by the database's clock: a writer on a host whose clock is an
    hour behind still holds its lock against a writer with a right clock."""
    from datetime import UTC, datetime

    settings_env.setenv("RECOVERY_DATABASE_URL", postgres_url)
    get_settings.cache_clear()
    target = f"workflow:W:{uuid.uuid4().hex[:8]}"
    real = store.utcnow
    settings_env.setattr(store, "utcnow", lambda: datetime.now(UTC) - timedelta(hours=1))
    async with leases.lock(target, timeout=5):
        settings_env.setattr(store, "utcnow", real)
        with pytest.raises(RecoveryInProgressError):
            async with leases.lock(target, timeout=1):
                pass


async def test_a_lock_lost_under_its_writer_is_logged(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A writer whose lock was taken from it (its lease ran out unrenewed, or a sweep released it)
    is told in the log at the next renewal, naming the lock."""
    target = f"workflow:W:{uuid.uuid4().hex[:8]}"
    async with leases.lock(target, timeout=5):
        with Session(store.engine()) as session:
            (holder,) = [
                lock.holder for lock in store.locks(session=session) if lock.target == target
            ]
            store.release_lock(session=session, holder=holder)  # taken from under it
        with caplog.at_level("ERROR", logger="restate_recovery.leases"):
            leases.KEEPER.tick(database)
    assert any(holder in r.getMessage() and "was lost" in r.getMessage() for r in caplog.records)


def test_a_process_ending_right_after_a_refused_finish_writes_it_before_it_exits(
    tmp_path: Path,
) -> None:
    """A CLI call (or a flow's process) whose last finish the database refused does not exit
    with it unwritten: it waits, bounded, for the keeper to write it."""
    database = f"sqlite:///{tmp_path / 'audit.db'}"
    script = """
import asyncio, sqlalchemy as sa
from restate_recovery import store
from restate_recovery.audit import Attempt, AuditedAttempt
real, refusals = store.finish_attempt, [True, True]
def finish_attempt(**kwargs):
    if refusals:
        refusals.pop()
        raise sa.exc.OperationalError("UPDATE", {}, Exception("database is gone"))
    real(**kwargs)
store.finish_attempt = finish_attempt
async def main():
    audited = AuditedAttempt(Attempt(actor="u", role="ops", route="force-redeploy"))
    print(await audited.start())
    await audited.finish()
asyncio.run(main())
"""
    env = {**os.environ, "RECOVERY_DATABASE_URL": database}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    attempt_id = int(done.stdout.split()[-1])
    with Session(store.engine(database)) as session:
        row = session.get(store.OperationAudit, attempt_id)
    assert row is not None and row.finished_at is not None and row.outcome == "success"
