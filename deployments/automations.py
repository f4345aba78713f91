"""Automations that let alerts and doctor findings drive the runbooks. Applied by
``restate-recovery automations apply`` (it replaces automations of the same names).

- an Alertmanager alert (``restate.alert.firing``, posted to the operator API's /alerts route)
  runs the doctor;
- each doctor finding that maps to a write runbook (the registry's ``finding``; the finding names
  it in its resource label ``restate.runbook``) runs that runbook with the finding's request:
  a terminal-failed workflow key -> recover-stuck-workflow for that key; RESTATE_SERVICE_URL not
  registered -> force-redeploy of it (its redacted form: the worker holds the credentials;
  auto-approved only with RECOVERY_AUTO_APPROVE_REDEPLOY=true); more than one deployment, with
  RESTATE_SERVICE_URL registered -> cleanup-stale-deployments keeping it.

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

from restate_recovery.doctor.findings import RUNBOOK_LABEL
from restate_recovery.runbooks import DOCTOR, RUNBOOKS, WRITES, Runbook

ALERT_RUNS_DOCTOR = "restate-alert-runs-doctor"


def automation_name(runbook: Runbook) -> str:
    return f"restate-finding-runs-{runbook.name}"


def _on(event: str, **trigger: Any) -> EventTrigger:
    return EventTrigger(
        expect={event}, posture=Posture.Reactive, threshold=1, within=timedelta(0), **trigger
    )


def definitions(ids: dict[str, UUID]) -> list[Automation]:
    """The automations, given the deployment id of each runbook (by route name)."""
    automations = [
        Automation(
            name=ALERT_RUNS_DOCTOR,
            description="An Alertmanager alert about Restate runs the doctor.",
            trigger=_on("restate.alert.firing"),
            actions=[RunDeployment(source="selected", deployment_id=ids[DOCTOR.name])],
        )
    ]
    for runbook in WRITES:
        assert runbook.finding is not None
        automations.append(
            Automation(
                name=automation_name(runbook),
                description=f"A doctor finding ({runbook.finding}) runs {runbook.name}, "
                "after approval.",
                trigger=_on(
                    runbook.finding,
                    match={RUNBOOK_LABEL: runbook.name},
                    for_each={"prefect.resource.id"},
                ),
                actions=[
                    RunDeployment(
                        source="selected",
                        deployment_id=ids[runbook.name],
                        parameters={
                            "request": "{{ event.payload.request }}",
                            "require_approval": True,
                        },
                    )
                ],
            )
        )
    return automations


async def apply() -> list[str]:
    """Create (or replace) the automations; returns their names."""
    async with get_client() as client:
        ids = {
            r.name: (await client.read_deployment_by_name(r.deployment_name)).id for r in RUNBOOKS
        }
        existing = {a.name: a.id for a in await client.read_automations()}
        names = []
        for automation in definitions(ids):
            if automation.name in existing:
                await client.delete_automation(existing[automation.name])
            await automation.acreate()
            names.append(automation.name)
    return names
