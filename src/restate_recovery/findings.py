"""What the doctor reports as Prefect events, so automations can react (pure functions).

Event names and resource ids (automations match on them):

| event | resource id | when |
|---|---|---|
| ``restate.doctor.component.unhealthy`` | ``restate.component.<name>`` | a component is not ok |
| ``restate.doctor.workflow.terminal-failed`` | ``restate.workflow.<service>.<key>`` | terminal failure |
| ``restate.doctor.service-url.unregistered`` | ``restate.service-url`` | RESTATE_SERVICE_URL not registered |
| ``restate.doctor.deployments.multiple`` | ``restate.deployments`` | more than one deployment |

URLs in payloads are redacted: events are stored by Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from restate_recovery.models import DoctorReadout
from restate_recovery.urls import redact_url


@dataclass(frozen=True)
class Finding:
    event: str
    resource: dict[str, str]
    payload: dict[str, Any] = field(default_factory=dict)


def _registered_form(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def doctor_findings(readout: DoctorReadout, service_url: str | None) -> list[Finding]:
    findings: list[Finding] = []
    for name, part in readout:
        if part.status != "ok":
            findings.append(
                Finding(
                    event="restate.doctor.component.unhealthy",
                    resource={
                        "prefect.resource.id": f"restate.component.{name}",
                        "restate.component": name,
                        "restate.status": part.status,
                    },
                    payload={
                        "status": part.status,
                        "error": redact_url(getattr(part, "error", None) or ""),
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
        findings.append(
            Finding(
                event="restate.doctor.workflow.terminal-failed",
                resource={
                    "prefect.resource.id": f"restate.workflow.{key[0]}.{key[1]}",
                    "restate.service-name": key[0],
                    "restate.service-key": key[1],
                },
                payload={
                    "serviceName": key[0],
                    "serviceKey": key[1],
                    "invocationId": failure.id,
                    "failedAt": failure.failed_at,
                    "errorMessage": redact_url(failure.error_message or ""),
                },
            )
        )
    registered = [d.service_url for d in readout.deployments.items]
    if readout.deployments.status == "ok" and service_url:
        wanted = _registered_form(service_url)
        if wanted not in registered:
            findings.append(
                Finding(
                    event="restate.doctor.service-url.unregistered",
                    resource={"prefect.resource.id": "restate.service-url"},
                    payload={"serviceUrl": redact_url(service_url)},
                )
            )
    if readout.deployments.status == "ok" and len(registered) > 1:
        keep = _registered_form(service_url) if service_url else None
        findings.append(
            Finding(
                event="restate.doctor.deployments.multiple",
                resource={"prefect.resource.id": "restate.deployments"},
                payload={
                    "count": len(registered),
                    "deploymentIds": [d.id for d in readout.deployments.items],
                    "keepServiceUrl": redact_url(keep) if keep in registered else None,
                },
            )
        )
    return findings
