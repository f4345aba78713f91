"""Automations that let alerts and doctor findings drive the runbooks. Applied by
``restate-recovery automations apply`` (it replaces automations of the same names).

- an Alertmanager alert (``restate.alert.firing``, posted to the operator API's /alerts route)
  runs the doctor, with the alert (the doctor run and what it leads to show it);
- each *new* doctor finding that maps to a write runbook (the registry's ``finding``; the finding
  names it in its resource labels ``restate.runbook`` and ``restate.finding.state``) runs that
  runbook with the finding's request, reason and alert: a terminal-failed workflow key ->
  recover-stuck-workflow for that key; RESTATE_SERVICE_URL not registered -> force-redeploy of
  it (its redacted form: the worker holds the credentials; auto-approved only with
  RECOVERY_AUTO_APPROVE_REDEPLOY=true); more than one deployment, with RESTATE_SERVICE_URL
  registered -> cleanup-stale-deployments keeping it. A finding whose target already has a plan
  waiting (``pending``), or was rejected lately (``quiet``), starts nothing;
- with ``RECOVERY_APPROVAL_WEBHOOK_URL`` set, each plan that waits for approval is sent there
  (a Prefect Custom Webhook notification block, ``restate-recovery-approvals``): the target, the
  plan and the run's link.

Every write runs with ``require_approval``: it plans (a dry run, in its incident record) and pauses
until an operator resumes it in the Prefect UI with an Approval (approve/reject, who, why).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any
from uuid import UUID

from prefect.automations import Automation
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.events.actions import RunDeployment, SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture

from restate_recovery.doctor.findings import RUNBOOK_LABEL, STATE_LABEL
from restate_recovery.runbooks import DOCTOR, RUNBOOKS, WRITES, Runbook
from tasks.runbook import PLAN_EVENT

ALERT_RUNS_DOCTOR = "restate-alert-runs-doctor"
PLAN_NOTIFIES = "restate-plan-awaiting-approval-notifies"
WEBHOOK_BLOCK = "restate-recovery-approvals"


def automation_name(runbook: Runbook) -> str:
    return f"restate-finding-runs-{runbook.name}"


def _on(event: str, **trigger: Any) -> EventTrigger:
    return EventTrigger(
        expect={event}, posture=Posture.Reactive, threshold=1, within=timedelta(0), **trigger
    )


def definitions(ids: dict[str, UUID], webhook_block: UUID | None = None) -> list[Automation]:
    """The automations, given the deployment id of each runbook (by route name), and the webhook
    block that approvals are announced to (none: no announcement)."""
    automations = [
        Automation(
            name=ALERT_RUNS_DOCTOR,
            description="An Alertmanager alert about Restate runs the doctor.",
            trigger=_on("restate.alert.firing"),
            actions=[
                RunDeployment(
                    source="selected",
                    deployment_id=ids[DOCTOR.name],
                    parameters={"alert": "{{ event.payload.get('alert') }}"},
                )
            ],
        )
    ]
    for runbook in WRITES:
        assert runbook.finding is not None
        name = automation_name(runbook)
        automations.append(
            Automation(
                name=name,
                description=f"A new doctor finding ({runbook.finding}) runs {runbook.name}, "
                "after approval.",
                trigger=_on(
                    runbook.finding,
                    match={RUNBOOK_LABEL: runbook.name, STATE_LABEL: "new"},
                    for_each={"prefect.resource.id"},
                ),
                actions=[
                    RunDeployment(
                        source="selected",
                        deployment_id=ids[runbook.name],
                        parameters={
                            "request": "{{ event.payload.request }}",
                            "operator": f"automation:{name}",
                            "reason": "{{ event.payload.reason }}",
                            "alert": "{{ event.payload.get('alert') }}",
                            "dry_run": False,
                            "require_approval": True,
                        },
                    )
                ],
            )
        )
    if webhook_block is not None:
        automations.append(
            Automation(
                name=PLAN_NOTIFIES,
                description="A plan that waits for approval is sent to the approvers' webhook.",
                trigger=_on(PLAN_EVENT),
                actions=[
                    SendNotification(
                        block_document_id=webhook_block,
                        subject="Approval needed: {{ event.payload.runbook }} "
                        "{{ event.payload.target }}",
                        body="{{ event.payload.text }}",
                    )
                ],
            )
        )
    return automations


async def webhook_block(url: str) -> UUID:
    """The Custom Webhook notification block that posts approvals to ``url`` (made or updated)."""
    block = CustomWebhookNotificationBlock(
        name=WEBHOOK_BLOCK,
        url=url,
        json_data={"subject": "{{subject}}", "text": "{{body}}"},
        allow_private_urls=True,  # the operator's own URL: an internal chat bridge is usual
    )
    block_id: UUID = await block.asave(WEBHOOK_BLOCK, overwrite=True)
    return block_id


async def apply() -> list[str]:
    """Create (or replace) the automations; returns their names."""
    url = os.environ.get("RECOVERY_APPROVAL_WEBHOOK_URL")
    block = await webhook_block(url) if url else None
    async with get_client() as client:
        ids = {
            r.name: (await client.read_deployment_by_name(r.deployment_name)).id for r in RUNBOOKS
        }
        existing = {a.name: a.id for a in await client.read_automations()}
        names = []
        for automation in definitions(ids, block):
            if automation.name in existing:
                await client.delete_automation(existing[automation.name])
            await automation.acreate()
            names.append(automation.name)
    return names
