"""Automations that let alerts and doctor findings drive the runbooks. Applied by
``restate-recovery automations apply`` (it replaces automations of the same names).

- an Alertmanager alert (``restate.alert.firing``, posted to the operator API's /alerts route)
  runs the doctor;
- a terminal-failed workflow key found by the doctor runs recover-stuck-workflow for that key;
- RESTATE_SERVICE_URL not registered runs force-redeploy of it (its redacted form: the worker
  holds the credentials; auto-approved only with RECOVERY_AUTO_APPROVE_REDEPLOY=true);
- more than one deployment, with RESTATE_SERVICE_URL registered, runs cleanup-stale-deployments
  keeping it.

Every write runs with ``require_approval``: it plans (a dry run, in its incident record) and pauses
until an operator resumes it in the Prefect UI with an Approval (approve/reject, who, why).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.events.actions import RunDeployment
from prefect.events.schemas.automations import EventTrigger, Posture

DEPLOYMENTS = {
    "doctor": "restate-doctor/doctor",
    "force-redeploy": "force-redeploy/manual",
    "cleanup-stale-deployments": "cleanup-stale-deployments/manual",
    "recover-stuck-workflow": "recover-stuck-workflow/manual",
}


def _on(event: str, **trigger: Any) -> EventTrigger:
    return EventTrigger(
        expect={event}, posture=Posture.Reactive, threshold=1, within=timedelta(0), **trigger
    )


def definitions(ids: dict[str, UUID]) -> list[Automation]:
    def run(name: str, parameters: dict[str, Any]) -> RunDeployment:
        return RunDeployment(source="selected", deployment_id=ids[name], parameters=parameters)

    return [
        Automation(
            name="restate-alert-runs-doctor",
            description="An Alertmanager alert about Restate runs the doctor.",
            trigger=_on("restate.alert.firing"),
            actions=[run("doctor", {})],
        ),
        Automation(
            name="restate-terminal-failure-recovers-key",
            description="A terminal-failed workflow key: recover it, after approval.",
            trigger=_on(
                "restate.doctor.workflow.terminal-failed",
                match={"prefect.resource.id": "restate.workflow.*"},
                for_each={"prefect.resource.id"},
            ),
            actions=[
                run(
                    "recover-stuck-workflow",
                    {
                        "service_name": "{{ event.payload.serviceName }}",
                        "service_key": "{{ event.payload.serviceKey }}",
                        "require_approval": True,
                    },
                )
            ],
        ),
        Automation(
            name="restate-service-url-unregistered-redeploys",
            description="RESTATE_SERVICE_URL is not registered: register it, after approval.",
            trigger=_on("restate.doctor.service-url.unregistered"),
            actions=[
                run(
                    "force-redeploy",
                    {"service_url": "{{ event.payload.serviceUrl }}", "require_approval": True},
                )
            ],
        ),
        Automation(
            name="restate-multiple-deployments-cleanup",
            description="More than one deployment: keep RESTATE_SERVICE_URL's, after approval.",
            trigger=_on(
                "restate.doctor.deployments.multiple",
                match={"prefect.resource.id": "restate.deployments"},
            ),
            actions=[
                run(
                    "cleanup-stale-deployments",
                    {
                        "service_url": "{{ event.payload.keepServiceUrl }}",
                        "require_approval": True,
                    },
                )
            ],
        ),
    ]


async def apply() -> list[str]:
    """Create (or replace) the automations; returns their names."""
    async with get_client() as client:
        ids = {
            key: (await client.read_deployment_by_name(name)).id
            for key, name in DEPLOYMENTS.items()
        }
        existing = {a.name: a.id for a in await client.read_automations()}
        names = []
        for automation in definitions(ids):
            if automation.name in existing:
                await client.delete_automation(existing[automation.name])
            await automation.acreate()
            names.append(automation.name)
    return names
