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

A finding that maps to a runbook names it in its resource (label ``restate.runbook``, what the
automations match on) and carries it in its payload: ``runbook`` (the route) and ``request`` (the
route's body, ready to run). Everything in a payload is redacted: events are
stored by Prefect (a credentialed URL is matched by its redacted form where the runbook runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from restate_recovery.models import DoctorReadout
from restate_recovery.redaction import redact_text

UNHEALTHY = "restate.doctor.component.unhealthy"
TERMINAL_FAILED = "restate.doctor.workflow.terminal-failed"
UNREGISTERED = "restate.doctor.service-url.unregistered"
MULTIPLE_DEPLOYMENTS = "restate.doctor.deployments.multiple"


@dataclass(frozen=True)
class Finding:
    event: str
    resource: dict[str, str]
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def runbook(self) -> str | None:
        return self.resource.get(RUNBOOK_LABEL)


RUNBOOK_LABEL = "restate.runbook"


def _runs(runbook: str, request: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """The resource label and payload fields of a finding that maps to a runbook."""
    return {RUNBOOK_LABEL: runbook}, {"runbook": runbook, "request": request}


def _registered_form(url: str) -> str:
    """How Restate stores a URL (with a trailing ``/``), redacted for comparison and storage."""
    return redact_text(url if url.endswith("/") else url + "/")


def doctor_findings(readout: DoctorReadout, service_url: str | None) -> list[Finding]:
    findings: list[Finding] = []
    for name, part in readout:
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
    seen: set[tuple[str, str]] = set()
    for failure in readout.invocations.recent_failures:
        if failure.status != "completed" or not failure.service_name or not failure.service_key:
            continue
        key = (failure.service_name, failure.service_key)
        if key in seen:
            continue
        seen.add(key)
        label, runs = _runs("recover-stuck-workflow", {"serviceName": key[0], "serviceKey": key[1]})
        findings.append(
            Finding(
                event=TERMINAL_FAILED,
                resource={
                    "prefect.resource.id": f"restate.workflow.{key[0]}.{key[1]}",
                    "restate.service-name": key[0],
                    "restate.service-key": key[1],
                    **label,
                },
                payload={
                    "serviceName": key[0],
                    "serviceKey": key[1],
                    "invocationId": failure.id,
                    "failedAt": failure.failed_at,
                    "errorMessage": redact_text(failure.error_message or ""),
                    **runs,
                },
            )
        )
    registered = [_registered_form(d.service_url) for d in readout.deployments.items]
    wanted = _registered_form(service_url) if service_url else None
    if readout.deployments.status == "ok" and service_url and wanted not in registered:
        url = redact_text(service_url)
        label, runs = _runs("force-redeploy", {"serviceUrl": url, "force": True})
        findings.append(
            Finding(
                event=UNREGISTERED,
                resource={"prefect.resource.id": "restate.service-url", **label},
                payload={"serviceUrl": url, **runs},
            )
        )
    if readout.deployments.status == "ok" and len(registered) > 1:
        keep = wanted if wanted in registered else None
        label, runs = {}, {}
        if keep is not None:  # without the live URL registered there is nothing safe to keep
            label, runs = _runs(
                "cleanup-stale-deployments", {"serviceUrl": keep, "forceDrain": False}
            )
        findings.append(
            Finding(
                event=MULTIPLE_DEPLOYMENTS,
                resource={"prefect.resource.id": "restate.deployments", **label},
                payload={
                    "count": len(registered),
                    "deploymentIds": [d.id for d in readout.deployments.items],
                    "keepServiceUrl": keep,
                    **runs,
                },
            )
        )
    return findings
