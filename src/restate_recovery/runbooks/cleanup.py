"""cleanup-stale-deployments: keep the deployment whose URL matches exactly, drain and delete the rest.

Restate 1.7 has no server-side drain: "drained" is computed here, as the Restate CLI does. A stale
deployment is *draining* while non-completed invocations are pinned to it. Per stale deployment:

- nothing pinned -> delete (``DELETE ?force=true``; an already-gone 404 counts as done);
- pinned work, ``forceDrain`` -> kill the pinned invocations, then delete;
- pinned work, and Restate cannot reach the service -> its work cannot drain: kill, then delete
  (the spec's wording);
- pinned work otherwise -> wait up to the drain timeout; delete once drained, else leave it and
  report it.

Whether Restate reaches a stale deployment is asked of Restate, never found out from this tool's
own network position (a network policy may let only Restate reach the service): Restate runs a
discovery of the deployment's URL (a ``dry_run`` registration: nothing is registered), and only a
connection failure of that discovery counts as unreachable; any HTTP answer (even a refusal) and a
Lambda deployment count as reachable.

A stale deployment that holds the latest revision of any service (Restate's ``deployment_id`` of
that service) is *active*: deleting it would send that service's new invocations to an older
revision (Restate falls back to the previous one) or leave it with none. It is left alone unless
``forceDrain``; to keep a URL registered before it, register that URL again first
(force-redeploy: it then holds the latest revision) and clean up after.

Work Restate shows with no pinned deployment although it has started (``paused``, and
``backing-off``, ``running`` or ``suspended`` rows without one: Restate 1.7 leaves a paused
invocation unpinned) may need any deployment serving its service: a stale deployment serving such
a service is left in place unless ``forceDrain`` (which deletes it and kills none of that work:
it is not known to be its). Resume or recover that work first.

Per-deployment failures are logged and reported; they do not change the response.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from restate_recovery.client import RestateAdminClient
from restate_recovery.errors import (
    AdminUnreachableError,
    DeploymentNotFoundError,
    RestateError,
    RestateRejected,
    RestateUnreachable,
)
from restate_recovery.models import ApiModel, Deployment, DoctorReadout, ServiceInfo
from restate_recovery.redaction import redact_text
from restate_recovery.schemas import (
    Acknowledged,
    CleanupStaleDeploymentsRequest,
    DryRunResult,
    PlannedStep,
    WriteOutcome,
    check_approved,
)
from restate_recovery.sql import literal

logger = logging.getLogger(__name__)

PARALLEL_DELETES = 8


@dataclass(frozen=True)
class StaleDeployment:
    id: str
    service_url: str  # as registered (may carry credentials: redact before showing it)
    pinned: list[str]
    latest_for: list[str]  # services whose latest revision this deployment holds
    pinned_statuses: dict[str, str] = field(default_factory=dict)  # invocation id -> status
    http_11: bool = False  # registered over HTTP/1.1: Restate discovers it that way too
    unpinned: list[str] = field(default_factory=list)  # started work of its services, no pin

    @property
    def protected(self) -> bool:
        return bool(self.latest_for)


@dataclass(frozen=True)
class CleanupPlan:
    keep: Deployment
    stale: list[StaleDeployment]
    force_drain: bool

    def steps(self) -> list[PlannedStep]:
        steps = [
            PlannedStep(
                action="keep", target=self.keep.id, detail=redact_text(self.keep.service_url)
            )
        ]
        for d in self.stale:
            if d.protected and not self.force_drain:
                steps.append(
                    PlannedStep(
                        action="skip",
                        target=d.id,
                        detail=f"holds the latest revision of {', '.join(d.latest_for)}",
                    )
                )
                continue
            if d.unpinned and not self.force_drain:
                steps.append(
                    PlannedStep(
                        action="skip",
                        target=d.id,
                        detail=f"{len(d.unpinned)} started invocations of its services carry no "
                        f"pinned deployment and may need it: {', '.join(d.unpinned[:20])}",
                    )
                )
                continue
            if d.pinned:
                how = "kill" if self.force_drain else "drain (kill if Restate cannot reach it)"
                steps.append(
                    PlannedStep(
                        action=how,
                        target=d.id,
                        detail=f"{len(d.pinned)} pinned: {', '.join(d.pinned[:20])}",
                    )
                )
            steps.append(
                PlannedStep(action="delete", target=d.id, detail=redact_text(d.service_url))
            )
        return steps


@dataclass
class CleanupReport:
    deleted: list[str] = field(default_factory=list)
    killed: dict[str, list[str]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


UNPINNED_SQL = (
    "SELECT id, target_service_name, status FROM sys_invocation WHERE pinned_deployment_id IS NULL "
    "AND status IN ('paused', 'backing-off', 'running', 'suspended')"
)


def pinned_sql(deployment_ids: list[str]) -> str:
    ids = ", ".join(literal(i) for i in deployment_ids)
    return (
        "SELECT id, pinned_deployment_id, status FROM sys_invocation "
        f"WHERE status <> 'completed' AND pinned_deployment_id IN ({ids})"
    )


def latest_services(deployment: Deployment, services: list[ServiceInfo]) -> list[str]:
    """The services whose latest revision ``deployment`` holds (Restate's view)."""
    return sorted(s.name for s in services if s.deployment_id == deployment.id)


def build_plan(
    *,
    deployments: list[Deployment],
    services: list[ServiceInfo],
    pinned_rows: list[dict[str, object]],
    request: CleanupStaleDeploymentsRequest,
    unpinned_rows: list[dict[str, object]] | None = None,
) -> CleanupPlan:
    """Pure: which deployment to keep, and what to do with every other one."""
    matches = [d for d in deployments if d.service_url == request.service_url]
    if not matches:
        registered = ", ".join(redact_text(d.service_url) for d in deployments) or "none"
        raise DeploymentNotFoundError(
            f"No registered deployment has serviceUrl {redact_text(request.service_url)!r} "
            f"(exact match); registered: {registered}"
        )
    keep = matches[0]
    pinned: dict[str, list[str]] = defaultdict(list)
    statuses: dict[str, dict[str, str]] = defaultdict(dict)
    for row in pinned_rows:
        deployment_id, invocation_id = str(row.get("pinned_deployment_id")), str(row.get("id"))
        pinned[deployment_id].append(invocation_id)
        statuses[deployment_id][invocation_id] = str(row.get("status"))
    unpinned: dict[str, list[str]] = defaultdict(list)  # service -> its started, unpinned work
    for row in unpinned_rows or []:
        unpinned[str(row.get("target_service_name"))].append(str(row.get("id")))
    stale = [
        StaleDeployment(
            id=d.id,
            service_url=d.service_url,
            pinned=sorted(pinned.get(d.id, [])),
            latest_for=latest_services(d, services),
            pinned_statuses=dict(statuses.get(d.id, {})),
            http_11=d.http_version == "HTTP/1.1",
            unpinned=sorted(i for s in d.services for i in unpinned.get(s.name, [])),
        )
        for d in deployments
        if d.id != keep.id
    ]
    return CleanupPlan(keep=keep, stale=stale, force_drain=request.force_drain)


async def plan_cleanup(
    client: RestateAdminClient, request: CleanupStaleDeploymentsRequest, *, timeout: float
) -> CleanupPlan:
    try:
        deployments = await client.list_deployments(timeout=timeout)
        services = await client.list_services(timeout=timeout)
    except RestateError as exc:
        raise AdminUnreachableError(f"Cannot list Restate deployments: {exc}") from exc
    others = [d.id for d in deployments if d.service_url != request.service_url]
    rows: list[dict[str, object]] = []
    unpinned: list[dict[str, object]] = []
    if others:
        try:
            rows, unpinned = await asyncio.gather(
                client.query(pinned_sql(others), timeout=timeout),
                client.query(UNPINNED_SQL, timeout=timeout),
            )
        except RestateError as exc:
            raise AdminUnreachableError(f"Cannot read pinned invocations: {exc}") from exc
    return build_plan(
        deployments=deployments,
        services=services,
        pinned_rows=rows,
        request=request,
        unpinned_rows=unpinned,
    )


# What Restate says (META0003) when its discovery could not open a connection to the service at
# all. An HTTP answer, even a 504 from a proxy ("got status code"), means it reached something.
CONNECTION_FAILURES = (
    "connection refused",
    "tcp connect error",
    "h2 pool connection error",
    "unable to reach the remote endpoint",
    "dns error",
    "failed to lookup address",
    "no route to host",
    "network is unreachable",
)


def unreachable_from_restate(exc: RestateRejected) -> bool:
    """Whether Restate's failed discovery says it could not connect at all (pure)."""
    reason = exc.message.lower()
    return (
        exc.restate_code == "META0003"
        and "got status code" not in reason
        and any(failure in reason for failure in CONNECTION_FAILURES)
    )


async def restate_reaches(
    client: RestateAdminClient, stale: StaleDeployment, *, timeout: float
) -> bool:
    """Whether Restate itself reaches the stale deployment: a discovery it runs (``dry_run``, nothing
    is registered) that fails to connect is the only "no"."""
    if not stale.service_url.startswith(("http://", "https://")):
        return True  # a Lambda ARN: Restate reaches it its own way
    try:
        await client.register_deployment(
            uri=stale.service_url,
            force=True,
            dry_run=True,
            use_http_11=stale.http_11,
            timeout=timeout,
        )
    except RestateRejected as exc:
        return not unreachable_from_restate(exc)
    return True


async def execute_cleanup(
    client: RestateAdminClient,
    plan: CleanupPlan,
    *,
    timeout: float,
    drain_timeout: float,
) -> CleanupReport:
    """Act on every stale deployment, a few at a time."""
    report = CleanupReport()
    gate = asyncio.Semaphore(PARALLEL_DELETES)
    lost: list[str] = []

    async def one(stale: StaleDeployment) -> None:
        async with gate:
            try:
                await _clean_one(client, plan, stale, report, timeout, drain_timeout)
            except RestateError as exc:
                report.failures[stale.id] = str(exc)
                logger.warning("cleanup of %s failed: %s", stale.id, exc)
                if isinstance(exc, RestateUnreachable):
                    lost.append(stale.id)

    await asyncio.gather(*(one(s) for s in plan.stale))
    if lost:  # the admin API itself went away: this is not a per-deployment failure
        raise AdminUnreachableError(
            f"Restate admin API became unreachable during cleanup ({', '.join(sorted(lost))}); "
            f"deleted before: {', '.join(report.deleted) or 'none'}. Run doctor, then rerun."
        )
    return report


async def _clean_one(
    client: RestateAdminClient,
    plan: CleanupPlan,
    stale: StaleDeployment,
    report: CleanupReport,
    timeout: float,
    drain_timeout: float,
) -> None:
    if stale.protected and not plan.force_drain:
        report.failures[stale.id] = (
            "left in place: it holds the latest revision of "
            + ", ".join(stale.latest_for)
            + " (register the kept URL again first, or use forceDrain to delete it anyway)"
        )
        return
    if stale.unpinned and not plan.force_drain:
        report.failures[stale.id] = (
            f"left in place: {len(stale.unpinned)} started invocations of its services carry no "
            f"pinned deployment and may need it ({', '.join(stale.unpinned[:20])}); resume or "
            "recover them first, or use forceDrain"
        )
        return
    pinned = stale.pinned
    if pinned and not plan.force_drain:
        if await restate_reaches(client, stale, timeout=timeout):
            pinned = await _wait_for_drain(client, stale.id, drain_timeout, timeout)
            if pinned:
                report.failures[stale.id] = (
                    f"still draining after {drain_timeout:g} s: {len(pinned)} pinned invocations "
                    "(rerun later, or use forceDrain)"
                )
                return
    if pinned:
        for invocation_id in pinned:
            try:
                await client.kill_invocation(invocation_id, timeout=timeout)
            except RestateRejected as exc:
                if exc.status_code not in (404, 409):  # gone, or completed meanwhile
                    raise
        report.killed[stale.id] = pinned
    try:
        await client.delete_deployment(stale.id, timeout=timeout)
    except RestateRejected as exc:
        if exc.status_code != 404:  # already gone counts as done
            raise
    report.deleted.append(stale.id)


async def _wait_for_drain(
    client: RestateAdminClient, deployment_id: str, drain_timeout: float, timeout: float
) -> list[str]:
    deadline = time.monotonic() + drain_timeout
    while True:
        rows = await client.query(pinned_sql([deployment_id]), timeout=timeout)
        pinned = sorted(str(r.get("id")) for r in rows)
        if not pinned or time.monotonic() >= deadline:
            return pinned
        await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


async def write(
    client: RestateAdminClient,
    request: CleanupStaleDeploymentsRequest,
    *,
    timeout: float,
    drain_timeout: float,
    dry_run: bool,
    approved: list[PlannedStep] | None = None,
) -> WriteOutcome:
    """Plan (refusing a plan other than the ``approved`` one), and unless this is a dry run, act
    on every stale deployment."""
    plan = await plan_cleanup(client, request, timeout=timeout)
    steps = plan.steps()
    check_approved(approved, steps, request.target)
    if dry_run:
        return WriteOutcome(result=DryRunResult(plan=steps), plan=steps)
    report = await execute_cleanup(client, plan, timeout=timeout, drain_timeout=drain_timeout)
    details = [f"kept {plan.keep.id}", f"deleted: {', '.join(report.deleted) or 'none'}"]
    for deployment_id, killed in report.killed.items():
        details.append(f"killed pinned to {deployment_id}: {', '.join(killed)}")
    for deployment_id, why in report.failures.items():
        details.append(f"NOT deleted {deployment_id}: {why}")
    return WriteOutcome(result=Acknowledged(), plan=steps, details=details)


def verify(request: CleanupStaleDeploymentsRequest, result: ApiModel, after: DoctorReadout) -> str:
    """Whether the doctor after lists only the kept deployment."""
    if after.deployments.status != "ok":
        return f"deployments are {after.deployments.status}: {after.deployments.error}"
    kept = [d.id for d in after.deployments.items if d.service_url == request.service_url]
    others = [
        f"{d.id} ({redact_text(d.service_url)})"
        for d in after.deployments.items
        if d.service_url != request.service_url
    ]
    if not others:
        return f"only the kept deployment remains ({', '.join(kept)})"
    return f"stale deployments remain: {', '.join(others)}"
