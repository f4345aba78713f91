"""The CLI's local mode, for break-glass and development: no ``DALP_API_URL``, so the runbook's
flow runs in this process, with Prefect's own client (``PREFECT_API_URL``, or Prefect's temporary
server) and the audit database (``RECOVERY_DATABASE_URL``) of this machine.

Its audit rows name the OS user, with the role ``local-break-glass``: who ran the command on
this machine, not an API key's holder.
"""

from __future__ import annotations

import asyncio
import getpass
from typing import Any

from restate_recovery.audit import Attempt, arguments_of, check_reason, refused, stored_reason
from restate_recovery.cli.remote import Answer
from restate_recovery.errors import InvalidRequestError, OperatorError
from restate_recovery.runbooks import Runbook
from restate_recovery.schemas import parse_request

ROLE = "local-break-glass"
# How long the CLI waits for its doctor run to be recorded (a temporary Prefect server included).
RECORD_TIMEOUT_SECONDS = 600.0


def attempt(runbook: Runbook | str, arguments: dict[str, Any], reason: str | None) -> Attempt:
    return Attempt(
        actor=getpass.getuser(),
        role=ROLE,
        route=runbook if isinstance(runbook, str) else runbook.name,
        arguments=arguments,
        reason=stored_reason(reason),
    )


def explain_here(body: dict[str, Any], *, reason: str | None) -> Answer:
    """The read-only explain, against this machine's RESTATE_ADMIN_URL, audited."""
    return asyncio.run(_explain(body, reason=reason))


async def _explain(body: dict[str, Any], *, reason: str | None) -> Answer:
    from restate_recovery.audit import audited
    from restate_recovery.explain import explain_with_settings
    from restate_recovery.schemas import ExplainRequest

    try:
        check_reason(reason, field="--reason")
        request = parse_request(ExplainRequest, body)
    except InvalidRequestError as exc:
        await refused(attempt("explain", {"invalidBody": True}, reason), exc)
        return Answer(ok=False, body=exc.body())
    try:
        async with audited(attempt("explain", request.to_json(), reason)):
            explanation = await explain_with_settings(request)
    except OperatorError as exc:
        return Answer(ok=False, body=exc.body())
    return Answer(ok=True, body=explanation.to_json())


async def refused_answer(
    runbook: Runbook, arguments: dict[str, Any], reason: str | None, error: OperatorError
) -> Answer:
    """An audited refusal before anything ran."""
    await refused(attempt(runbook, arguments, reason), error)
    return Answer(ok=False, body=error.body())


def run_write(
    runbook: Runbook, body: dict[str, Any], *, reason: str | None, dry_run: bool
) -> Answer:
    """Validate (an invalid body is an audited refusal), run the flow here, audited."""
    return asyncio.run(_run_write(runbook, body, reason=reason, dry_run=dry_run))


async def _run_write(
    runbook: Runbook, body: dict[str, Any], *, reason: str | None, dry_run: bool
) -> Answer:
    from restate_recovery.execution import run_runbook

    try:
        check_reason(reason, field="--reason")
        request = parse_request(runbook.request, body)
    except InvalidRequestError as exc:
        return await refused_answer(runbook, {"invalidBody": True}, reason, exc)
    try:
        result = await run_runbook(
            runbook,
            request,
            attempt(runbook, arguments_of(request, dry_run=dry_run), reason),
            dry_run=dry_run,
        )
    except OperatorError as exc:
        return Answer(ok=False, body=exc.body())
    return Answer(ok=True, body=result)


async def answer_doctor(runbook: Runbook, *, reason: str | None, shown: Any) -> Answer:
    """Probe and hand the answer to ``shown`` at once, then record it as a ``restate-doctor``
    flow run (as the operator API does) before returning. Prefect is imported only for the
    record, after the answer is shown."""
    from restate_recovery.execution import DoctorAnswers

    try:
        check_reason(reason, field="--reason")
    except InvalidRequestError as exc:
        answer = await refused_answer(runbook, {}, reason, exc)
        shown(answer)
        return answer
    answers = DoctorAnswers(source="CLI", max_pending=1)
    try:
        try:
            readout = await answers.answer(attempt(runbook, {}, reason))
            answer = Answer(ok=True, body=readout.to_json())
        except OperatorError as exc:
            answer = Answer(ok=False, body=exc.body())
        shown(answer)
        await answers.drain(timeout=RECORD_TIMEOUT_SECONDS)
    finally:
        await answers.aclose()
    return answer
