"""Write-runbook refusals a real server cannot easily produce (httpx.MockTransport)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import httpx
import pytest

from restate_recovery.client import RestateAdminClient
from restate_recovery.errors import AdminUnreachableError, RetryBlockedError
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
) -> Callable[[httpx.Request], httpx.Response]:
    """A mock admin API: services, the given query answers, kill 409 (already completed)."""

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/services":
            return httpx.Response(200, json=SERVICES)
        if path == "/query":
            return query(request.content.decode())
        if path.endswith("/kill"):
            return httpx.Response(409, json={"message": "already completed"})
        if path.endswith("/purge"):
            return purge or httpx.Response(200)
        if path.endswith("/state"):
            return httpx.Response(202)
        raise AssertionError(f"unexpected {request.method} {path}")

    return handler


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
    def query(sql: str) -> httpx.Response:
        return rows(FAILED_ROW) if "sys_invocation" in sql else rows({"key": "m"})

    handler = engine(query=query, purge=httpx.Response(500, json={"message": "disk full"}))
    async with client(handler) as c:
        plan = await recover.plan_recovery(c, REQUEST, timeout=1)
        with pytest.raises(RetryBlockedError) as info:
            await recover.execute_recovery(c, plan, timeout=1)
    assert info.value.reason == "purge-failed"
    assert info.value.invocation_ids == ["inv_1a"]
    assert "killed ['inv_1a']" in info.value.message and "disk full" in info.value.message


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


async def test_cleanup_listing_failure_is_admin_unreachable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    async with client(handler) as c:
        with pytest.raises(AdminUnreachableError) as info:
            await cleanup.plan_cleanup(
                c, CleanupStaleDeploymentsRequest(service_url="http://svc/"), timeout=1
            )
    assert info.value.http_status == 503
