"""Alertmanager webhook payloads turned into Prefect events (Prefect OSS has no inbound webhooks).

Each alert becomes one event ``restate.alert.<status>`` with resource id
``alertmanager.alert.<fingerprint>``. Its id is a UUID5 of (fingerprint, startsAt, status), so a
re-delivered alert is the same event, which Prefect stores once. The events go out through
Prefect's own events client (its URL, API key or auth string, TLS settings), each confirmed by
the server before the next.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from restate_recovery.errors import PrefectUnavailableError
from restate_recovery.redaction import redact_arguments

if TYPE_CHECKING:
    from prefect.events import Event

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


def alert_events(webhook: AlertmanagerWebhook) -> list[Event]:
    from prefect.events import Event

    events = []
    for alert in webhook.alerts:
        fingerprint = fingerprint_of(alert)
        event_id = uuid.uuid5(NAMESPACE, f"{fingerprint}|{alert.startsAt}|{alert.status}")
        events.append(
            Event(
                id=event_id,
                occurred=datetime.now(UTC),
                event=f"restate.alert.{alert.status}",
                resource={
                    "prefect.resource.id": f"alertmanager.alert.{fingerprint}",
                    "prefect.resource.name": alert.labels.get("alertname", fingerprint),
                },
                payload=redact_arguments(
                    {
                        "labels": alert.labels,
                        "annotations": alert.annotations,
                        "startsAt": alert.startsAt,
                        "receiver": webhook.receiver,
                        # what the doctor run it starts takes as its ``alert`` (AlertContext)
                        "alert": {
                            "alertname": alert.labels.get("alertname", ""),
                            "summary": alert.annotations.get("summary", ""),
                            "labels": alert.labels,
                            "startsAt": alert.startsAt,
                            "fingerprint": fingerprint,
                            "eventId": str(event_id),
                        },
                    }
                ),
            )
        )
    return events


async def emit_events(events: list[Event]) -> None:
    """Send the events to Prefect, each confirmed; ``PrefectUnavailableError`` if it did not take
    them."""
    from prefect.events.clients import get_events_client

    try:
        async with get_events_client(checkpoint_every=1, reconnection_attempts=2) as client:
            for event in events:
                await client.emit(event)
    except Exception as exc:
        raise PrefectUnavailableError(
            f"Prefect did not take the alert events ({type(exc).__name__}): "
            "check PREFECT_API_URL and Prefect's health, then let Alertmanager re-deliver"
        ) from exc
