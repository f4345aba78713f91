"""The sample durable workflow service the demo and the tests run against.

Served by hypercorn (``hypercorn tests.support.sample_service:app``). Each run of
``IdentityRecoveryWorkflow`` takes ``{"mode": ...}``:

- ``succeed``: returns what it found in state before it wrote its own marker (``None`` on a blank key);
- ``fail``: writes a marker to state, then fails terminally;
- ``sleep``: writes a marker, sleeps ``seconds`` (stays active), then succeeds;
- ``retry``: writes a marker, then raises a retryable error on every attempt (stays ``backing-off``).

``FlakyWorkflow`` fails retryably and pauses after two attempts, for the ``paused`` status; a
service started with ``SAMPLE_SERVICE_FIXED=1`` is the fixed version (its runs succeed), one
with ``SAMPLE_SERVICE_ONLY=<name>`` serves only that service.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import restate

MARKER = "attempt-marker"

workflow = restate.Workflow("IdentityRecoveryWorkflow")
flaky = restate.Workflow(
    "FlakyWorkflow",
    invocation_retry_policy=restate.InvocationRetryPolicy(
        initial_interval=timedelta(milliseconds=50),
        max_attempts=2,
        on_max_attempts="pause",
    ),
)


class RetryableFailure(Exception):
    """An error Restate retries (anything that is not a TerminalError)."""


@workflow.main()
async def run(ctx: restate.WorkflowContext, request: dict[str, Any]) -> dict[str, Any]:
    mode = request.get("mode", "succeed")
    found = await ctx.get(MARKER, type_hint=str)
    ctx.set(MARKER, mode)
    if mode == "fail":
        raise restate.TerminalError("upstream provider returned a terminal failure")
    if mode == "sleep":
        await ctx.sleep(timedelta(seconds=float(request.get("seconds", 600))))
    if mode == "retry":
        raise RetryableFailure("upstream provider is still unavailable")
    return {"mode": mode, "markerFoundAtStart": found}


@workflow.handler()
async def status(ctx: restate.WorkflowSharedContext) -> str | None:
    value = await ctx.get(MARKER, type_hint=str)
    return value


@flaky.main(name="run")
async def flaky_run(ctx: restate.WorkflowContext, request: dict[str, Any]) -> str:
    if request.get("mode") != "never-fail" and not os.environ.get("SAMPLE_SERVICE_FIXED"):
        raise RetryableFailure("flaky dependency refused the call")
    return "done"


ONLY = os.environ.get("SAMPLE_SERVICE_ONLY")
app = restate.app(services=[s for s in (workflow, flaky) if ONLY in (None, s.name)])
