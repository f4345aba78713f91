"""explain (read-only): the story of one invocation, or of every invocation of a workflow key,
and the runbook that fits it, with its exact parameters.

For each invocation: target, status, retries, last failure and its error code, pinned
deployment, created and modified times, how it completed, and the journal's failure events
(``TransientError`` and ``Paused``, newest last, their messages redacted and cut). The suggestion
(``suggest``, pure) reads the key's *run* invocations as recover-stuck-workflow does: a paused one
-> ``resume-paused-invocations`` on ``latest``; another active one -> none (wait for it, or handle
it); a success -> none (already succeeded); a terminal failure of a workflow ->
``recover-stuck-workflow``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from restate_recovery.client import RestateAdminClient
from restate_recovery.errors import (
    AdminUnreachableError,
    InvalidRequestError,
    InvocationNotFoundError,
    QueryFailedError,
    RestateRejected,
    RestateUnreachable,
)
from restate_recovery.models import ApiModel
from restate_recovery.redaction import redact_text
from restate_recovery.schemas import ExplainRequest
from restate_recovery.sql import invocation_id_literal, name_literal

MAX_MESSAGE = 500
MAX_EVENTS = 20

COLUMNS = (
    "id, target, target_service_name, target_service_key, target_handler_name, "
    "target_service_ty, status, retry_count, last_failure, last_failure_error_code, "
    "pinned_deployment_id, created_at, modified_at, completion_result, completion_failure"
)


class JournalEvent(ApiModel):
    appended_at: str | None = None
    event_type: str
    error_code: str | None = None
    message: str | None = None


class InvocationStory(ApiModel):
    id: str
    target: str | None = None
    service_name: str | None = None
    service_key: str | None = None
    handler: str | None = None
    service_type: str | None = None
    status: str
    retry_count: int | None = None
    last_failure: str | None = None
    last_failure_error_code: str | None = None
    pinned_deployment_id: str | None = None
    created_at: str | None = None
    modified_at: str | None = None
    completion_result: str | None = None
    completion_failure: str | None = None
    journal_failures: list[JournalEvent] = Field(default_factory=list)


class Suggestion(ApiModel):
    runbook: str | None = None
    request: dict[str, Any] | None = None
    why: str


class Explanation(ApiModel):
    invocations: list[InvocationStory] = Field(default_factory=list)
    suggestion: Suggestion


def _cut(text: object) -> str | None:
    if text is None:
        return None
    first = redact_text(str(text)).strip()
    return first if len(first) <= MAX_MESSAGE else first[: MAX_MESSAGE - 1] + "…"


def invocations_sql(request: ExplainRequest) -> str:
    if request.invocation_id is not None:
        where = f"id = {invocation_id_literal(request.invocation_id)}"
    else:
        assert request.service_name is not None and request.service_key is not None
        where = (
            f"target_service_name = {name_literal(request.service_name)} "
            f"AND target_service_key = {name_literal(request.service_key)}"
        )
    return f"SELECT {COLUMNS} FROM sys_invocation WHERE {where} ORDER BY created_at"


def events_sql(invocation_ids: list[str]) -> str:
    ids = ", ".join(invocation_id_literal(i) for i in invocation_ids)
    return (
        "SELECT id, appended_at, event_type, event_json FROM sys_journal_events "
        f"WHERE id IN ({ids}) AND event_type IN ('TransientError', 'Paused') "
        "ORDER BY appended_at"
    )


def journal_event(row: dict[str, Any]) -> JournalEvent:
    """A failure event of the journal, from its JSON (``Paused`` carries its ``last_failure``)."""
    try:
        event = json.loads(str(row.get("event_json") or "{}"))
    except ValueError:
        event = {}
    failure = event.get("last_failure", event) if isinstance(event, dict) else {}
    failure = failure if isinstance(failure, dict) else {}
    code = failure.get("restate_doc_error_code") or failure.get("error_code")
    return JournalEvent(
        appended_at=str(row.get("appended_at") or "") or None,
        event_type=str(row.get("event_type")),
        error_code=str(code) if code is not None else None,
        message=_cut(failure.get("error_message")),
    )


def story(row: dict[str, Any], events: list[dict[str, Any]]) -> InvocationStory:
    last = str(row["last_failure"]).splitlines()[0] if row.get("last_failure") else None
    retries = row.get("retry_count")
    return InvocationStory(
        id=str(row["id"]),
        target=row.get("target"),
        service_name=row.get("target_service_name"),
        service_key=row.get("target_service_key"),
        handler=row.get("target_handler_name"),
        service_type=row.get("target_service_ty"),
        status=str(row.get("status")),
        retry_count=retries if isinstance(retries, int) else None,
        last_failure=_cut(last),
        last_failure_error_code=row.get("last_failure_error_code"),
        pinned_deployment_id=row.get("pinned_deployment_id"),
        created_at=row.get("created_at"),
        modified_at=row.get("modified_at"),
        completion_result=row.get("completion_result"),
        completion_failure=_cut(row.get("completion_failure")),
        journal_failures=[journal_event(e) for e in events][-MAX_EVENTS:],
    )


def suggest(stories: list[InvocationStory]) -> Suggestion:
    """The runbook that fits, read from the run invocations as the runbooks read them (pure)."""
    runs = [s for s in stories if s.service_type == "workflow" and s.handler == "run"] or stories
    paused = [s for s in runs if s.status == "paused"]
    if paused:
        return Suggestion(
            runbook="resume-paused-invocations",
            request={"invocationId": paused[-1].id, "deployment": "latest"},
            why=f"{paused[-1].id} is paused (its retries used up); once the cause is fixed, "
            "resume it (on the latest deployment, or keep)",
        )
    active = [s for s in runs if s.status != "completed"]
    if active:
        return Suggestion(
            why=f"{', '.join(s.id for s in active)} still active ({active[-1].status}): wait for "
            "it, or handle it with Restate's own tools; recovery would be refused"
        )
    if any(s.completion_result == "success" for s in runs):
        return Suggestion(why="the workflow already completed successfully: nothing to recover")
    failed = [s for s in runs if s.completion_result == "failure"]
    if failed and failed[-1].service_type == "workflow" and failed[-1].service_key:
        last = failed[-1]
        return Suggestion(
            runbook="recover-stuck-workflow",
            request={"serviceName": last.service_name, "serviceKey": last.service_key},
            why=f"{last.id} failed terminally: recover the key so it runs again from blank state",
        )
    return Suggestion(why="no runbook fits")


async def explain(
    client: RestateAdminClient, request: ExplainRequest, *, timeout: float
) -> Explanation:
    try:
        rows = await client.query(invocations_sql(request), timeout=timeout)
        ids = [str(r["id"]) for r in rows if "id" in r]
        events = await client.query(events_sql(ids), timeout=timeout) if ids else []
    except RestateUnreachable as exc:
        raise AdminUnreachableError(f"Restate admin API unreachable: {exc}") from exc
    except RestateRejected as exc:
        if request.invocation_id is not None and "non valid invocation id" in exc.message:
            raise InvalidRequestError(
                f"{request.invocation_id} is not a Restate invocation id",
                [{"field": "invocationId", "message": "not a Restate invocation id"}],
            ) from exc
        raise QueryFailedError(f"Reading the invocations failed: {exc}") from exc
    if not rows:
        raise InvocationNotFoundError(f"No invocation of {request.target} in Restate")
    by_id: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_id.setdefault(str(event.get("id")), []).append(event)
    stories = [story(r, by_id.get(str(r["id"]), [])) for r in rows]
    return Explanation(invocations=stories, suggestion=suggest(stories))


async def explain_with_settings(request: ExplainRequest) -> Explanation:
    """``explain`` against the configured admin API (``RESTATE_ADMIN_URL``)."""
    from restate_recovery.doctor.probes import choose_admin, resolve_endpoints
    from restate_recovery.settings import get_settings

    settings = get_settings()
    endpoints = await choose_admin(resolve_endpoints(settings))
    timeout = settings.recovery_probe_timeout_seconds
    async with RestateAdminClient.connect(endpoints.admin_url, timeout=timeout) as client:
        return await explain(client, request, timeout=timeout)
