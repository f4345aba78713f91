"""Write-runbook refusals a real server cannot easily produce (httpx.MockTransport)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
import pytest

from restate_recovery.client import RestateAdminClient
from restate_recovery.errors import (
    AdminUnreachableError,
    PlanChangedError,
    RestateRejected,
    RetryBlockedError,
)
from restate_recovery.runbooks import cleanup, recover
from restate_recovery.schemas import CleanupStaleDeploymentsRequest, RecoverStuckWorkflowRequest

SERVICES = {
    "services": [
        {
            "name": "W",
            "ty": "Workflow",
            "deployment_id": "dp_1",
            "revision": 1,
            "handlers": [{"name": "run", "ty": "Workflow"}, {"name": "status", "ty": "Shared"}],
        }
    ]
}
REQUEST = RecoverStuckWorkflowRequest(service_name="W", service_key="k1")
FAILED_ROW = {"id": "inv_1a", "status": "completed", "completion_result": "failure"}


def client(handler: Callable[[httpx.Request], httpx.Response]) -> RestateAdminClient:
    return RestateAdminClient.connect(
        "http://admin.test", timeout=1.0, transport=httpx.MockTransport(handler)
    )


def engine(
    *,
    query: Callable[[str], httpx.Response],
    purge: httpx.Response | None = None,
    on_state: Callable[[], None] | None = None,
    on_state_request: Callable[[httpx.Request], None] | None = None,
) -> Callable[[httpx.Request], httpx.Response]:
    """A mock admin API: services, version, the given query answers, kill 409 (already
    completed)."""

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/services":
            return httpx.Response(200, json=SERVICES)
        if path == "/version":  # as the pinned 1.7.12 answers by default
            return httpx.Response(200, json={"version": "1.7.12", "features": {"vqueues": False}})
        if path == "/query":
            return union(query, request.content.decode())
        if path.endswith("/kill"):
            return httpx.Response(409, json={"message": "already completed"})
        if path.endswith("/purge"):
            return purge or httpx.Response(200)
        if path.endswith("/state"):
            if on_state is not None:
                on_state()
            if on_state_request is not None:
                on_state_request(request)
            return httpx.Response(202)
        raise AssertionError(f"unexpected {request.method} {path}")

    return handler


def union(query: Callable[[str], httpx.Response], sql: str) -> httpx.Response:
    """``a UNION ALL b`` as Restate answers it: each part's rows, tagged by its ``row_kind``."""
    if " UNION ALL " not in sql:
        return query(sql)
    parts = [query(part) for part in sql.split(" UNION ALL ")]
    failed = [p for p in parts if p.status_code != 200]
    if failed:
        return failed[0]
    runs, state = (p.json()["rows"] for p in parts)
    return rows(
        *({**r, "row_kind": "run"} for r in runs), *({**r, "row_kind": "state"} for r in state)
    )


def rows(*items: Mapping[str, object]) -> httpx.Response:
    return httpx.Response(200, json={"rows": list(items)})


async def test_query_rejected_is_query_failed() -> None:
    handler = engine(query=lambda sql: httpx.Response(500, json={"message": "Datafusion error"}))
    async with client(handler) as c:
        with pytest.raises(RetryBlockedError) as info:
            await recover.plan_recovery(c, REQUEST, timeout=1)
    assert info.value.reason == "query-failed"
    assert info.value.http_status == 409


async def test_query_transport_failure_is_admin_unreachable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with client(handler) as c:
        with pytest.raises(AdminUnreachableError):
            await recover.plan_recovery(c, REQUEST, timeout=1)


async def test_unreadable_rows_are_query_failed() -> None:
    handler = engine(query=lambda sql: rows({"id": "inv_1a"}))
    async with client(handler) as c:
        with pytest.raises(RetryBlockedError) as info:
            await recover.plan_recovery(c, REQUEST, timeout=1)
    assert info.value.reason == "query-failed"


@pytest.mark.parametrize("status", ["pending", "scheduled", "ready", "suspended", "brand-new"])
def test_every_status_but_completed_is_active(status: str) -> None:
    with pytest.raises(RetryBlockedError) as info:
        recover.classify_run_invocations([FAILED_ROW, {"id": "inv_2b", "status": status}])
    assert (info.value.reason, info.value.invocation_ids) == ("active-invocation", ["inv_2b"])


async def test_purge_rejected_is_purge_failed_and_says_what_ran() -> None:
    cleared: list[bool] = []

    def query(sql: str) -> httpx.Response:  # the state is gone once it was cleared
        if "sys_invocation" in sql:
            return rows(FAILED_ROW)
        return rows() if cleared else rows({"key": "m", "value": "226d22"})

    handler = engine(
        query=query,
        purge=httpx.Response(500, json={"message": "disk full"}),
        on_state=lambda: cleared.append(True),
    )
    async with client(handler) as c:
        plan = await recover.plan_recovery(c, REQUEST, timeout=1)
        with pytest.raises(RetryBlockedError) as info:
            await recover.execute_recovery(c, plan, timeout=1)
    assert info.value.reason == "purge-failed"
    assert info.value.invocation_ids == ["inv_1a"]
    assert "purged none" in info.value.message and "disk full" in info.value.message
    assert "state cleared: yes" in info.value.message


def test_the_state_version_is_restates() -> None:
    """What Restate computes (checked on 1.7.12: a clear with this version is applied, one with
    another is dropped): empty state, and one entry given as /query's hex value."""
    assert recover.state_version([]) == "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
    one = [{"key": "attempt-marker", "value": "226661696c22"}]
    assert recover.state_version(one) != recover.state_version([])
    assert recover.state_version(one + [{"key": "a", "value": ""}]) == recover.state_version(
        [{"key": "a", "value": ""}] + one
    )  # sorted by key, whatever the order of the rows


async def test_state_that_will_not_clear_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recover, "STATE_CLEAR_DEADLINE_SECONDS", 0.3)

    def query(sql: str) -> httpx.Response:  # 202 to the write, but the state stays
        return rows(FAILED_ROW) if "sys_invocation" in sql else rows({"key": "m"})

    async with client(engine(query=query)) as c:
        plan = await recover.plan_recovery(c, REQUEST, timeout=1)
        with pytest.raises(RetryBlockedError) as info:
            await recover.execute_recovery(c, plan, timeout=1)
    assert info.value.reason == "purge-failed"
    assert "still has ['m']" in info.value.message


def counting_purges(
    handler: Callable[[httpx.Request], httpx.Response], purged: list[str]
) -> Callable[[httpx.Request], httpx.Response]:
    """``handler``, noting the path of every purge it is sent in ``purged``."""

    def counting(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/purge"):
            purged.append(request.url.path)
        return handler(request)

    return counting


async def test_the_clear_carries_the_planned_state_and_a_changed_state_is_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """State written between the plan and the write: the clear carries the version of the state
    the plan (and its approver) saw, so Restate drops it; what is left is reported and no run is
    purged."""
    monkeypatch.setattr(recover, "STATE_CLEAR_DEADLINE_SECONDS", 0.3)
    planned: list[dict[str, object]] = [{"key": "m", "value": "226d22"}]
    state: list[dict[str, object]] = list(planned)
    versions: list[object] = []
    purged: list[str] = []

    def query(sql: str) -> httpx.Response:
        return rows(FAILED_ROW) if "sys_invocation" in sql else rows(*state)

    def record(request: httpx.Request) -> None:
        versions.append(json.loads(request.content).get("version"))

    handler = counting_purges(engine(query=query, on_state_request=record), purged)

    async with client(handler) as c:
        plan = await recover.plan_recovery(c, REQUEST, timeout=1)
        state.append({"key": "n", "value": "226e22"})  # written meanwhile
        with pytest.raises(RetryBlockedError) as info:
            await recover.execute_recovery(c, plan, timeout=1)

    assert versions == [recover.state_version(planned)]  # not the version of {m, n}
    assert info.value.reason == "purge-failed"
    assert "still has ['m', 'n']" in info.value.message
    assert purged == []


async def test_a_run_that_changed_while_the_state_was_cleared_is_not_purged() -> None:
    """The key's runs, read with the emptied state, are checked right before the purge: a run
    that failed anew meanwhile (same id, new creation time) is not the planned one, and is
    kept."""
    cleared: list[bool] = []
    purged: list[str] = []
    planned_row = {**FAILED_ROW, "created_at": "2026-12-02T10:00:00.000Z"}
    again_row = {**FAILED_ROW, "created_at": "2026-12-02T10:00:05.000Z"}

    def query(sql: str) -> httpx.Response:
        if "sys_invocation" in sql:
            return rows(again_row if cleared else planned_row)
        return rows() if cleared else rows({"key": "m", "value": "226d22"})

    handler = counting_purges(engine(query=query, on_state=lambda: cleared.append(True)), purged)

    async with client(handler) as c:
        plan = await recover.plan_recovery(c, REQUEST, timeout=1)
        with pytest.raises(PlanChangedError) as info:
            await recover.execute_recovery(c, plan, timeout=1)

    assert "2026-12-02T10:00:05.000Z" in info.value.message
    assert cleared == [True]
    assert purged == []


async def test_cleanup_listing_failure_is_admin_unreachable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    async with client(handler) as c:
        with pytest.raises(AdminUnreachableError) as info:
            await cleanup.plan_cleanup(
                c, CleanupStaleDeploymentsRequest(service_url="http://svc/"), timeout=1
            )
    assert info.value.http_status == 503


async def test_state_that_changed_under_a_new_run_is_left_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No run holds the key (its runs were purged already) but state is left: it is cleared with
    its version only; when a run started meanwhile (its state write changed the version, so the
    clear was dropped), the recovery refuses ``active-invocation`` naming it."""
    monkeypatch.setattr(recover, "STATE_CLEAR_DEADLINE_SECONDS", 0.3)
    versions: list[object] = []

    def query(sql: str) -> httpx.Response:
        if "sys_invocation" in sql:  # none when planned, a new run once the clear was sent
            return rows({"id": "inv_9z", "status": "running"}) if versions else rows()
        return rows({"key": "m", "value": "226d22"})

    def record(request: httpx.Request) -> None:
        versions.append(json.loads(request.content).get("version"))

    async with client(engine(query=query, on_state_request=record)) as c:
        plan = await recover.plan_recovery(c, REQUEST, timeout=1)
        with pytest.raises(RetryBlockedError) as info:
            await recover.execute_recovery(c, plan, timeout=1)

    assert versions == [recover.state_version([{"key": "m", "value": "226d22"}])]
    assert (info.value.reason, info.value.invocation_ids) == ("active-invocation", ["inv_9z"])


@pytest.mark.parametrize(
    ("message", "unreachable"),
    [
        (  # what Restate 1.7.12 answered for a closed port
            "[META0003] [META0003] error when calling 'http://127.0.0.1:1/': h2 pool connection "
            "error: Connection refused (os error 111)",
            True,
        ),
        (  # and for a live service behind a proxy that answered 504
            "[META0003] [META0003] bad status code when calling 'http://127.0.0.1:9/discover': "
            "got status code '504 Gateway Timeout'. Body: upstream request timeout",
            False,
        ),
        (
            "[META0003] error when calling 'http://x/': got status code '500': connection reset",
            False,
        ),
        ("[META0014] server possibly supports only HTTP1.1", False),
    ],
)
def test_only_a_discovery_that_could_not_connect_counts_as_unreachable(
    message: str, unreachable: bool
) -> None:
    code = message.split("]")[0].lstrip("[")
    exc = RestateRejected(message, "POST", "/deployments", 500, code)
    assert cleanup.unreachable_from_restate(exc) is unreachable


async def test_a_key_written_then_its_lock_release_failing_is_reported_recovered(
    tmp_path: Path, settings_env: pytest.MonkeyPatch
) -> None:
    """A batch key's write happened, then its lock's release raised: the key is reported
    recovered and its row finished as success (a write that happened is never reported failed);
    a lock that was never taken reports the key failed, with nothing written."""
    from contextlib import asynccontextmanager
    from typing import Any

    from sqlmodel import Session

    from restate_recovery import leases, store
    from restate_recovery.errors import AuditUnavailableError, RecoveryInProgressError
    from restate_recovery.runbooks import bulk
    from restate_recovery.settings import get_settings

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    settings_env.setenv("RECOVERY_DATABASE_URL", url)
    get_settings.cache_clear()
    written: list[str] = []
    taken = True

    @asynccontextmanager
    async def lock(target: str, **_: Any) -> Any:
        if not taken:
            raise RecoveryInProgressError(f"{target} is held")
        yield
        raise AuditUnavailableError("the release was refused")

    async def execute(
        _client: object, plan: recover.RecoveryPlan, *, timeout: float
    ) -> recover.RecoveryReport:
        written.append(plan.service_key)
        return recover.RecoveryReport(purged=list(plan.terminal_failed), state_cleared=True)

    settings_env.setattr(leases, "lock", lock)
    settings_env.setattr(recover, "execute_recovery", execute)
    batch = bulk.BatchPlan(service_name="OrderWorkflow")
    outcomes = []
    for key in ("a", "b"):
        plan = recover.RecoveryPlan("OrderWorkflow", key, "run", [f"inv_{key}"], [])
        outcomes.append(
            await bulk._recover_key(None, batch, bulk.KeyPlan(key, plan), None, timeout=1)  # type: ignore[arg-type]
        )
        taken = False
    assert [(o.service_key, o.outcome) for o in outcomes] == [("a", "recovered"), ("b", "failed")]
    assert written == ["a"]
    with Session(store.engine_for(url)) as session:
        rows = {r.arguments["serviceKey"]: r for r in store.list_attempts(session=session)}
    assert rows["a"].outcome == "success" and rows["a"].finished_at is not None
    assert rows["b"].outcome == "failure" and rows["b"].error is not None
    assert rows["b"].error["code"] == "RESTATE_RECOVERY_IN_PROGRESS"
