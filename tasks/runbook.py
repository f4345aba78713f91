"""The shared shape of every write runbook: doctor -> guard -> [plan, approval] -> one write ->
verify-doctor.

``run_write_runbook`` is called by each flow with its request, who asked and why, and its one
write task. It keeps the incident record (published as a markdown artifact whatever happens),
takes the per-target lock around the write only (never across an approval's pause), and ends the
run Failed with the error code in its message when the runbook refuses. A run started from a
Prefect deployment (UI, schedule, automation) is audited here, one row per run whatever its end
(refused at validation, the guard or the approval included); runs the operator API or the CLI's
local mode start are audited by them (``restate_recovery.execution``).

An approval-gated run first claims its target's one pending plan (``restate_recovery.plans``):
when another run's plan for the same target waits, or the target was rejected lately, it ends at
once (Cancelled, saying so) instead of pausing beside it. A rejection or a timeout ends the run
Cancelled with the reason: nothing was written, and nothing crashed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from prefect import Flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, State
from prefect.events import emit_event
from prefect.runtime import deployment, flow_run
from prefect.states import Cancelled

from restate_recovery import leases, plans
from restate_recovery.audit import (
    PARENT_ATTEMPT,
    Attempt,
    AuditedAttempt,
    arguments_of,
    refused,
)
from restate_recovery.doctor.probes import Endpoints, choose_admin, resolve_endpoints, run_doctor
from restate_recovery.errors import ApprovalRejectedError, InvalidRequestError, PlanPendingError
from restate_recovery.execution import CURRENT_RUN, note_begin, note_end, untagged
from restate_recovery.models import AlertContext, ApiModel, DoctorReadout
from restate_recovery.redaction import redact_text
from restate_recovery.runbooks import Runbook
from restate_recovery.runbooks.guard import guard_admin
from restate_recovery.runbooks.incident import IncidentRecord
from restate_recovery.schemas import PlannedStep, RequestModel, WriteOutcome
from restate_recovery.settings import get_settings
from tasks.approval import await_approval

RequestT = TypeVar("RequestT", bound=RequestModel)
WriteTask = Callable[[Endpoints, RequestT, bool, list[PlannedStep] | None], Awaitable[WriteOutcome]]
Verify = Callable[[RequestT, ApiModel, DoctorReadout], str]

PLAN_EVENT = "restate.plan.awaiting-approval"


@dataclass(frozen=True)
class Requested:
    """Who asked for the run and why: the flow's ``operator`` and ``reason`` parameters (the
    UI's form requires them), and the alert behind it when a finding of an alerted doctor did."""

    operator: str
    reason: str
    alert: AlertContext | None = None


def run_name(runbook: str) -> Callable[[], str]:
    """``<runbook>/<target>``, and `` (dry run)`` when it is one."""

    def name() -> str:
        parameters = flow_run.parameters
        request = parameters.get("request")
        target = getattr(request, "target", None) or "?"
        dry = " (dry run)" if parameters.get("dry_run", True) else ""
        return f"{runbook}/{target}{dry}"

    return name


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
        token = PARENT_ATTEMPT.set(attempt_id)
        try:
            yield
        finally:
            PARENT_ATTEMPT.reset(token)


@untagged
async def run_write_runbook(
    runbook: Runbook,
    request: RequestT,
    requested: Requested,
    *,
    write: WriteTask[RequestT],
    verify: Verify[RequestT],
    dry_run: bool,
    require_approval: bool,
    auto_approve_reason: str | None = None,
) -> dict[str, Any] | State:
    """doctor -> guard -> [plan, approval] -> ``write`` (one task) -> verify-doctor."""
    logger = get_run_logger()
    target = runbook.lock_target(request)
    record = IncidentRecord(
        action=runbook.name,
        target=request.target,
        parameters=request.to_json(),
        dry_run=dry_run,
        operator=requested.operator,
        reason=requested.reason,
        alert=requested.alert,
    )
    trail: AuditedAttempt | None = None
    wrote = claimed = finished = False
    endpoints: Endpoints | None = None
    ended: BaseException | None = None
    note_begin(str(flow_run.id))
    try:
        endpoints = await choose_admin(resolve_endpoints(get_settings()))
        record.before = await doctor_before(endpoints)
        guard_admin(record.before)
        if require_approval and not dry_run:
            record.plan = (await write(endpoints, request, True, None)).plan
            claimed = await claim_plan(runbook, target, requested)
            record.phase = "awaiting approval"
            await publish(record)
            announce(runbook, record, target)
            approval = record.approval = await await_approval(
                timeout=get_settings().recovery_approval_timeout_seconds,
                auto_reason=auto_approve_reason,
                plan="\n".join(record.plan_markdown()),
            )
            record.phase = "running"
            if not approval.approved:
                rejected_by = approval.approver if approval.how == "prefect-ui" else None
                await plans.decided(target, str(flow_run.id), rejected_by=rejected_by)
                claimed = False
                raise ApprovalRejectedError(f"{approval.line()}. Nothing was written.")
        trail = await deployment_trail(runbook, request, requested, record)
        approved = record.plan if record.approval is not None else None
        if dry_run:
            outcome = await write(endpoints, request, True, None)
        else:
            async with target_lock(target, trail):
                wrote = True
                outcome = await write(endpoints, request, False, approved)
        record.plan, record.details = outcome.plan, outcome.details
        record.outcome = "dry run: nothing changed" if dry_run else "acknowledged"
        if trail is not None:  # the write is done: its row says so, whatever the check finds
            await trail.finish()
            finished = True
        if wrote:
            record.after, record.verification = await checked(endpoints, request, outcome, verify)
            logger.info("verify: %s", record.verification)
        record.phase = "done"
        return outcome.result.to_json()
    except BaseException as exc:
        ended = exc
        record.fail(exc)
        logger.error("%s", exc)
        if wrote and endpoints is not None:  # the write may have done part of its work
            record.after, _ = await checked(endpoints, request, None, verify)
        if not finished:
            trail = trail or await deployment_trail(runbook, request, requested, record)
            if trail is not None:
                await trail.finish(exc)
        if isinstance(exc, ApprovalRejectedError | PlanPendingError):  # a decision, not a crash
            return Cancelled(message=str(exc))
        raise
    finally:
        note_end(ended)  # the caller in this process has its answer: the rest is Prefect's record
        if claimed:
            await plans.decided(target, str(flow_run.id))
        await publish(record)


async def checked(
    endpoints: Endpoints,
    request: RequestT,
    outcome: WriteOutcome | None,
    verify: Verify[RequestT],
) -> tuple[DoctorReadout | None, str | None]:
    """The verify-doctor's readout and what it says about the write (``outcome``); a doctor that
    fails itself is said so, never turned into a failure of the write that was made."""
    try:
        after = await verify_doctor(endpoints)
    except Exception as exc:  # noqa: BLE001 - reported in the record, the write stands
        get_run_logger().warning("verify-doctor failed: %s", exc)
        return None, redact_text(f"not verified: the verify-doctor failed ({exc})")
    if outcome is None:
        return after, None
    return after, redact_text(verify(request, outcome.result, after))


async def claim_plan(runbook: Runbook, target: str, requested: Requested) -> bool:
    """Claim the target's one pending plan, or end here (``PlanPendingError``)."""
    claim = await plans.claim(
        target=target,
        runbook=runbook.name,
        flow_run_id=str(flow_run.id),
        fingerprint=None,
        new_alert=requested.alert is not None,
        alive=run_is_waiting,
    )
    if not claim.granted:
        raise PlanPendingError(f"Not planned again: {claim.why} (run {claim.holder})")
    return True


async def run_is_waiting(flow_run_id: str) -> bool:
    """Whether another run's plan still waits: its run is not in a final state."""
    async with get_client() as client:
        run = await client.read_flow_run(UUID(flow_run_id))
    return run.state is not None and not run.state.is_final()


def announce(runbook: Runbook, record: IncidentRecord, target: str) -> None:
    """The plan, for a person: an event the approval automation sends as a notification."""
    url = flow_run.ui_url or ""
    steps = "\n".join(f"{n}. {s.action} {s.target}" for n, s in enumerate(record.plan, 1))
    text = (
        f"{record.action} {record.target} waits for approval ({record.reason}).\n"
        + (f"Started by {record.alert.line()}.\n" if record.alert else "")
        + f"Plan:\n{steps}\n"
        + f"Approve or reject (Resume) flow run {flow_run.id}"
        + (f": {url}" if url else "")
    )
    emit_event(
        event=PLAN_EVENT,
        resource={
            "prefect.resource.id": f"restate.plan.{target}",
            "restate.runbook": runbook.name,
        },
        payload={
            "runbook": runbook.name,
            "target": record.target,
            "plan": [s.model_dump() for s in record.plan],
            "runUrl": url,
            "text": redact_text(text),
        },
    )


async def publish(record: IncidentRecord) -> None:
    await acreate_markdown_artifact(
        markdown=record.markdown(),
        key=f"incident-{record.action}",
        description=record.title(),
    )


async def deployment_trail(
    runbook: Runbook, request: RequestModel, requested: Requested, record: IncidentRecord
) -> AuditedAttempt | None:
    """The audit row of a run started from a Prefect deployment, begun now (None for runs of the
    API and the CLI, which audit their own). Its actor is who decided on the plan, else what
    created the run: an automation, a schedule, or the operator named in the UI's form."""
    if deployment.id is None:
        return None
    approval = record.approval
    if approval is not None and approval.how == "prefect-ui":
        actor, role, reason = approval.approver, "approver", approval.reason
    else:
        actor, role = await run_creator(requested.operator)
        reason = requested.reason
    trail = AuditedAttempt(
        Attempt(
            actor=actor,
            role=role,
            route=runbook.name,
            arguments=arguments_of(
                request,
                dry_run=record.dry_run,
                approval=approval.as_dict() if approval is not None else None,
            ),
            reason=reason,
        )
    )
    trail.flow_run_id = str(flow_run.id)
    await trail.start()
    return trail


async def run_creator(operator: str) -> tuple[str, str]:
    """(actor, role) of what created this run: ``created_by`` says automation or schedule; a run
    from the UI or the API has none (Prefect OSS has no users): then the form's operator, as the
    person typed it (the role says so)."""
    async with get_client() as client:
        created_by = (await client.read_flow_run(flow_run.id)).created_by
    if created_by is not None and created_by.type == "AUTOMATION":
        return f"automation:{created_by.display_value}", "prefect-automation"
    if created_by is not None and created_by.type == "SCHEDULE":
        return f"schedule:{created_by.display_value}", "prefect-schedule"
    return operator, "prefect-ui"


async def failed_parameters(flow: Flow[..., Any], flow_run: FlowRun, state: State) -> None:
    """A deployment run whose parameters Prefect refused before the flow began (the UI's form
    could not check everything, e.g. a port out of range): its audit row, ``INVALID_REQUEST``."""
    if flow_run.deployment_id is None or "Validation of flow parameters failed" not in (
        state.message or ""
    ):
        return
    parameters = flow_run.parameters or {}
    attempt = Attempt(
        actor=str(parameters.get("operator") or "prefect-ui"),
        role="prefect-ui",
        route=flow.name,
        arguments={"invalidParameters": True},
        reason=str(parameters.get("reason") or "") or None,
    )
    await refused(attempt, InvalidRequestError(redact_text(state.message or "")))
