"""Faults between the tool and the real Restate admin API (through tests/fault_proxy.py), and
restate-server killed mid-runbook: the doctor marks the right component, writes fail with the
documented code, nothing partial is reported as success, and a rerun converges."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from restate_recovery.errors import AdminUnreachableError, RetryBlockedError
from restate_recovery.settings import get_settings
from tests.conftest import RestateStack
from tests.support.fault_proxy import Fault, FaultProxy, running
from tests.support.helpers import query
from tests.support.local_stack import PrefectServer, submit_workflow, wait_for_status
from tests.support.runbooks import run_flow

pytestmark = [pytest.mark.restate, pytest.mark.prefect]

WORKFLOW = "IdentityRecoveryWorkflow"
ARROW = b"\xff\xff\xff\xff\x78\x00\x00\x00\x10\x00\x00\x00ARROW1"


@pytest.fixture
def proxy(settings_env: pytest.MonkeyPatch, restate: RestateStack) -> Iterator[FaultProxy]:
    with running(FaultProxy(upstream=restate.admin_url)) as p:
        settings_env.setenv("RESTATE_ADMIN_URL", p.url)
        settings_env.setenv("RESTATE_INGRESS_URL", restate.ingress_url)
        settings_env.setenv("RECOVERY_PROBE_TIMEOUT_SECONDS", "1")
        settings_env.setenv("RECOVERY_WRITE_TIMEOUT_SECONDS", "2")
        get_settings.cache_clear()
        yield p


@pytest.mark.parametrize(
    ("rule", "fault", "component", "status"),
    [
        (("POST", "/query"), Fault(delay=2.5), "invocations", "unreachable"),
        (("GET", "/deployments"), Fault(cut_body=True), "deployments", "unreachable"),
        (("GET", "/services"), Fault(status=503), "services", "degraded"),
        (
            ("GET", "/services"),
            Fault(status=500, body=b'{"message":"boom"}'),
            "services",
            "degraded",
        ),
        (("POST", "/query"), Fault(status=200, body=b'{"rows": [}'), "invocations", "degraded"),
        (
            ("POST", "/query"),
            Fault(status=200, body=ARROW, content_type="application/vnd.apache.arrow.stream"),
            "invocations",
            "degraded",
        ),
        (("GET", "/deployments"), Fault(status=200), "deployments", "degraded"),
        (("GET", "/version"), Fault(status=502, body=b"bad gateway"), "admin", "degraded"),
    ],
    ids=[
        "slow-query",
        "reset-mid-body",
        "503-empty",
        "500-json",
        "malformed",
        "arrow",
        "empty-200",
        "version-502",
    ],
)
async def test_the_doctor_marks_only_the_faulty_component(
    prefect_server: PrefectServer,
    proxy: FaultProxy,
    rule: tuple[str, str],
    fault: Fault,
    component: str,
    status: str,
) -> None:
    proxy.rules[rule] = fault
    readout = await run_flow("doctor")
    statuses = {name: part.status for name, part in readout.components()}
    assert statuses == {name: (status if name == component else "ok") for name in statuses}


def failed_key(restate: RestateStack) -> tuple[str, str]:
    key = f"fault_{uuid.uuid4().hex[:8]}"
    invocation_id = submit_workflow(restate.ingress_url, key, "fail")
    wait_for_status(restate.admin_url, invocation_id, "completed")
    return key, invocation_id


def rows(restate: RestateStack, sql: str) -> list[dict[str, Any]]:
    return query(restate.admin_url, sql)


async def test_recover_refuses_on_faulty_queries_and_converges_after(
    prefect_server: PrefectServer, proxy: FaultProxy, restate: RestateStack
) -> None:
    key, invocation_id = failed_key(restate)
    recover: dict[str, Any] = {"service_name": WORKFLOW, "service_key": key}

    proxy.rules[("POST", "/query")] = Fault(status=500, body=b'{"message":"Datafusion error"}')
    with pytest.raises(RetryBlockedError) as blocked:
        await run_flow("recover-stuck-workflow", **recover)
    assert blocked.value.reason == "query-failed"

    proxy.rules[("POST", "/query")] = Fault(cut_body=True)
    with pytest.raises(AdminUnreachableError):
        await run_flow("recover-stuck-workflow", **recover)

    del proxy.rules[("POST", "/query")]
    proxy.rules[("PATCH", "/invocations/")] = Fault(status=500, body=b'{"message":"disk"}')
    with pytest.raises(RetryBlockedError) as purge:
        await run_flow("recover-stuck-workflow", **recover)
    assert purge.value.reason == "purge-failed"
    assert [
        r["id"]
        for r in rows(restate, f"SELECT id FROM sys_invocation WHERE target_service_key = '{key}'")
    ] == [invocation_id]

    proxy.rules.clear()
    assert await run_flow("recover-stuck-workflow", **recover) == {"acknowledged": True}
    assert rows(restate, f"SELECT key FROM state WHERE service_key = '{key}'") == []


async def test_deployment_writes_fail_as_admin_unreachable_and_converge_after(
    prefect_server: PrefectServer, proxy: FaultProxy, restate: RestateStack
) -> None:
    proxy.rules[("GET", "/deployments")] = Fault(status=503)
    with pytest.raises(AdminUnreachableError):
        await run_flow("cleanup-stale-deployments", service_url=restate.service_url + "/")
    del proxy.rules[("GET", "/deployments")]

    proxy.rules[("POST", "/deployments")] = Fault(cut_body=True)
    with pytest.raises(AdminUnreachableError):
        await run_flow("force-redeploy", service_url=restate.service_url)

    proxy.rules.clear()
    assert await run_flow("force-redeploy", service_url=restate.service_url) == {
        "acknowledged": True,
        "deploymentId": restate.deployment_id,
    }


@pytest.fixture
def fresh_proxy(
    settings_env: pytest.MonkeyPatch, fresh_restate: RestateStack
) -> Iterator[FaultProxy]:
    with running(FaultProxy(upstream=fresh_restate.admin_url)) as p:
        settings_env.setenv("RESTATE_ADMIN_URL", p.url)
        settings_env.setenv("RESTATE_INGRESS_URL", fresh_restate.ingress_url)
        settings_env.setenv("RECOVERY_WRITE_TIMEOUT_SECONDS", "3")
        get_settings.cache_clear()
        yield p


async def test_restate_killed_during_a_recovery_then_the_rerun_converges(
    prefect_server: PrefectServer, fresh_proxy: FaultProxy, fresh_restate: RestateStack
) -> None:
    key, _ = failed_key(fresh_restate)
    fresh_proxy.rules[("PATCH", "/invocations/")] = Fault(hook=fresh_restate.server.kill, times=1)

    with pytest.raises(AdminUnreachableError) as info:
        await run_flow("recover-stuck-workflow", service_name=WORKFLOW, service_key=key)
    assert "unreachable" in info.value.message.lower()

    fresh_restate.server.start()
    assert await run_flow("recover-stuck-workflow", service_name=WORKFLOW, service_key=key) == {
        "acknowledged": True
    }
    rerun = httpx.post(
        f"{fresh_restate.ingress_url}/{WORKFLOW}/{key}/run", json={"mode": "succeed"}, timeout=30
    )
    assert rerun.json() == {"mode": "succeed", "markerFoundAtStart": None}


async def test_restate_killed_during_a_cleanup_is_not_reported_as_success(
    prefect_server: PrefectServer,
    fresh_proxy: FaultProxy,
    fresh_restate: RestateStack,
    tmp_path: Any,
) -> None:
    from tests.support.local_stack import SampleService

    other = SampleService(tmp_path / "other").start()
    try:
        stale_id = fresh_restate.server.register(other.url)
        fresh_restate.server.register(fresh_restate.service_url + "/")  # the kept one is latest
    finally:
        other.stop()
    keep = fresh_restate.service_url + "/"
    fresh_proxy.rules[("DELETE", "/deployments/")] = Fault(hook=fresh_restate.server.kill, times=1)

    with pytest.raises(AdminUnreachableError):
        await run_flow("cleanup-stale-deployments", service_url=keep)

    fresh_restate.server.start()
    assert await run_flow("cleanup-stale-deployments", service_url=keep) == {"acknowledged": True}
    listed = httpx.get(f"{fresh_restate.admin_url}/deployments", timeout=10).json()["deployments"]
    assert [d["id"] for d in listed] == [fresh_restate.deployment_id]
    assert stale_id not in str(listed)
