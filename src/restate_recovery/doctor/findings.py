"""What the doctor reports as Prefect events, so automations can react (pure functions).

Event names and resource ids (automations match on them):

| event (resource id) | when | runbook |
|---|---|---|
| ``restate.doctor.component.unhealthy`` (``restate.component.<name>``) | a component is not ok | none |
| ``restate.doctor.workflow.terminal-failed`` (``restate.workflow.<service>.<key>``) | terminal \
failure | recover-stuck-workflow |
| ``restate.doctor.service-url.unregistered`` (``restate.service-url``) | RESTATE_SERVICE_URL is \
not registered | force-redeploy |
| ``restate.doctor.deployments.multiple`` (``restate.deployments``) | more than one deployment | \
cleanup-stale-deployments |
| ``restate.doctor.workflows.terminal-failed`` (``restate.workflows.<service>``) | ``BULK_KEYS`` \
or more keys of one service failed terminally (in place of their one-key findings) | \
recover-stuck-workflows |
| ``restate.doctor.invocation.paused`` (``restate.invocation.<id>``) | an invocation is paused (its \
retries used up) | resume-paused-invocations (on ``latest``) |
| ``restate.doctor.cluster.<kind>`` (``restate.cluster.<node|partition|log>.<id>``) | a problem \
of the cluster readout (RESTATE_NODE_URLS): ``node-dead``, ``partition-leaderless``, \
``leadership-frozen``... (``ClusterProblem``) | none |

A finding that maps to a runbook (an *actionable* one) names it in its resource (label
``restate.runbook``) and carries, in its payload: ``runbook``, ``request`` (the route's body, ready
to run), ``target`` (what the runbook's lock guards: ``workflow:<service>:<key>`` or
``deployments``), ``fingerprint`` (the same finding twice has the same one: "same as before"),
``reason`` (a line for the run's audit row) and, once the doctor knows it, ``state`` (label
``restate.finding.state``): ``new``, or ``pending`` while a plan for the target waits for
approval, or ``quiet`` after a rejection (``restate_recovery.plans``). The automations start a
runbook only for ``new`` ones. Everything in a payload is redacted: events are stored by Prefect.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

from restate_recovery.models import AlertContext, DoctorReadout
from restate_recovery.redaction import redact_text
from restate_recovery.runbooks import runbook as runbook_named

UNHEALTHY = "restate.doctor.component.unhealthy"
TERMINAL_FAILED = "restate.doctor.workflow.terminal-failed"
UNREGISTERED = "restate.doctor.service-url.unregistered"
MULTIPLE_DEPLOYMENTS = "restate.doctor.deployments.multiple"
PAUSED = "restate.doctor.invocation.paused"
MANY_TERMINAL_FAILED = "restate.doctor.workflows.terminal-failed"
CLUSTER_PREFIX = "restate.doctor.cluster."  # + a ClusterProblem's kind
BULK_KEYS = 10  # this many failed keys of one service make one batch, not one plan per key

RUNBOOK_LABEL = "restate.runbook"
STATE_LABEL = "restate.finding.state"


@dataclass(frozen=True)
class Finding:
    event: str
    resource: dict[str, str]
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def runbook(self) -> str | None:
        return self.resource.get(RUNBOOK_LABEL)

    @property
    def target(self) -> str | None:
        target = self.payload.get("target")
        return target if isinstance(target, str) else None

    @property
    def state(self) -> str | None:
        return self.resource.get(STATE_LABEL)

    def line(self) -> str:
        """One line for a person: what it found and what to run."""
        if self.runbook is None:
            return f"{self.event}: {self.payload.get('error') or self.payload.get('status')}"
        state = f" ({self.state})" if self.state and self.state != "new" else ""
        return f"{self.runbook} {self.payload['request']}{state}: {self.payload['reason']}"


def _actionable(
    event: str,
    resource: dict[str, str],
    runbook: str,
    request: dict[str, Any],
    identity: str,
    reason: str,
    **payload: Any,
) -> Finding:
    target = runbook_named(runbook).target_of(request)
    fingerprint = hashlib.sha256(f"{event}|{target}|{identity}".encode()).hexdigest()[:16]
    return Finding(
        event=event,
        resource={**resource, RUNBOOK_LABEL: runbook, STATE_LABEL: "new"},
        payload={
            **payload,
            "runbook": runbook,
            "request": request,
            "target": target,
            "fingerprint": fingerprint,
            "reason": redact_text(reason),
            "state": "new",
        },
    )


def _registered_form(url: str) -> str:
    """How Restate stores a URL (with a trailing ``/``), redacted for comparison and storage."""
    return redact_text(url if url.endswith("/") else url + "/")


def doctor_findings(readout: DoctorReadout, service_url: str | None) -> list[Finding]:
    findings: list[Finding] = []
    for name, part in readout.components():
        if part.status != "ok":
            findings.append(
                Finding(
                    event=UNHEALTHY,
                    resource={
                        "prefect.resource.id": f"restate.component.{name}",
                        "restate.component": name,
                        "restate.status": part.status,
                    },
                    payload={
                        "status": part.status,
                        "error": redact_text(getattr(part, "error", None) or ""),
                    },
                )
            )
    if readout.cluster is not None:
        for problem in readout.cluster.problems:
            subject = problem.subject.replace(" ", ".")
            findings.append(
                Finding(
                    event=f"{CLUSTER_PREFIX}{problem.kind}",
                    resource={
                        "prefect.resource.id": f"restate.cluster.{subject}",
                        "restate.cluster.problem": problem.kind,
                    },
                    payload={"error": problem.detail, "status": readout.cluster.status},
                )
            )
    seen: set[tuple[str, str]] = set()
    failed_keys: dict[str, set[str]] = {}
    for failure in readout.invocations.recent_failures:
        if failure.status == "completed" and failure.service_name and failure.service_key:
            failed_keys.setdefault(failure.service_name, set()).add(failure.service_key)
    many = {name for name, keys in failed_keys.items() if len(keys) >= BULK_KEYS}
    for name in sorted(many):
        findings.append(
            _actionable(
                MANY_TERMINAL_FAILED,
                {"prefect.resource.id": f"restate.workflows.{name}", "restate.service-name": name},
                "recover-stuck-workflows",
                {"serviceName": name, "limit": 1000},
                identity=",".join(sorted(failed_keys[name])),
                reason=f"doctor: {len(failed_keys[name])} or more keys of {name} failed "
                "terminally: recover them as one batch",
                serviceName=name,
                keys=sorted(failed_keys[name]),
            )
        )
    for failure in readout.invocations.recent_failures:
        if failure.status != "completed" or not failure.service_name or not failure.service_key:
            continue
        key = (failure.service_name, failure.service_key)
        if key in seen or failure.service_name in many:
            continue
        seen.add(key)
        error = redact_text(failure.error_message or "")
        findings.append(
            _actionable(
                TERMINAL_FAILED,
                {
                    "prefect.resource.id": f"restate.workflow.{key[0]}.{key[1]}",
                    "restate.service-name": key[0],
                    "restate.service-key": key[1],
                },
                "recover-stuck-workflow",
                {"serviceName": key[0], "serviceKey": key[1]},
                identity=f"{failure.id}|{failure.failed_at}",
                reason=f"doctor: {key[0]}/{key[1]} failed terminally ({error or 'no message'})",
                serviceName=key[0],
                serviceKey=key[1],
                invocationId=failure.id,
                failedAt=failure.failed_at,
                errorMessage=error,
            )
        )
    for failure in readout.invocations.recent_failures:
        if failure.status != "paused":
            continue
        error = redact_text(failure.error_message or "")
        findings.append(
            _actionable(
                PAUSED,
                {
                    "prefect.resource.id": f"restate.invocation.{failure.id}",
                    "restate.invocation-id": failure.id,
                },
                "resume-paused-invocations",
                {"invocationId": failure.id, "deployment": "latest"},
                identity=f"{failure.id}|{failure.failed_at}",
                reason=f"doctor: {failure.id} ({failure.service_name}/{failure.service_key}) is "
                f"paused ({error or 'no message'}); resume it on the latest deployment once "
                "the cause is fixed",
                invocationId=failure.id,
                serviceName=failure.service_name,
                serviceKey=failure.service_key,
                errorMessage=error,
            )
        )
    registered = [_registered_form(d.service_url) for d in readout.deployments.items]
    wanted = _registered_form(service_url) if service_url else None
    if readout.deployments.status == "ok" and service_url and wanted not in registered:
        url = redact_text(service_url)
        findings.append(
            _actionable(
                UNREGISTERED,
                {"prefect.resource.id": "restate.service-url"},
                "force-redeploy",
                {"serviceUrl": url, "force": True},
                identity=url,
                reason=f"doctor: RESTATE_SERVICE_URL {url} is not registered",
                serviceUrl=url,
            )
        )
    if readout.deployments.status == "ok" and len(registered) > 1:
        keep = wanted if wanted in registered else None
        ids = [d.id for d in readout.deployments.items]
        resource = {"prefect.resource.id": "restate.deployments"}
        payload = {"count": len(registered), "deploymentIds": ids, "keepServiceUrl": keep}
        if keep is None:  # without the live URL registered there is nothing safe to keep
            findings.append(Finding(event=MULTIPLE_DEPLOYMENTS, resource=resource, payload=payload))
        else:
            findings.append(
                _actionable(
                    MULTIPLE_DEPLOYMENTS,
                    resource,
                    "cleanup-stale-deployments",
                    {"serviceUrl": keep, "forceDrain": False},
                    identity=",".join(sorted(ids)),
                    reason=f"doctor: {len(ids)} deployments registered; {keep} is the live one",
                    **payload,
                )
            )
    return findings


def in_context(
    findings: list[Finding], states: dict[str, str], alert: AlertContext | None
) -> list[Finding]:
    """The findings with each actionable one's state (by target) and the alert that started the
    doctor, if one did (its runs show it)."""
    placed = []
    for finding in findings:
        if finding.target is None:
            placed.append(finding)
            continue
        state = states.get(finding.target, "new")
        payload = {**finding.payload, "state": state}
        payload["alert"] = alert.model_dump() if alert is not None else None
        resource = {**finding.resource, STATE_LABEL: state}
        placed.append(replace(finding, resource=resource, payload=payload))
    return placed
