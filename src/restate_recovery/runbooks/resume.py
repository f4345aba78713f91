"""resume-paused-invocations: run paused invocations again, on the deployment they are pinned to
(``keep``), on their service's newest one (``latest``, e.g. with the fix), or on a named one.

Since Restate 1.6 an invocation that used up its retries is *paused* (its journal kept); killing it
(recover-stuck-workflow refuses it as ``active-invocation``) would throw its progress away.

- Selection: one invocation id (whatever its status: it is resumed if paused, else reported), or
  a service's (or one key's) non-completed invocations, newest first, at most ``limit``.
- Guard: only ``paused`` invocations are touched; anything else is listed as skipped with its
  status. A named deployment must exist (``RESTATE_DEPLOYMENT_NOT_FOUND``) and serve the service of
  every invocation resumed on it (else ``INVALID_REQUEST``, field ``deployment``). An unknown
  invocation id is ``RESTATE_INVOCATION_NOT_FOUND``; one Restate cannot read as an id (its
  checksum) ``INVALID_REQUEST``, field ``invocationId``.
- The write: ``PATCH /invocations/{id}/resume?deployment=...`` for each; one that stopped being
  paused meanwhile (Restate answers 409) or is gone (404) is skipped, saying so.
- Verify: each resumed invocation is read back until it left ``paused`` (bounded); the doctor
  after counts what is still paused.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from restate_recovery.client import RestateAdminClient
from restate_recovery.errors import (
    AdminUnreachableError,
    DeploymentNotFoundError,
    InvalidRequestError,
    InvocationNotFoundError,
    QueryFailedError,
    RestateRejected,
    RestateUnreachable,
)
from restate_recovery.models import ApiModel, DoctorReadout
from restate_recovery.schemas import (
    DryRunResult,
    PlannedStep,
    ResumedInvocations,
    ResumePausedInvocationsRequest,
    SkippedInvocation,
    WriteOutcome,
    check_approved,
)
from restate_recovery.sql import invocation_id_literal, literal, name_literal

READ_BACK_SECONDS = 10.0
COLUMNS = "id, status, target_service_name, pinned_deployment_id, modified_at"


@dataclass(frozen=True)
class ResumePlan:
    deployment: str  # keep, latest or dp_...
    paused: list[tuple[str, str]]  # (invocation id, service name)
    skipped: list[SkippedInvocation]
    modified: dict[str, str] = field(default_factory=dict)  # invocation id -> modified_at then

    def steps(self) -> list[PlannedStep]:
        steps = [
            PlannedStep(action="resume", target=i, detail=f"{service} on {self.deployment}")
            for i, service in self.paused
        ]
        steps += [
            PlannedStep(action="skip", target=s.id, detail=f"{s.status}: only paused ones resume")
            for s in self.skipped
        ]
        return steps


def selection_sql(request: ResumePausedInvocationsRequest) -> str:
    if request.invocation_id is not None:
        return f"SELECT {COLUMNS} FROM sys_invocation WHERE id = " + invocation_id_literal(
            request.invocation_id
        )
    assert request.service_name is not None  # the request allows no other selection
    where = f"target_service_name = {name_literal(request.service_name)}"
    if request.service_key is not None:
        where += f" AND target_service_key = {name_literal(request.service_key)}"
    return (
        f"SELECT {COLUMNS} FROM sys_invocation WHERE {where} AND status <> {literal('completed')} "
        f"ORDER BY modified_at DESC LIMIT {request.limit}"
    )


async def _query(
    client: RestateAdminClient, sql: str, *, timeout: float
) -> list[dict[str, object]]:
    try:
        return await client.query(sql, timeout=timeout)
    except RestateUnreachable as exc:
        raise AdminUnreachableError(f"Restate admin API unreachable: {exc}") from exc
    except RestateRejected as exc:
        raise QueryFailedError(f"Reading the invocations failed: {exc}") from exc


async def plan_resume(
    client: RestateAdminClient, request: ResumePausedInvocationsRequest, *, timeout: float
) -> ResumePlan:
    try:
        rows = await _query(client, selection_sql(request), timeout=timeout)
    except QueryFailedError as exc:
        if request.invocation_id is not None and "non valid invocation id" in exc.message:
            raise InvalidRequestError(  # well-formed for us, not one of Restate's ids
                f"{request.invocation_id} is not a Restate invocation id",
                [{"field": "invocationId", "message": "not a Restate invocation id"}],
            ) from exc
        raise
    if request.invocation_id is not None and not rows:
        raise InvocationNotFoundError(f"No invocation {request.invocation_id} in Restate")
    paused = [
        (str(r["id"]), str(r.get("target_service_name")))
        for r in rows
        if r.get("status") == "paused"
    ]
    skipped = [
        SkippedInvocation(id=str(r.get("id")), status=str(r.get("status")))
        for r in rows
        if r.get("status") != "paused"
    ]
    if request.deployment.startswith("dp_") and paused:
        await _check_deployment(client, request.deployment, {s for _, s in paused}, timeout)
    modified = {
        str(r["id"]): str(r.get("modified_at")) for r in rows if r.get("status") == "paused"
    }
    return ResumePlan(
        deployment=request.deployment, paused=paused, skipped=skipped, modified=modified
    )


async def _check_deployment(
    client: RestateAdminClient, deployment_id: str, services: set[str], timeout: float
) -> None:
    try:
        deployments = await client.list_deployments(timeout=timeout)
    except RestateUnreachable as exc:
        raise AdminUnreachableError(f"Restate admin API unreachable: {exc}") from exc
    except RestateRejected as exc:
        raise QueryFailedError(f"Listing the deployments failed: {exc}") from exc
    named = next((d for d in deployments if d.id == deployment_id), None)
    if named is None:
        raise DeploymentNotFoundError(
            f"No deployment {deployment_id}; registered: "
            + (", ".join(d.id for d in deployments) or "none")
        )
    missing = sorted(services - {s.name for s in named.services})
    if missing:
        raise InvalidRequestError(
            f"Deployment {deployment_id} does not serve {', '.join(missing)}: nothing resumed",
            [{"field": "deployment", "message": f"does not serve {', '.join(missing)}"}],
        )


async def execute_resume(
    client: RestateAdminClient, plan: ResumePlan, *, timeout: float
) -> tuple[ResumedInvocations, list[str]]:
    resumed: list[str] = []
    skipped = list(plan.skipped)
    try:
        for invocation_id, _ in plan.paused:
            try:
                await client.resume_invocation(
                    invocation_id, deployment=plan.deployment, timeout=timeout
                )
            except RestateRejected as exc:
                if exc.status_code not in (404, 409):
                    raise QueryFailedError(
                        f"Resuming {invocation_id} failed ({exc}); resumed before: "
                        f"{', '.join(resumed) or 'none'}"
                    ) from exc
                gone = "gone" if exc.status_code == 404 else "no longer paused"
                skipped.append(SkippedInvocation(id=invocation_id, status=gone))
                continue
            resumed.append(invocation_id)
    except RestateUnreachable as exc:
        raise AdminUnreachableError(
            f"Restate admin API unreachable while resuming (resumed before: "
            f"{', '.join(resumed) or 'none'}): {exc}"
        ) from exc
    statuses = await _read_back(client, resumed, plan.modified, timeout=timeout)
    details = [f"{i}: {statuses.get(i, 'gone')}" for i in resumed]
    return ResumedInvocations(resumed=resumed, skipped=skipped), details


async def _read_back(
    client: RestateAdminClient,
    resumed: list[str],
    modified: dict[str, str],
    *,
    timeout: float,
) -> dict[str, str]:
    """Each resumed invocation's status, read until each has left the pause it was in (another
    status, or a newer ``modified_at``: one that failed again may be paused anew), or the
    deadline; one still in its old pause reads ``paused``."""
    if not resumed:
        return {}
    ids = ", ".join(invocation_id_literal(i) for i in resumed)
    sql = f"SELECT id, status, modified_at FROM sys_invocation WHERE id IN ({ids})"
    deadline = time.monotonic() + READ_BACK_SECONDS
    while True:
        rows = await _query(client, sql, timeout=timeout)
        statuses = {}
        for row in rows:
            invocation_id, status = str(row.get("id")), str(row.get("status"))
            again = status == "paused" and str(row.get("modified_at")) != modified.get(
                invocation_id
            )
            statuses[invocation_id] = "paused again" if again else status
        if "paused" not in statuses.values() or time.monotonic() > deadline:
            return statuses
        await asyncio.sleep(0.2)


async def write(
    client: RestateAdminClient,
    request: ResumePausedInvocationsRequest,
    *,
    timeout: float,
    dry_run: bool,
    approved: list[PlannedStep] | None = None,
) -> WriteOutcome:
    """Plan (refusing a plan other than the ``approved`` one), and unless this is a dry run,
    resume each paused invocation of the selection."""
    plan = await plan_resume(client, request, timeout=timeout)
    steps = plan.steps()
    check_approved(approved, steps, request.target)
    if dry_run:
        return WriteOutcome(result=DryRunResult(plan=steps), plan=steps)
    result, details = await execute_resume(client, plan, timeout=timeout)
    return WriteOutcome(result=result, plan=steps, details=details)


def verify(request: ResumePausedInvocationsRequest, result: ApiModel, after: DoctorReadout) -> str:
    """Whether any resumed invocation is still among the doctor's paused failures."""
    if after.invocations.status != "ok":
        return f"invocations are {after.invocations.status}: {after.invocations.error}"
    resumed = set(getattr(result, "resumed", []))
    still = [
        f.id for f in after.invocations.recent_failures if f.status == "paused" and f.id in resumed
    ]
    if still:
        return f"still paused: {', '.join(still)}"
    paused_now = after.invocations.by_status.get("paused", 0)
    return f"{len(resumed)} resumed, none of them paused now ({paused_now} paused in all)"
