"""recover-stuck-workflow against the real restate-server and the real SDK workflow service."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterName,
)

from restate_recovery.client import RestateAdminClient
from restate_recovery.errors import (
    PlanChangedError,
    RetryBlockedError,
    StateWriteUnsafeError,
    TimerPendingError,
)
from restate_recovery.models import VersionInfo
from restate_recovery.runbooks import bulk
from restate_recovery.runbooks import recover as recover_runbook
from restate_recovery.schemas import RecoverStuckWorkflowRequest, RecoverStuckWorkflowsRequest
from restate_recovery.settings import get_settings
from tests.conftest import RestateStack
from tests.support.fault_proxy import Fault, FaultProxy, running
from tests.support.helpers import completed_at, query, sleep_of
from tests.support.local_stack import (
    PrefectServer,
    RestateServer,
    SampleService,
    submit_workflow,
    wait_for_status,
)
from tests.support.runbooks import run_flow

pytestmark = [pytest.mark.restate, pytest.mark.prefect]

WORKFLOW = "IdentityRecoveryWorkflow"


def invocations_of(admin_url: str, key: str, service: str = WORKFLOW) -> list[dict[str, Any]]:
    return query(
        admin_url,
        "SELECT id, status, completion_result, target_handler_name, created_at FROM sys_invocation "
        f"WHERE target_service_name = '{service}' AND target_service_key = '{key}'",
    )


def state_of(admin_url: str, key: str, service: str = WORKFLOW) -> dict[str, str]:
    rows = query(
        admin_url,
        f"SELECT key, value_utf8 FROM state WHERE service_name = '{service}' "
        f"AND service_key = '{key}'",
    )
    return {r["key"]: r.get("value_utf8", "") for r in rows}


def new_key(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def failed_key(stack: RestateStack, prefix: str = "failed") -> tuple[str, str]:
    key = new_key(prefix)
    invocation_id = submit_workflow(stack.ingress_url, key, "fail")
    wait_for_status(stack.admin_url, invocation_id, "completed")
    return key, invocation_id


async def recover(key: str, **kwargs: Any) -> dict[str, Any]:
    result: dict[str, Any] = await run_flow(
        "recover-stuck-workflow", service_name=WORKFLOW, service_key=key, **kwargs
    )
    return result


async def test_terminal_failure_is_recovered_and_the_next_run_starts_blank(
    prefect_server: PrefectServer, restate_env: RestateStack
) -> None:
    """Restate issue 4085's path: kill -> purge -> resubmit of a workflow key."""
    key, invocation_id = failed_key(restate_env)
    assert state_of(restate_env.admin_url, key) != {}
    # before recovery, the key cannot run again: Restate says it was already invoked
    blocked = httpx.post(
        f"{restate_env.ingress_url}/{WORKFLOW}/{key}/run", json={"mode": "succeed"}, timeout=10
    )
    assert blocked.status_code == 409

    assert await recover(key) == {"acknowledged": True}

    assert invocations_of(restate_env.admin_url, key) == []
    assert state_of(restate_env.admin_url, key) == {}
    rerun = httpx.post(
        f"{restate_env.ingress_url}/{WORKFLOW}/{key}/run", json={"mode": "succeed"}, timeout=30
    )
    assert rerun.status_code == 200, rerun.text
    assert rerun.json() == {"mode": "succeed", "markerFoundAtStart": None}


async def test_a_killed_run_counts_as_terminal_failed(
    prefect_server: PrefectServer, restate_env: RestateStack
) -> None:
    key = new_key("killed")  # its timer (5 s) is waited for before the purge (#5425)
    invocation_id = submit_workflow(restate_env.ingress_url, key, "sleep", seconds=5)
    wait_for_status(restate_env.admin_url, invocation_id, "running")
    httpx.patch(f"{restate_env.admin_url}/invocations/{invocation_id}/kill", timeout=10)
    wait_for_status(restate_env.admin_url, invocation_id, "completed")

    assert await recover(key) == {"acknowledged": True}
    assert invocations_of(restate_env.admin_url, key) == []


@pytest.mark.parametrize(
    ("mode", "workflow", "status"),
    [
        ("sleep", WORKFLOW, "running"),
        ("retry", WORKFLOW, "backing-off"),
        ("x", "FlakyWorkflow", "paused"),
    ],
    ids=["sleeping", "backing-off", "paused"],
)
async def test_an_active_run_blocks_recovery_and_nothing_changes(
    prefect_server: PrefectServer,
    restate_env: RestateStack,
    mode: str,
    workflow: str,
    status: str,
) -> None:
    key = new_key(status.replace("-", "_"))
    invocation_id = submit_workflow(
        restate_env.ingress_url, key, mode, workflow=workflow, seconds=600
    )
    wait_for_status(restate_env.admin_url, invocation_id, status)
    state_before = state_of(restate_env.admin_url, key, workflow)

    with pytest.raises(RetryBlockedError) as info:
        await run_flow("recover-stuck-workflow", service_name=workflow, service_key=key)

    assert info.value.reason == "active-invocation"
    assert info.value.invocation_ids == [invocation_id]
    assert info.value.body()["code"] == "RESTATE_WORKFLOW_RETRY_BLOCKED"
    rows = invocations_of(restate_env.admin_url, key, workflow)
    assert [r["id"] for r in rows if r["target_handler_name"] == "run"] == [invocation_id]
    assert all(r["status"] != "completed" for r in rows)
    assert state_of(restate_env.admin_url, key, workflow) == state_before


async def test_a_succeeded_run_blocks_recovery(
    prefect_server: PrefectServer, restate_env: RestateStack
) -> None:
    key = new_key("done")
    invocation_id = submit_workflow(restate_env.ingress_url, key, "succeed")
    wait_for_status(restate_env.admin_url, invocation_id, "completed")

    with pytest.raises(RetryBlockedError) as info:
        await recover(key)

    assert (info.value.reason, info.value.invocation_ids) == ("already-succeeded", [invocation_id])
    assert [r["id"] for r in invocations_of(restate_env.admin_url, key)] == [invocation_id]
    assert state_of(restate_env.admin_url, key) == {"attempt-marker": '"succeed"'}


async def test_shared_handler_calls_are_not_run_invocations(
    prefect_server: PrefectServer, restate_env: RestateStack
) -> None:
    """A status call (a shared handler) of a failed key is a completed, successful invocation of
    the same key: it does not make the key 'already-succeeded', and only the run is recovered."""
    key, run_id = failed_key(restate_env, "shared")
    status = httpx.post(f"{restate_env.ingress_url}/{WORKFLOW}/{key}/status", timeout=10)
    assert status.status_code == 200
    before = {r["id"]: r for r in invocations_of(restate_env.admin_url, key)}
    (shared_id,) = [i for i, r in before.items() if r["target_handler_name"] == "status"]
    assert before[shared_id]["completion_result"] == "success"

    assert await recover(key) == {"acknowledged": True}

    after = {r["id"] for r in invocations_of(restate_env.admin_url, key)}
    assert run_id not in after  # the failed run was purged
    assert state_of(restate_env.admin_url, key) == {}
    rerun = httpx.post(
        f"{restate_env.ingress_url}/{WORKFLOW}/{key}/run", json={"mode": "succeed"}, timeout=30
    )
    assert rerun.status_code == 200 and rerun.json()["markerFoundAtStart"] is None


async def test_a_run_resubmitted_right_after_the_purge_keeps_its_state(
    prefect_server: PrefectServer, restate_env: RestateStack, settings_env: pytest.MonkeyPatch
) -> None:
    """The purge frees the key: a resubmission landing the moment Restate answered it (a hook in
    a proxy, before the recovery goes on) starts a new run. Nothing writes the key's state after
    the purge, so that run keeps what it wrote."""
    key, invocation_id = failed_key(restate_env, "race")
    resubmitted: list[str] = []

    def resubmit() -> None:
        new_run = submit_workflow(restate_env.ingress_url, key, "sleep", seconds=600)
        deadline = time.monotonic() + 30
        while state_of(restate_env.admin_url, key) != {"attempt-marker": '"sleep"'}:
            assert time.monotonic() < deadline, "the resubmitted run never wrote its marker"
            time.sleep(0.05)
        resubmitted.append(new_run)

    purge = Fault(after=resubmit, times=1)
    proxy = FaultProxy(
        restate_env.admin_url, rules={("PATCH", f"/invocations/{invocation_id}/purge"): purge}
    )
    with running(proxy):
        settings_env.setenv("RESTATE_ADMIN_URL", proxy.url)
        get_settings.cache_clear()
        assert await recover(key) == {"acknowledged": True}

    assert resubmitted, "the purge was never made"
    await asyncio.sleep(2)  # a state write queued behind the new run would have landed by now
    assert state_of(restate_env.admin_url, key) == {"attempt-marker": '"sleep"'}
    statuses = {r["id"]: r["status"] for r in invocations_of(restate_env.admin_url, key)}
    assert statuses[resubmitted[0]] != "completed"  # the new run goes on
    httpx.patch(f"{restate_env.admin_url}/invocations/{resubmitted[0]}/kill", timeout=10)


async def test_unknown_service_is_query_failed_and_touches_nothing(
    prefect_server: PrefectServer, restate_env: RestateStack, settings_env: pytest.MonkeyPatch
) -> None:
    """A name Restate does not know refuses before any write: the admin API sees no kill, purge
    or state write, and a real workflow's failed run under the same key keeps its run and state."""
    key, invocation_id = failed_key(restate_env, "unknown")
    proxy = FaultProxy(restate_env.admin_url)
    with running(proxy):
        settings_env.setenv("RESTATE_ADMIN_URL", proxy.url)
        get_settings.cache_clear()
        with pytest.raises(RetryBlockedError) as info:
            await run_flow("recover-stuck-workflow", service_name="NoSuchWorkflow", service_key=key)

    assert info.value.reason == "query-failed"
    assert "NoSuchWorkflow" in info.value.message
    writes = [r for r in proxy.seen if not r.startswith(("GET ", "POST /query"))]
    assert writes == []
    assert [r["id"] for r in invocations_of(restate_env.admin_url, key)] == [invocation_id]
    assert state_of(restate_env.admin_url, key) == {"attempt-marker": '"fail"'}


@pytest.mark.parametrize(
    ("name", "key"),
    [("Bad Name", "k"), (WORKFLOW, "k'; DROP"), (WORKFLOW, "a/b"), ("", "k"), (WORKFLOW, "")],
)
def test_bad_names_are_rejected_by_the_request_model(name: str, key: str) -> None:
    from restate_recovery.errors import InvalidRequestError
    from restate_recovery.schemas import RecoverStuckWorkflowRequest, parse_request

    with pytest.raises(InvalidRequestError) as info:
        parse_request(RecoverStuckWorkflowRequest, {"serviceName": name, "serviceKey": key})
    assert info.value.http_status == 400
    wrong = {"serviceName"} if name != WORKFLOW else {"serviceKey"}
    assert {e["field"] for e in info.value.errors} == wrong


async def test_dry_run_plans_and_changes_nothing(
    prefect_server: PrefectServer, restate_env: RestateStack
) -> None:
    key, invocation_id = failed_key(restate_env, "dry")

    result = await recover(key, dry_run=True)

    assert result["acknowledged"] is False and result["dryRun"] is True
    created = invocations_of(restate_env.admin_url, key)[0]["created_at"]
    assert [(s["action"], s["target"]) for s in result["plan"]] == [
        ("clear-state", f"{WORKFLOW}/{key}"),  # while the failed run still holds the key
        ("purge", invocation_id),  # no kill: a terminal failure is completed already
    ]
    assert created in result["plan"][1]["detail"]  # which run: every run of a key has its id
    assert [r["id"] for r in invocations_of(restate_env.admin_url, key)] == [invocation_id]
    assert state_of(restate_env.admin_url, key) != {}


async def test_recovery_converges_when_run_again(
    prefect_server: PrefectServer, restate_env: RestateStack
) -> None:
    key, _ = failed_key(restate_env, "again")
    assert await recover(key) == {"acknowledged": True}
    assert await recover(key) == {"acknowledged": True}  # nothing left to do
    assert state_of(restate_env.admin_url, key) == {}


async def test_an_audited_runs_tags_are_on_its_flow_run_only(
    prefect_server: PrefectServer, restate_env: RestateStack
) -> None:
    """Each tagged task run costs Prefect's server one more write (a concurrency-slot request
    its no-limits cache cannot spare for a tag new with every attempt): under load those were
    answered 503. The run is found by its tags; its task runs need none."""
    key, _ = failed_key(restate_env, "tags")
    await recover(key, dry_run=True)

    async with get_client() as client:
        (run,) = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=[f"recover-stuck-workflow/{WORKFLOW}/{key} (dry run)"])
            )
        )
        assert "restate-recovery:audited" in run.tags
        assert any(tag.startswith("audit:") for tag in run.tags), run.tags
        deadline = time.monotonic() + 30
        while (
            len(
                task_runs := await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
                )
            )
            < 2
        ):
            assert time.monotonic() < deadline, task_runs  # doctor-before, the plan
            await asyncio.sleep(0.25)
    assert [t.tags for t in task_runs] == [[] for _ in task_runs]


async def artifacts_of_runs_named(name: str) -> list[str]:
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )
        texts = []
        for run in runs:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            texts += [str(a.data) for a in artifacts if a.key == "incident-recover-stuck-workflow"]
        return texts


async def test_two_concurrent_recoveries_of_one_key_act_once(
    prefect_server: PrefectServer, restate_env: RestateStack
) -> None:
    key, invocation_id = failed_key(restate_env, "race")

    results = await asyncio.gather(recover(key), recover(key))

    assert list(results) == [{"acknowledged": True}, {"acknowledged": True}]
    records = await artifacts_of_runs_named(f"recover-stuck-workflow/{WORKFLOW}/{key}")
    assert len(records) == 2
    acted = [r for r in records if f"purged {invocation_id}" in r]
    idle = [r for r in records if "purged none" in r]
    assert (len(acted), len(idle)) == (1, 1), records
    assert state_of(restate_env.admin_url, key) == {}


async def test_incident_record_has_before_action_outcome_after(
    prefect_server: PrefectServer, restate_env: RestateStack
) -> None:
    key, invocation_id = failed_key(restate_env, "record")
    await recover(key)

    (record,) = await artifacts_of_runs_named(f"recover-stuck-workflow/{WORKFLOW}/{key}")
    assert "# Incident record: recover-stuck-workflow" in record
    assert "outcome: **acknowledged**" in record
    assert f'"serviceKey": "{key}"' in record
    assert "## Doctor before" in record and "## Doctor after" in record
    # the heading says there were failures, not "all ok", when components are ok but keys failed
    assert re.search(r"## Doctor before: components ok, \d+ recent failures?\n", record), record
    assert f"{WORKFLOW}/{key} is no longer among recent failures" in record
    assert invocation_id in record


def purge_and_resubmit(stack: RestateStack, key: str, invocation_id: str, mode: str) -> str:
    """Someone else (Restate's CLI, another tool) purges the failed run and submits the key again:
    the new run has the same id (a workflow run's id is derived from its key)."""
    purged = httpx.patch(f"{stack.admin_url}/invocations/{invocation_id}/purge", timeout=10)
    assert purged.status_code == 200, purged.text
    new_id = submit_workflow(stack.ingress_url, key, mode, seconds=600)
    assert new_id == invocation_id
    return new_id


async def test_a_run_resubmitted_after_the_plan_is_never_killed_nor_cleared(
    prefect_server: PrefectServer, restate_env: RestateStack
) -> None:
    """Planned (as a run waiting for approval does), then the key is purged and resubmitted by
    someone else: the new, running run has the planned run's id. The recovery refuses it as
    active and touches neither the run nor its state (a kill by id would have killed it)."""
    key, invocation_id = failed_key(restate_env, "replanned")
    request = RecoverStuckWorkflowRequest(service_name=WORKFLOW, service_key=key)
    async with RestateAdminClient.connect(restate_env.admin_url, timeout=10) as client:
        plan = await recover_runbook.plan_recovery(client, request, timeout=10)
        purge_and_resubmit(restate_env, key, invocation_id, "sleep")
        deadline = time.monotonic() + 30
        while state_of(restate_env.admin_url, key) != {"attempt-marker": '"sleep"'}:
            assert time.monotonic() < deadline, "the new run never wrote its marker"
            await asyncio.sleep(0.1)

        with pytest.raises(RetryBlockedError) as info:
            await recover_runbook.execute_recovery(client, plan, timeout=10)

    assert (info.value.reason, info.value.invocation_ids) == ("active-invocation", [invocation_id])
    (run,) = invocations_of(restate_env.admin_url, key)
    assert run["status"] in ("running", "suspended")  # alive, not killed
    assert state_of(restate_env.admin_url, key) == {"attempt-marker": '"sleep"'}
    httpx.patch(f"{restate_env.admin_url}/invocations/{invocation_id}/kill", timeout=10)


async def test_a_plan_that_changed_since_its_approval_is_refused_and_nothing_written(
    prefect_server: PrefectServer, restate_env: RestateStack
) -> None:
    """Approved, then the key failed again as a new run (same id, new creation time): that is
    not the plan the approver saw. ``RESTATE_RECOVERY_PLAN_CHANGED``; the new run and its state
    stay; the same holds for a plan made a moment ago (no approval) that changed under it."""
    key, invocation_id = failed_key(restate_env, "changed")
    request = RecoverStuckWorkflowRequest(service_name=WORKFLOW, service_key=key)
    async with RestateAdminClient.connect(restate_env.admin_url, timeout=10) as client:
        approved = (await recover_runbook.write(client, request, timeout=10, dry_run=True)).plan
        plan = await recover_runbook.plan_recovery(client, request, timeout=10)
        purge_and_resubmit(restate_env, key, invocation_id, "fail")
        wait_for_status(restate_env.admin_url, invocation_id, "completed")
        (again,) = invocations_of(restate_env.admin_url, key)

        with pytest.raises(PlanChangedError) as approval_changed:
            await recover_runbook.write(
                client, request, timeout=10, dry_run=False, approved=approved
            )
        with pytest.raises(PlanChangedError) as plan_changed:
            await recover_runbook.execute_recovery(client, plan, timeout=10)

    assert approval_changed.value.http_status == 409
    assert approval_changed.value.code == "RESTATE_RECOVERY_PLAN_CHANGED"
    assert again["created_at"] in approval_changed.value.message  # what it is now
    assert plan_changed.value.code == "RESTATE_RECOVERY_PLAN_CHANGED"
    assert invocations_of(restate_env.admin_url, key) == [again]  # not purged
    assert state_of(restate_env.admin_url, key) == {"attempt-marker": '"fail"'}
    assert await recover(key) == {"acknowledged": True}  # planned anew, it acts
    assert invocations_of(restate_env.admin_url, key) == []


async def test_an_approved_run_writes_only_the_plan_its_approver_saw(
    prefect_server: PrefectServer, restate_env: RestateStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow's own path: plan, approval (here given while the key fails again as a new run),
    then the write, which is handed the approved plan and refuses the changed one."""
    import tasks.runbook
    from restate_recovery.runbooks import RECOVER_STUCK_WORKFLOW
    from restate_recovery.runbooks.incident import Approval, now_iso

    key, invocation_id = failed_key(restate_env, "approved")

    async def approve_while_it_fails_again(**_: Any) -> Approval:
        purge_and_resubmit(restate_env, key, invocation_id, "fail")
        wait_for_status(restate_env.admin_url, invocation_id, "completed")
        return Approval(True, "alice", "INC-7", now_iso(), "prefect-ui")

    monkeypatch.setattr(tasks.runbook, "await_approval", approve_while_it_fails_again)
    flow: Any = RECOVER_STUCK_WORKFLOW.flow()
    with pytest.raises(PlanChangedError) as info:
        await flow(
            request=RecoverStuckWorkflowRequest(service_name=WORKFLOW, service_key=key),
            operator="alice",
            reason="INC-7",
            dry_run=False,
            require_approval=True,
        )

    assert "changed since it was approved" in info.value.message
    (run,) = invocations_of(restate_env.admin_url, key)  # the new failure, untouched
    assert run["status"] == "completed"
    assert state_of(restate_env.admin_url, key) == {"attempt-marker": '"fail"'}


async def test_a_write_made_is_answered_done_when_the_verify_doctor_fails(
    prefect_server: PrefectServer, restate_env: RestateStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write happened; the check after it could not run. The answer is the write's, and the
    record says it was not verified, never that the write failed."""
    import tasks.runbook

    key, _ = failed_key(restate_env, "unverified")

    async def broken_doctor(*_: Any) -> Any:
        raise RuntimeError("the verify-doctor could not run")

    monkeypatch.setattr(tasks.runbook, "verify_doctor", broken_doctor)
    assert await recover(key) == {"acknowledged": True}

    assert invocations_of(restate_env.admin_url, key) == []
    (record,) = await artifacts_of_runs_named(f"recover-stuck-workflow/{WORKFLOW}/{key}")
    assert "not verified: the verify-doctor failed" in record
    assert "acknowledged" in record


async def test_a_killed_runs_timer_never_wakes_the_keys_next_run(
    prefect_server: PrefectServer, restate_env: RestateStack
) -> None:
    """restatedev/restate#5425 (reproduced on 1.7.12: purged right away, a killed run's timer
    ended the next run's 12 s sleep after 3 s). The recovery waits for the timer to pass before
    it purges; the next run then sleeps its full time (it completes after its own wake-up)."""
    key = new_key("timer")
    killed = submit_workflow(restate_env.ingress_url, key, "sleep", seconds=12)
    deadline = time.monotonic() + 30
    while state_of(restate_env.admin_url, key) != {"attempt-marker": '"sleep"'}:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    httpx.patch(f"{restate_env.admin_url}/invocations/{killed}/kill", timeout=10)
    wait_for_status(restate_env.admin_url, killed, "completed")
    due = sleep_of(restate_env.admin_url, killed)

    planned = await recover(key, dry_run=True)
    assert await recover(key) == {"acknowledged": True}

    purged_at = time.time()
    rerun = httpx.post(
        f"{restate_env.ingress_url}/{WORKFLOW}/{key}/run",
        json={"mode": "sleep", "seconds": 10},  # due after the killed run's: it could wake it
        timeout=60,
    )
    assert rerun.status_code == 200, rerun.text
    (again,) = [r["id"] for r in invocations_of(restate_env.admin_url, key)]
    assert completed_at(restate_env.admin_url, again) >= sleep_of(restate_env.admin_url, again)
    assert purged_at > due  # purged only once the killed run's timer had passed
    assert [s["action"] for s in planned["plan"]] == ["clear-state", "wait", "purge"]


async def test_a_killed_runs_timer_due_later_than_the_wait_is_refused(
    prefect_server: PrefectServer, restate_env: RestateStack, settings_env: pytest.MonkeyPatch
) -> None:
    settings_env.setenv("RECOVERY_TIMER_WAIT_SECONDS", "1")
    get_settings.cache_clear()
    key = new_key("latertimer")
    killed = submit_workflow(restate_env.ingress_url, key, "sleep", seconds=600)
    deadline = time.monotonic() + 30
    while state_of(restate_env.admin_url, key) != {"attempt-marker": '"sleep"'}:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    httpx.patch(f"{restate_env.admin_url}/invocations/{killed}/kill", timeout=10)
    wait_for_status(restate_env.admin_url, killed, "completed")

    with pytest.raises(TimerPendingError) as info:
        await recover(key)

    assert info.value.http_status == 409 and killed in info.value.message
    assert [r["id"] for r in invocations_of(restate_env.admin_url, key)] == [killed]  # not purged
    assert state_of(restate_env.admin_url, key) == {"attempt-marker": '"sleep"'}  # not cleared


async def test_a_server_that_drops_follower_state_writes_is_refused_before_anything_is_written(
    tmp_path: Path, sample_service: SampleService
) -> None:
    """restatedev/restate#5416 (fixed in 1.8.0) reproduced on a 1.7.12 cluster with vqueues on
    (tests/test_cluster.py): followers skip the admin API's state writes, so a cleared state can
    come back after a leader change. Where /version says vqueues are on, both recovery runbooks
    refuse before their first write."""
    server = RestateServer(tmp_path / "restate", extra_config="experimental-enable-vqueues = true")
    server.start()
    try:
        server.register(sample_service.url)
        assert httpx.get(f"{server.admin_url}/version").json()["features"]["vqueues"] is True
        key = new_key("vqueues")
        invocation_id = submit_workflow(server.ingress_url, key, "fail")
        wait_for_status(server.admin_url, invocation_id, "completed")
        before = state_of(server.admin_url, key)
        async with RestateAdminClient.connect(server.admin_url, timeout=10) as client:
            request = RecoverStuckWorkflowRequest(service_name=WORKFLOW, service_key=key)
            with pytest.raises(StateWriteUnsafeError, match="5416"):
                await recover_runbook.write(client, request, timeout=10, dry_run=False)
            many = RecoverStuckWorkflowsRequest(service_name=WORKFLOW)
            with pytest.raises(StateWriteUnsafeError):
                await bulk.write(client, many, timeout=10, dry_run=False)
        assert [r["id"] for r in invocations_of(server.admin_url, key)] == [invocation_id]
        assert state_of(server.admin_url, key) == before != {}
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("version", "vqueues", "unsafe"),
    [("1.7.12", True, True), ("1.7.12", False, False), ("1.8.0", True, False),
     ("1.10.1", True, False), ("1.7.12-dev", True, True)],
)  # fmt: skip
def test_which_servers_drop_follower_state_writes(
    version: str, vqueues: bool, unsafe: bool
) -> None:
    info = VersionInfo(version=version, features={"vqueues": vqueues})
    assert info.drops_follower_state_writes() is unsafe
