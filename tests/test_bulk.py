"""recover-stuck-workflows against a real restate-server of its own: every selected key planned as
the single-key route plans it, recovered at a bounded rate with an audit row each, and a batch
whose API process is SIGKILLed mid-way converging on a rerun."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from restate_recovery import store
from restate_recovery.client import RestateAdminClient
from restate_recovery.runbooks import bulk
from restate_recovery.schemas import RecoverStuckWorkflowsRequest
from restate_recovery.settings import get_settings
from tests.conftest import RestateStack
from tests.support.fault_proxy import Fault, FaultProxy, running
from tests.support.local_stack import OperatorApi, PrefectServer, submit_workflow, wait_for_status
from tests.support.runbooks import run_flow
from tests.test_crashes import api_env

pytestmark = [pytest.mark.restate, pytest.mark.prefect]

WORKFLOW = "IdentityRecoveryWorkflow"
PREFIX = "/api/v2/admin/operator/restate"


def query(admin_url: str, sql: str) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{admin_url}/query", json={"query": sql}, headers={"accept": "application/json"},
        timeout=30,
    )  # fmt: skip
    response.raise_for_status()
    rows: list[dict[str, Any]] = response.json()["rows"]
    return rows


def failed_keys(stack: RestateStack, count: int, prefix: str) -> list[str]:
    """``count`` keys whose run failed terminally (submitted at once, waited for together)."""
    keys = [f"{prefix}_{n}_{uuid.uuid4().hex[:6]}" for n in range(count)]
    for key in keys:
        submit_workflow(stack.ingress_url, key, "fail")
    deadline = time.monotonic() + 120
    while len(still_failed(stack, prefix)) < count:
        assert time.monotonic() < deadline, "the runs did not all fail"
        time.sleep(0.25)
    return keys


def still_failed(stack: RestateStack, prefix: str) -> list[str]:
    rows = query(
        stack.admin_url,
        "SELECT target_service_key FROM sys_invocation WHERE status = 'completed' "
        f"AND completion_result = 'failure' AND target_service_key LIKE '{prefix}_%'",
    )
    return sorted(r["target_service_key"] for r in rows)


def audit_rows(database: str | None = None) -> list[store.OperationAudit]:
    with Session(store.engine(database)) as session:
        return store.list_attempts(session=session, limit=1000)


async def test_a_batch_plans_every_key_recovers_the_recoverable_and_audits_each(
    prefect_server: PrefectServer,
    fresh_restate: RestateStack,
    settings_env: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    settings_env.setenv("RESTATE_ADMIN_URL", fresh_restate.admin_url)
    settings_env.setenv("RESTATE_INGRESS_URL", fresh_restate.ingress_url)
    settings_env.setenv("RECOVERY_TIMER_WAIT_SECONDS", "1")
    settings_env.setenv("RECOVERY_DATABASE_URL", f"sqlite:///{tmp_path / 'audit.db'}")
    get_settings.cache_clear()
    keys = failed_keys(fresh_restate, 24, "batch")
    sleeper = f"batch_sleeper_{uuid.uuid4().hex[:6]}"
    killed = submit_workflow(fresh_restate.ingress_url, sleeper, "sleep", seconds=600)
    await asyncio.sleep(1.0)
    httpx.patch(f"{fresh_restate.admin_url}/invocations/{killed}/kill", timeout=10)
    deadline = time.monotonic() + 30
    while sleeper not in still_failed(fresh_restate, "batch"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    batch: dict[str, Any] = {"service_name": WORKFLOW, "rate": 50.0, "concurrency": 4}

    planned = await run_flow("recover-stuck-workflows", dry_run=True, **batch)
    narrowed = await run_flow(
        "recover-stuck-workflows", dry_run=True, error_contains="terminal failure", **batch
    )
    none = await run_flow(
        "recover-stuck-workflows", dry_run=True, failed_since="2999-01-01T00:00:00Z", **batch
    )
    done = await run_flow("recover-stuck-workflows", **batch)
    again = await run_flow("recover-stuck-workflows", **batch)

    steps = {s["target"]: s for s in planned["plan"]}
    assert {t for t, s in steps.items() if s["action"] == "recover"} == {
        f"{WORKFLOW}/{k}" for k in keys
    }
    skip = steps[f"{WORKFLOW}/{sleeper}"]
    assert skip["action"] == "skip" and "RESTATE_WORKFLOW_TIMER_PENDING" in skip["detail"]
    assert len(narrowed["plan"]) == 24 and none["plan"] == []
    assert (done["recovered"], done["skipped"], done["failed"]) == (24, 1, 0)
    assert still_failed(fresh_restate, "batch") == [sleeper]  # the 24 keys are blank again
    assert (again["recovered"], again["skipped"]) == (0, 1)  # recovered keys are not selected
    rows = audit_rows()
    (batch_row, *_) = [r for r in rows if r.route == "recover-stuck-workflows" and
                       r.outcome == "success" and not (r.arguments or {}).get("dryRun")]  # fmt: skip
    per_key = [r for r in rows if r.route == "recover-stuck-workflow"]
    assert sorted((r.arguments or {})["serviceKey"] for r in per_key) == sorted(keys)
    assert {(r.actor_user_id, r.outcome) for r in per_key} == {("tests", "success")}
    assert {(r.arguments or {})["batchAttemptId"] for r in per_key} <= {
        r.id for r in rows if r.route == "recover-stuck-workflows"
    }
    assert batch_row.finished_at is not None


@pytest.mark.timeout(600)  # 200 keys, twice
def test_a_batch_killed_mid_way_converges_on_a_rerun(
    prefect_server: PrefectServer, fresh_restate: RestateStack, tmp_path: Path
) -> None:
    """200 keys; the operator API is SIGKILLed as the 60th purge reaches Restate. Another API
    process (its start-up sweep closes what the dead one left) reruns the same batch: it
    recovers what is left, and every key ends blank with its own finished audit row."""
    keys = failed_keys(fresh_restate, 200, "many")
    database = f"sqlite:///{tmp_path / 'audit.db'}"
    purges: list[int] = []
    apis: list[OperatorApi] = []

    def count_and_kill() -> None:
        purges.append(1)
        if len(purges) == 60:
            apis[0].kill()

    proxy = FaultProxy(
        fresh_restate.admin_url,
        rules={("PATCH", "/invocations/"): Fault(hook=count_and_kill, times=None)},
    )
    body = {"serviceName": WORKFLOW, "limit": 1000, "rate": 100.0, "concurrency": 8}
    with running(proxy):
        env = api_env(proxy.url, database, prefect_server.api_url)
        apis.append(OperatorApi(env=env, log_path=tmp_path / "api-1.log").start())
        key = apis[0].create_key(actor="ops_9", role="ops", permissions=["system:operate"])
        with pytest.raises(httpx.TransportError):
            httpx.post(
                f"{apis[0].url}{PREFIX}/recover-stuck-workflows",
                json=body,
                headers={"X-Api-Key": key},
                timeout=300,
            )
        left = still_failed(fresh_restate, "many")
        assert 0 < len(left) < 200  # it stopped mid-way
        apis.append(OperatorApi(env=env, log_path=tmp_path / "api-2.log").start())
        try:
            rerun = httpx.post(
                f"{apis[1].url}{PREFIX}/recover-stuck-workflows",
                json=body,
                headers={"X-Api-Key": key},
                timeout=300,
            )
        finally:
            apis[1].stop()

    assert rerun.status_code == 200, rerun.text
    answer = rerun.json()
    assert answer["failed"] == 0 and answer["recovered"] >= len(left) - 8  # some were in flight
    assert still_failed(fresh_restate, "many") == []
    rows = audit_rows(database)
    per_key = [r for r in rows if r.route == "recover-stuck-workflow"]
    outcomes: dict[str, set[str | None]] = {}
    for r in per_key:
        outcomes.setdefault((r.arguments or {})["serviceKey"], set()).add(r.outcome)
    # each key has a row saying it was recovered, or (in flight when the process died, its purge
    # then reaching Restate) one closed as abandoned: "some of its steps may have run"
    assert set(outcomes) == set(keys)
    in_flight = [k for k, o in outcomes.items() if "success" not in o]
    assert all(outcomes[k] == {"abandoned"} for k in in_flight) and len(in_flight) <= 8
    assert all(r.finished_at is not None for r in rows)  # the dead process's rows closed
    assert {r.actor_user_id for r in per_key} == {"ops_9"}


async def test_a_key_whose_audit_row_cannot_be_written_is_not_recovered_and_the_rest_go_on(
    prefect_server: PrefectServer,
    fresh_restate: RestateStack,
    settings_env: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """No row, no write: the audit database refuses one key's row; that key is reported failed
    and left as it was, the batch's other keys are recovered, and the answer says which is which
    (nothing goes on behind a failed answer)."""
    from restate_recovery import audit
    from restate_recovery.errors import AuditUnavailableError

    settings_env.setenv("RESTATE_ADMIN_URL", fresh_restate.admin_url)
    settings_env.setenv("RECOVERY_DATABASE_URL", f"sqlite:///{tmp_path / 'audit.db'}")
    get_settings.cache_clear()
    keys = failed_keys(fresh_restate, 5, "norow")
    real = audit.AuditedAttempt.start

    async def start(self: audit.AuditedAttempt) -> int:
        if (self.attempt.arguments or {}).get("serviceKey") == keys[2]:
            raise AuditUnavailableError("the audit database did not answer")
        return await real(self)

    settings_env.setattr(audit.AuditedAttempt, "start", start)
    done = await run_flow("recover-stuck-workflows", service_name=WORKFLOW, concurrency=2)

    outcomes = {k["serviceKey"]: k["outcome"] for k in done["keys"]}
    assert outcomes == {k: ("failed" if k == keys[2] else "recovered") for k in keys}
    assert still_failed(fresh_restate, "norow") == [keys[2]]  # untouched


async def test_a_key_the_single_key_route_would_not_take_is_skipped_saying_why(
    fresh_restate: RestateStack,
) -> None:
    """Restate keys are any text; the single-key route takes ``^[a-zA-Z0-9_-]+$`` only. Such a key
    among the failed ones is planned as a skip with the reason, and the other keys still are."""
    (plain,) = failed_keys(fresh_restate, 1, "named")
    odd = f"odd.key_{uuid.uuid4().hex[:6]}"
    invocation_id = submit_workflow(fresh_restate.ingress_url, odd, "fail")
    wait_for_status(fresh_restate.admin_url, invocation_id, "completed")

    request = RecoverStuckWorkflowsRequest(service_name=WORKFLOW)
    async with RestateAdminClient.connect(fresh_restate.admin_url, timeout=10) as client:
        plan = await bulk.plan_batch(client, request, timeout=10)

    steps = {s.target: s for s in plan.steps()}
    assert steps[f"{WORKFLOW}/{plain}"].action == "recover"
    skip = steps[f"{WORKFLOW}/{odd}"]
    assert skip.action == "skip" and "does not match" in (skip.detail or ""), skip
