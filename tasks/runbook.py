"""The shared shape of every write runbook: doctor -> guard -> one write -> verify-doctor.

``run_write_runbook`` is called by each flow with its one write as a task. It keeps the incident
record (published as a markdown artifact whatever happens), takes the per-target lock for real
writes, and re-raises refusals so that the run ends Failed with the error code in its message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.concurrency.asyncio import concurrency

from restate_recovery.doctor import Endpoints, guard_admin, run_doctor
from restate_recovery.errors import OperatorError, RecoveryInProgressError
from restate_recovery.incident import IncidentRecord
from restate_recovery.models import ApiModel, DoctorReadout
from restate_recovery.schemas import WriteOutcome
from restate_recovery.settings import get_settings
from restate_recovery.urls import redact_url

LOCK_PREFIX = "restate-recovery"


@task(name="doctor-before", cache_policy=NO_CACHE)
async def doctor_before(endpoints: Endpoints) -> DoctorReadout:
    return await run_doctor(endpoints)


@task(name="verify-doctor", cache_policy=NO_CACHE)
async def verify_doctor(endpoints: Endpoints) -> DoctorReadout:
    return await run_doctor(endpoints)


@asynccontextmanager
async def target_lock(target: str) -> AsyncIterator[None]:
    """One write per target, across processes sharing the Prefect server (a global concurrency
    limit of 1 named after the target; created on first use)."""
    name = f"{LOCK_PREFIX}:{target}"
    timeout = get_settings().recovery_lock_timeout_seconds
    async with get_client() as client:
        await client.upsert_global_concurrency_limit_by_name(name=name, limit=1)
    try:
        async with concurrency(name, occupy=1, timeout_seconds=timeout, strict=True):
            yield
    except TimeoutError as exc:
        raise RecoveryInProgressError(
            f"Another run is still writing to {target} after {timeout:g} s: run doctor, then retry"
        ) from exc


async def run_write_runbook(
    *,
    record: IncidentRecord,
    endpoints: Endpoints,
    lock_target: str,
    write: Callable[[], Awaitable[WriteOutcome]],
    verify: Callable[[ApiModel, DoctorReadout], str],
) -> dict[str, Any]:
    """doctor -> guard -> ``write`` (one task) -> verify-doctor; the incident record throughout."""
    logger = get_run_logger()
    wrote = False
    try:
        record.before = await doctor_before(endpoints)
        guard_admin(record.before)
        if record.dry_run:
            outcome = await write()
        else:
            async with target_lock(lock_target):
                wrote = True
                outcome = await write()
        record.plan, record.details = outcome.plan, outcome.details
        record.outcome = "dry run: nothing changed" if record.dry_run else "acknowledged"
        if wrote:
            record.after = await verify_doctor(endpoints)
            record.verification = redact_url(verify(outcome.result, record.after))
            logger.info("verify: %s", record.verification)
        return outcome.result.to_json()
    except OperatorError as exc:
        record.fail(exc)
        logger.error("%s", exc)
        if wrote:  # the write may have done part of its work: show what the engine looks like now
            record.after = await verify_doctor(endpoints)
        raise
    finally:
        await acreate_markdown_artifact(
            markdown=record.markdown(),
            key=f"incident-{record.action}",
            description=f"Incident record of {record.action}",
        )
