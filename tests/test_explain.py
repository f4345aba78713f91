"""explain against the real restate-server: each kind of story, and the runbook it names, whose
parameters then work as they are."""

from __future__ import annotations

import time
import uuid

import pytest

from restate_recovery.errors import InvalidRequestError, InvocationNotFoundError
from restate_recovery.explain import explain_with_settings
from restate_recovery.schemas import ExplainRequest, parse_request
from tests.conftest import RestateStack
from tests.support.local_stack import PrefectServer, submit_workflow, wait_for_status
from tests.support.runbooks import run_flow

pytestmark = [pytest.mark.restate]

WORKFLOW = "IdentityRecoveryWorkflow"


def key(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


async def test_a_terminal_failure_names_recover_with_its_exact_parameters(
    prefect_server: PrefectServer, restate_env: RestateStack
) -> None:
    failed = key("explained")
    run_id = submit_workflow(restate_env.ingress_url, failed, "fail")
    wait_for_status(restate_env.admin_url, run_id, "completed")

    told = await explain_with_settings(ExplainRequest(service_name=WORKFLOW, service_key=failed))

    (run,) = told.invocations
    assert (run.id, run.status, run.completion_result) == (run_id, "completed", "failure")
    assert "upstream provider returned a terminal failure" in (run.completion_failure or "")
    assert run.pinned_deployment_id == restate_env.deployment_id and run.created_at
    assert told.suggestion.runbook == "recover-stuck-workflow"
    assert told.suggestion.request == {"serviceName": WORKFLOW, "serviceKey": failed}
    assert await run_flow("recover-stuck-workflow", service_name=WORKFLOW, service_key=failed) == {
        "acknowledged": True
    }  # the parameters as given work


async def test_a_paused_run_shows_its_failures_and_names_resume(
    restate_env: RestateStack,
) -> None:
    paused = submit_workflow(restate_env.ingress_url, key("paused"), "x", workflow="FlakyWorkflow")
    wait_for_status(restate_env.admin_url, paused, "paused")

    told = await explain_with_settings(ExplainRequest(invocation_id=paused))

    (story,) = told.invocations
    kinds = [e.event_type for e in story.journal_failures]
    assert "TransientError" in kinds and kinds[-1] == "Paused"
    assert all(
        "flaky dependency refused the call" in (e.message or "") for e in story.journal_failures
    )
    assert story.journal_failures[0].error_code == "RT0007"
    assert told.suggestion.runbook == "resume-paused-invocations"
    assert told.suggestion.request == {"invocationId": paused, "deployment": "latest"}


async def test_an_active_or_succeeded_key_names_no_runbook(restate_env: RestateStack) -> None:
    retrying, done = key("retrying"), key("done")
    active = submit_workflow(restate_env.ingress_url, retrying, "retry")
    wait_for_status(restate_env.admin_url, active, "backing-off")
    wait_for_status(
        restate_env.admin_url,
        submit_workflow(restate_env.ingress_url, done, "succeed"),
        "completed",
    )
    deadline = time.monotonic() + 30
    while not (story := (await explain_with_settings(ExplainRequest(invocation_id=active))))\
            .invocations[0].retry_count:  # fmt: skip
        assert time.monotonic() < deadline
        time.sleep(0.2)

    succeeded = await explain_with_settings(ExplainRequest(service_name=WORKFLOW, service_key=done))

    assert story.suggestion.runbook is None and "still active (backing-off)" in story.suggestion.why
    assert story.invocations[0].last_failure and "upstream provider is still unavailable" in (
        story.invocations[0].last_failure
    )
    assert succeeded.suggestion.runbook is None
    assert "already completed successfully" in succeeded.suggestion.why


async def test_unknown_and_malformed_selections_are_refused(restate_env: RestateStack) -> None:
    with pytest.raises(InvocationNotFoundError):
        await explain_with_settings(ExplainRequest(service_name=WORKFLOW, service_key=key("none")))
    with pytest.raises(InvalidRequestError):
        await explain_with_settings(ExplainRequest(invocation_id="inv_1nothere"))
    for body in ({}, {"serviceName": WORKFLOW}, {"invocationId": "inv_1a", "serviceName": "S",
                 "serviceKey": "k"}):  # fmt: skip
        with pytest.raises(InvalidRequestError):
            parse_request(ExplainRequest, body)
