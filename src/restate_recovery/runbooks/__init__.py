"""The registry of runbooks: one entry per operator route, read by everything that needs the list.

The operator API (its routes), the CLI (its commands), ``deployments/serve.py`` and
``prefect.yaml``'s checks (the deployments), ``deployments/automations.py`` (which doctor finding
starts which runbook) and the doctor's findings all read it here. Each entry names its Prefect
flow by module (``flows.recover_stuck_workflow``): the flow object is imported on first use, so
a client of the operator API (the CLI's remote mode) never imports Prefect.

Each write runbook is one shape: doctor -> guard -> one write task -> verify-doctor (the Prefect
layer in ``tasks/runbook.py``); the decisions it makes are plain functions in this package
(``guard``, ``redeploy``, ``cleanup``, ``recover``).
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from restate_recovery.models import ApiModel, DoctorReadout
from restate_recovery.paths import route
from restate_recovery.schemas import (
    Acknowledged,
    BatchRecovered,
    CleanupStaleDeploymentsRequest,
    DoctorRequest,
    ForceRedeployRequest,
    RecoverStuckWorkflowRequest,
    RecoverStuckWorkflowsRequest,
    Redeployed,
    RequestModel,
    ResumedInvocations,
    ResumePausedInvocationsRequest,
)

if TYPE_CHECKING:
    from prefect import Flow


@dataclass(frozen=True)
class Runbook:
    """One operator route and everything that serves it."""

    name: str  # the route's last segment and the CLI command
    flow_name: str  # the Prefect flow (and so the deployment's first half)
    summary: str
    request: type[RequestModel]
    response: type[ApiModel]
    module: str  # the flow's module, importable as such (flows/ is a package)
    function: str
    deployment: str  # the deployment's name (second half)
    lock: str | None = None  # the per-target lock, formatted with the request's fields
    finding: str | None = None  # the doctor finding that starts this runbook (automations)

    @property
    def route(self) -> str:
        return route(self.name)

    @property
    def writes(self) -> bool:
        return self.lock is not None

    @property
    def entrypoint(self) -> str:
        """The flow as a Prefect entrypoint (``flows/doctor.py:doctor``)."""
        return f"{self.module.replace('.', '/')}.py:{self.function}"

    @property
    def deployment_name(self) -> str:
        """``<flow>/<deployment>``, as Prefect names it."""
        return f"{self.flow_name}/{self.deployment}"

    def flow(self, function: str | None = None) -> Flow[..., Any]:
        """The Prefect flow object (or another flow of its module). The first call imports
        Prefect, after its defaults are set (``prefect_env.configure``)."""
        from restate_recovery import prefect_env

        prefect_env.configure()
        module = importlib.import_module(self.module)
        flow: Flow[..., Any] = getattr(module, function or self.function)
        return flow

    def lock_target(self, request: RequestModel) -> str:
        """The target one write at a time may touch (``workflow:<service>:<key>``)."""
        if self.lock is None:
            raise ValueError(f"{self.name} does not write")
        fields = type(request).model_fields
        return bounded(self.lock.format(**{name: getattr(request, name) for name in fields}))

    def target_of(self, body: dict[str, Any]) -> str:
        """The same target, from a route's body as it is on the wire (camelCase)."""
        if self.lock is None:
            raise ValueError(f"{self.name} does not write")
        fields = self.request.model_fields
        return bounded(self.lock.format(**{n: body.get(f.alias or n) for n, f in fields.items()}))


TARGET_LIMIT = 255  # the audit database's column for a lock's or a plan's target


def bounded(target: str) -> str:
    """``target`` as the lock and plan tables keep it: as it is up to ``TARGET_LIMIT``
    characters; a longer one (a service name and key may have 255 each) is cut and ends with a
    hash of the whole, so two long targets never share a lock."""
    if len(target) <= TARGET_LIMIT:
        return target
    digest = hashlib.sha256(target.encode()).hexdigest()
    return f"{target[: TARGET_LIMIT - len(digest) - 2]}~{digest}"


DOCTOR = Runbook(
    name="doctor",
    flow_name="restate-doctor",
    summary="Read-only readout of ingress, admin API, deployments, services, invocations",
    request=DoctorRequest,
    response=DoctorReadout,
    module="flows.doctor",
    function="doctor",
    deployment="doctor",
)
FORCE_REDEPLOY = Runbook(
    name="force-redeploy",
    flow_name="force-redeploy",
    summary="Register the live durable workflow service URL",
    request=ForceRedeployRequest,
    response=Redeployed,
    module="flows.force_redeploy",
    function="force_redeploy",
    deployment="register",
    lock="deployments",
    finding="restate.doctor.service-url.unregistered",
)
CLEANUP_STALE_DEPLOYMENTS = Runbook(
    name="cleanup-stale-deployments",
    flow_name="cleanup-stale-deployments",
    summary="Keep the deployment matching serviceUrl; drain and delete the others",
    request=CleanupStaleDeploymentsRequest,
    response=Acknowledged,
    module="flows.cleanup_stale_deployments",
    function="cleanup_stale_deployments",
    deployment="cleanup",
    lock="deployments",
    finding="restate.doctor.deployments.multiple",
)
RECOVER_STUCK_WORKFLOW = Runbook(
    name="recover-stuck-workflow",
    flow_name="recover-stuck-workflow",
    summary="Clear a terminal-failed workflow key's state and purge its run: it runs again blank",
    request=RecoverStuckWorkflowRequest,
    response=Acknowledged,
    module="flows.recover_stuck_workflow",
    function="recover_stuck_workflow",
    deployment="recover",
    lock="workflow:{service_name}:{service_key}",
    finding="restate.doctor.workflow.terminal-failed",
)

RESUME_PAUSED_INVOCATIONS = Runbook(
    name="resume-paused-invocations",
    flow_name="resume-paused-invocations",
    summary="Resume paused invocations (one id, or a service's or key's) on keep, latest or a "
    "named deployment",
    request=ResumePausedInvocationsRequest,
    response=ResumedInvocations,
    module="flows.resume_paused_invocations",
    function="resume_paused_invocations",
    deployment="resume",
    lock="invocations:{invocation_id}:{service_name}:{service_key}",
    finding="restate.doctor.invocation.paused",
)

RECOVER_STUCK_WORKFLOWS = Runbook(
    name="recover-stuck-workflows",
    flow_name="recover-stuck-workflows",
    summary="recover-stuck-workflow over a selection of one service's terminal-failed keys",
    request=RecoverStuckWorkflowsRequest,
    response=BatchRecovered,
    module="flows.recover_stuck_workflows",
    function="recover_stuck_workflows",
    deployment="recover-many",
    lock="workflows:{service_name}",
    finding="restate.doctor.workflows.terminal-failed",
)

RUNBOOKS: tuple[Runbook, ...] = (
    DOCTOR,
    FORCE_REDEPLOY,
    CLEANUP_STALE_DEPLOYMENTS,
    RECOVER_STUCK_WORKFLOW,
    RESUME_PAUSED_INVOCATIONS,
    RECOVER_STUCK_WORKFLOWS,
)
WRITES: tuple[Runbook, ...] = tuple(r for r in RUNBOOKS if r.writes)


def runbook(name: str) -> Runbook:
    """The runbook of a route (``recover-stuck-workflow``)."""
    for entry in RUNBOOKS:
        if entry.name == name:
            return entry
    raise KeyError(name)


def for_finding(event: str) -> Runbook | None:
    """The runbook a doctor finding maps to (None: fix connectivity first)."""
    return next((r for r in RUNBOOKS if r.finding == event), None)
