"""Alertmanager webhook payloads turned into Prefect events (Prefect OSS has no inbound webhooks).

Each alert becomes one event ``restate.alert.<status>`` with resource id
``alertmanager.alert.<fingerprint>``. Its id is a UUID5 of (fingerprint, startsAt, status), so a
re-delivered alert is the same event, which Prefect stores once.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from restate_recovery.redaction import redact_arguments

NAMESPACE = uuid.UUID("5d6f1a52-3f8e-4b8e-9a38-2f0c1d8f7e11")


class Alert(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(default_factory=dict, max_length=100)
    annotations: dict[str, str] = Field(default_factory=dict, max_length=100)
    startsAt: str = Field(default="", max_length=64)  # noqa: N815 - Alertmanager's name
    endsAt: str | None = Field(default=None, max_length=64)  # noqa: N815
    fingerprint: str | None = Field(default=None, max_length=128)


class AlertmanagerWebhook(BaseModel):
    """Alertmanager's webhook body (version 4); fields we do not use are ignored."""

    model_config = ConfigDict(extra="ignore")

    version: str | None = None
    status: Literal["firing", "resolved"] | None = None
    receiver: str | None = None
    alerts: list[Alert] = Field(max_length=1000)


def fingerprint_of(alert: Alert) -> str:
    if alert.fingerprint:
        return alert.fingerprint
    canonical = json.dumps(alert.labels, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def alert_events(webhook: AlertmanagerWebhook) -> list[dict[str, Any]]:
    events = []
    for alert in webhook.alerts:
        fingerprint = fingerprint_of(alert)
        event_id = uuid.uuid5(NAMESPACE, f"{fingerprint}|{alert.startsAt}|{alert.status}")
        events.append(
            {
                "id": str(event_id),
                "occurred": datetime.now(UTC).isoformat(),
                "event": f"restate.alert.{alert.status}",
                "resource": {
                    "prefect.resource.id": f"alertmanager.alert.{fingerprint}",
                    "prefect.resource.name": alert.labels.get("alertname", fingerprint),
                },
                "payload": redact_arguments(
                    {
                        "labels": alert.labels,
                        "annotations": alert.annotations,
                        "startsAt": alert.startsAt,
                        "receiver": webhook.receiver,
                    }
                ),
            }
        )
    return events


async def send_events(api_url: str, events: list[dict[str, Any]], *, timeout: float = 10.0) -> None:
    """``POST {PREFECT_API_URL}/events`` with the list (Prefect answers 204)."""
    async with httpx.AsyncClient(timeout=timeout) as http:
        response = await http.post(f"{api_url.rstrip('/')}/events", json=events)
        response.raise_for_status()
