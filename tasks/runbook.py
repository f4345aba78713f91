"""The shared shape of every write runbook: doctor -> guard -> one write -> verify-doctor.

``run_write_runbook`` is called by each flow with its request and its one write task. It keeps the
incident record (published as a markdown artifact whatever happens), takes the per-target lock
for real writes, and re-raises refusals so that the run ends Failed with the error code in its
message. A run started from a Prefect deployment (UI, schedule, automation) is audited here, one
row per run whatever its end (refused at the guard or the approval included); runs the operator
API or the CLI's local mode start are audited by them (``restate_recovery.execution``). The lock is
taken only around the write itself, never across an approval's pause.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from prefect import get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.runtime import deployment, flow_run

from restate_recovery import leases
from restate_recovery.audit import Attempt, AuditedAttempt, arguments_of
from restate_recovery.doctor.probes import Endpoints, resolve_endpoints, run_doctor
from restate_recovery.execution import CURRENT_RUN
from restate_recovery.models import ApiModel, DoctorReadout
from restate_recovery.redaction import redact_text
from restate_recovery.runbooks import Runbook
from restate_recovery.runbooks.guard import guard_admin
from restate_recovery.runbooks.incident import IncidentRecord
from restate_recovery.schemas import RequestModel, WriteOutcome
from restate_recovery.settings import get_settings
from tasks.approval import await_approval, refuse_unless_approved

RequestT = TypeVar("RequestT", bound=RequestModel)
WriteTask = Callable[[Endpoints, RequestT, bool], Awaitable[WriteOutcome]]
Verify = Callable[[RequestT, ApiModel, DoctorReadout], str]


@task(name="doctor-before", cache_policy=NO_CACHE)
async def doctor_before(endpoints: Endpoints) -> DoctorReadout:
    return await run_doctor(endpoints)


@task(name="verify-doctor", cache_policy=NO_CACHE)
async def verify_doctor(endpoints: Endpoints) -> DoctorReadout:
    return await run_doctor(endpoints)


@asynccontextmanager
async def target_lock(target: str, trail: AuditedAttempt | None) -> AsyncIterator[None]:
    """One write per target, across every process sharing the audit database (a lock with a
    short lease: a holder that dies frees it within seconds)."""
    run = CURRENT_RUN.get()
    attempt_id = run.attempt_id if run is not None else None
    if attempt_id is None and trail is not None:
        attempt_id = await trail.start()
    async with leases.lock(
        target,
        timeout=get_settings().recovery_lock_timeout_seconds,
        attempt_id=attempt_id,
        flow_run_id=str(flow_run.id),
    ):
        yield


async def run_write_runbook(
    runbook: Runbook,
    request: RequestT,
    *,
    write: WriteTask[RequestT],
    verify: Verify[RequestT],
    dry_run: bool,
    require_approval: bool,
    auto_approve_reason: str | None = None,
) -> dict[str, Any]:
    """doctor -> guard -> [plan, approval] -> ``write`` (one task) -> verify-doctor."""
    logger = get_run_logger()
    record = IncidentRecord(action=runbook.name, parameters=request.to_json(), dry_run=dry_run)
    trail: AuditedAttempt | None = None
    wrote = False
    endpoints: Endpoints | None = None
    try:
        endpoints = resolve_endpoints(get_settings())
        record.before = await doctor_before(endpoints)
        guard_admin(record.before)
        if require_approval and not dry_run:
            record.plan = (await write(endpoints, request, True)).plan
            await publish(record)
            record.approval = await await_approval(
                timeout=get_settings().recovery_approval_timeout_seconds,
                auto_reason=auto_approve_reason,
            )
            refuse_unless_approved(record.approval)
        trail = await deployment_trail(runbook, request, record)
        if dry_run:
            outcome = await write(endpoints, request, True)
        else:
            async with target_lock(runbook.lock_target(request), trail):
                wrote = True
                outcome = await write(endpoints, request, False)
        record.plan, record.details = outcome.plan, outcome.details
        record.outcome = "dry run: nothing changed" if dry_run else "acknowledged"
        if wrote:
            record.after = await verify_doctor(endpoints)
            record.verification = redact_text(verify(request, outcome.result, record.after))
            logger.info("verify: %s", record.verification)
        if trail is not None:
            await trail.finish()
        return outcome.result.to_json()
    except BaseException as exc:
        record.fail(exc)
        logger.error("%s", exc)
        if wrote and endpoints is not None:  # the write may have done part of its work
            record.after = await verify_doctor(endpoints)
        trail = trail or await deployment_trail(runbook, request, record)
        if trail is not None:
            await trail.finish(exc)
        raise
    finally:
        await publish(record)


async def publish(record: IncidentRecord) -> None:
    await acreate_markdown_artifact(
        markdown=record.markdown(),
        key=f"incident-{record.action}",
        description=f"Incident record of {record.action}",
    )


async def deployment_trail(
    runbook: Runbook, request: RequestModel, record: IncidentRecord
) -> AuditedAttempt | None:
    """The audit row of a run started from a Prefect deployment, begun now (None for runs of the
    API and the CLI, which audit their own). Its actor is who approved the write, else what
    created the run (an automation, a schedule, or a person in the Prefect UI)."""
    if deployment.id is None:
        return None
    approval = record.approval or {}
    if approval:
        actor, role = str(approval["approver"]), "approver"
    else:
        actor, role = await run_creator()
    trail = AuditedAttempt(
        Attempt(
            actor=actor,
            role=role,
            route=runbook.name,
            arguments=arguments_of(request, dry_run=record.dry_run, approval=approval or None),
            reason=approval.get("reason"),
        )
    )
    trail.flow_run_id = str(flow_run.id)
    await trail.start()
    return trail


async def run_creator() -> tuple[str, str]:
    """(actor, role) of what created this run: ``created_by`` says automation or schedule; a run
    from the UI or the API has none (Prefect OSS has no users)."""
    async with get_client() as client:
        created_by = (await client.read_flow_run(flow_run.id)).created_by
    if created_by is not None and created_by.type == "AUTOMATION":
        return f"automation:{created_by.display_value}", "prefect-automation"
    if created_by is not None and created_by.type == "SCHEDULE":
        return f"schedule:{created_by.display_value}", "prefect-schedule"
    return "prefect-deployment", "prefect"
