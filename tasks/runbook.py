"""The shared shape of every write runbook: doctor -> guard -> one write -> verify-doctor.

``run_write_runbook`` is called by each flow with its one write as a task. It keeps the incident
record (published as a markdown artifact whatever happens), takes the per-target lock for real
writes, and re-raises refusals so that the run ends Failed with the error code in its message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.concurrency.asyncio import concurrency
from prefect.exceptions import ObjectAlreadyExists
from prefect.runtime import deployment, flow_run

from restate_recovery.doctor import Endpoints, guard_admin, run_doctor
from restate_recovery.errors import OperatorError, RecoveryInProgressError
from restate_recovery.incident import IncidentRecord
from restate_recovery.models import ApiModel, DoctorReadout
from restate_recovery.operations import record_finish, record_start
from restate_recovery.schemas import WriteOutcome
from restate_recovery.settings import get_settings
from restate_recovery.store import AuditCreate
from restate_recovery.urls import redact_url
from tasks.approval import await_approval, refuse_unless_approved

LOCK_PREFIX = "restate-recovery"


@task(name="doctor-before", cache_policy=NO_CACHE)
async def doctor_before(endpoints: Endpoints) -> DoctorReadout:
    return await run_doctor(endpoints)


@task(name="verify-doctor", cache_policy=NO_CACHE)
async def verify_doctor(endpoints: Endpoints) -> DoctorReadout:
    return await run_doctor(endpoints)


async def ensure_lock(name: str) -> None:
    """Create the limit behind a lock if it is missing. Prefect's upsert reads, then creates: two
    runs doing it at once make the second one's create fail with 409 (found by the load run),
    which means the limit exists now."""
    async with get_client() as client:
        try:
            await client.upsert_global_concurrency_limit_by_name(name=name, limit=1)
        except ObjectAlreadyExists:
            pass


@asynccontextmanager
async def target_lock(target: str) -> AsyncIterator[None]:
    """One write per target, across processes sharing the Prefect server (a global concurrency
    limit of 1 named after the target; created on first use)."""
    name = f"{LOCK_PREFIX}:{target}"
    timeout = get_settings().recovery_lock_timeout_seconds
    await ensure_lock(name)
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
    write: Callable[[bool], Awaitable[WriteOutcome]],
    verify: Callable[[ApiModel, DoctorReadout], str],
    require_approval: bool = False,
    auto_approve_reason: str | None = None,
) -> dict[str, Any]:
    """doctor -> guard -> [plan, approval] -> ``write`` (one task) -> verify-doctor.

    ``write(dry_run)`` is the runbook's one write task. The incident record is published whatever
    happens. A run started from a Prefect deployment (UI, schedule, automation) writes its own
    audit row when it writes; CLI and API runs are audited by their caller.
    """
    logger = get_run_logger()
    wrote = False
    attempt_id: int | None = None
    try:
        record.before = await doctor_before(endpoints)
        guard_admin(record.before)
        if require_approval and not record.dry_run:
            record.plan = (await write(True)).plan
            await publish(record)
            record.approval = await await_approval(
                timeout=get_settings().recovery_approval_timeout_seconds,
                auto_reason=auto_approve_reason,
            )
            refuse_unless_approved(record.approval)
        if record.dry_run:
            outcome = await write(True)
        else:
            attempt_id = await audit_deployment_run(record)
            async with target_lock(lock_target):
                wrote = True
                outcome = await write(False)
        record.plan, record.details = outcome.plan, outcome.details
        record.outcome = "dry run: nothing changed" if record.dry_run else "acknowledged"
        if wrote:
            record.after = await verify_doctor(endpoints)
            record.verification = redact_url(verify(outcome.result, record.after))
            logger.info("verify: %s", record.verification)
        if attempt_id is not None:
            await asyncio.to_thread(record_finish, attempt_id, "success", None, flow_run.id)
        return outcome.result.to_json()
    except OperatorError as exc:
        record.fail(exc)
        logger.error("%s", exc)
        if wrote:  # the write may have done part of its work: show what the engine looks like now
            record.after = await verify_doctor(endpoints)
        if attempt_id is not None:
            await asyncio.to_thread(record_finish, attempt_id, "failure", exc.body(), flow_run.id)
        raise
    finally:
        await publish(record)


async def publish(record: IncidentRecord) -> None:
    await acreate_markdown_artifact(
        markdown=record.markdown(),
        key=f"incident-{record.action}",
        description=f"Incident record of {record.action}",
    )


async def audit_deployment_run(record: IncidentRecord) -> int | None:
    """The audit row of a write started from a Prefect deployment (None for CLI/API runs)."""
    if deployment.id is None:
        return None
    approval = record.approval or {}
    attempt = AuditCreate(
        actor_user_id=str(approval.get("approver") or "prefect-deployment"),
        role_at_time="approver" if approval else "prefect",
        route=record.action,
        arguments={**record.parameters, "approval": approval or None},
        reason=approval.get("reason"),
        request_id=None,
    )
    return await asyncio.to_thread(record_start, attempt, None)
