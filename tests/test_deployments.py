"""force-redeploy and cleanup-stale-deployments against real restate-servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from restate_recovery.errors import AdminUnreachableError, DeploymentNotFoundError
from restate_recovery.settings import get_settings
from tests.conftest import RestateStack
from tests.support.fault_proxy import Fault, FaultProxy, running
from tests.support.helpers import closed_port_url
from tests.support.local_stack import (
    PrefectServer,
    SampleService,
    submit_workflow,
    wait_for_status,
)
from tests.support.runbooks import run_flow

pytestmark = [pytest.mark.restate, pytest.mark.prefect]


def query_status(admin_url: str, invocation_id: str) -> str | None:
    rows = httpx.post(
        f"{admin_url}/query",
        json={"query": f"SELECT status FROM sys_invocation WHERE id = '{invocation_id}'"},
        headers={"accept": "application/json"},
        timeout=10,
    ).json()["rows"]
    return rows[0].get("status") if rows else None


def deployments(admin_url: str) -> dict[str, str]:
    body = httpx.get(f"{admin_url}/deployments", timeout=10).json()
    return {d["id"]: d["uri"] for d in body["deployments"]}


def make_kept_latest(env: RestateStack) -> None:
    """Register the kept URL again, as an operator does before a cleanup: it then holds the
    latest revision of its services, and the stale deployment holds none (only work pinned to
    it). A stale deployment holding a latest revision is never deleted without forceDrain."""
    assert env.server.register(env.service_url + "/") == env.deployment_id


@pytest.fixture
def fresh_env(settings_env: pytest.MonkeyPatch, fresh_restate: RestateStack) -> RestateStack:
    settings_env.setenv("RESTATE_ADMIN_URL", fresh_restate.admin_url)
    settings_env.setenv("RESTATE_INGRESS_URL", fresh_restate.ingress_url)
    settings_env.setenv("RECOVERY_DRAIN_TIMEOUT_SECONDS", "2")
    get_settings.cache_clear()
    return fresh_restate


@pytest.fixture
def second_service(tmp_path: Path) -> Iterator[SampleService]:
    service = SampleService(tmp_path / "second").start()
    yield service
    service.stop()


async def test_force_redeploy_registers_and_returns_the_id(
    prefect_server: PrefectServer, fresh_env: RestateStack, second_service: SampleService
) -> None:
    result = await run_flow("force-redeploy", service_url=second_service.url)

    assert set(result) == {"acknowledged", "deploymentId"}
    assert result["acknowledged"] is True
    assert deployments(fresh_env.admin_url)[result["deploymentId"]] == second_service.url + "/"
    assert fresh_env.deployment_id in deployments(fresh_env.admin_url)  # nothing deleted


async def test_force_redeploy_of_the_same_url_keeps_its_id(
    prefect_server: PrefectServer, fresh_env: RestateStack
) -> None:
    result = await run_flow("force-redeploy", service_url=fresh_env.service_url, force=True)
    assert result == {"acknowledged": True, "deploymentId": fresh_env.deployment_id}


async def test_force_redeploy_of_an_unreachable_url_is_a_clear_error(
    prefect_server: PrefectServer, fresh_env: RestateStack
) -> None:
    dead = closed_port_url()
    with pytest.raises(AdminUnreachableError) as info:
        await run_flow("force-redeploy", service_url=dead)
    assert "META0003" in info.value.message
    assert list(deployments(fresh_env.admin_url)) == [fresh_env.deployment_id]


async def test_force_redeploy_dry_run_discovers_but_registers_nothing(
    prefect_server: PrefectServer, fresh_env: RestateStack, second_service: SampleService
) -> None:
    result = await run_flow("force-redeploy", service_url=second_service.url, dry_run=True)

    assert result["dryRun"] is True and result["acknowledged"] is False
    (step,) = result["plan"]
    assert step["action"] == "register" and "IdentityRecoveryWorkflow" in step["detail"]
    assert list(deployments(fresh_env.admin_url)) == [fresh_env.deployment_id]


async def test_cleanup_deletes_the_dead_stale_deployment_and_keeps_the_live_one(
    prefect_server: PrefectServer, fresh_env: RestateStack, second_service: SampleService
) -> None:
    stale_id = fresh_env.server.register(second_service.url)
    make_kept_latest(fresh_env)
    second_service.stop()  # the stale deployment's service is dead
    live_url = fresh_env.service_url + "/"

    result = await run_flow("cleanup-stale-deployments", service_url=live_url)

    assert result == {"acknowledged": True}
    assert deployments(fresh_env.admin_url) == {fresh_env.deployment_id: live_url}
    assert stale_id not in deployments(fresh_env.admin_url)
    readout = await run_flow("doctor")
    assert readout.services.status == "ok"


async def test_cleanup_kills_work_pinned_to_an_unreachable_stale_deployment(
    prefect_server: PrefectServer, fresh_env: RestateStack, second_service: SampleService
) -> None:
    stale_id = fresh_env.server.register(second_service.url)  # now the latest: new runs pin to it
    pinned = submit_workflow(fresh_env.ingress_url, "pinned_1", "sleep", seconds=600)
    wait_for_status(fresh_env.admin_url, pinned, "running")
    make_kept_latest(fresh_env)
    second_service.stop()

    result = await run_flow("cleanup-stale-deployments", service_url=fresh_env.service_url + "/")

    assert result == {"acknowledged": True}
    assert stale_id not in deployments(fresh_env.admin_url)
    wait_for_status(fresh_env.admin_url, pinned, "completed")


async def test_cleanup_never_kills_work_on_a_stale_deployment_only_restate_can_reach(
    prefect_server: PrefectServer, fresh_env: RestateStack, second_service: SampleService
) -> None:
    """A network policy lets only Restate reach the stale deployment's service (a proxy that
    drops every connection but Restate's, which sends no User-Agent). Whether the service answers
    is asked of Restate (a discovery it runs), so the pinned work is waited on and, not drained
    in time, left running with its deployment; this tool never calls the service itself."""
    policy = FaultProxy(second_service.url, admit=lambda headers: "user-agent" not in headers)
    with running(policy):
        response = httpx.post(
            f"{fresh_env.admin_url}/deployments",
            json={"uri": policy.url, "force": True, "use_http_11": True},
            timeout=30,
        )
        stale_id = response.json()["id"]  # now the latest: new runs pin to it
        pinned = submit_workflow(fresh_env.ingress_url, "behind_policy", "sleep", seconds=600)
        wait_for_status(fresh_env.admin_url, pinned, "suspended")
        make_kept_latest(fresh_env)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{policy.url}/discover", timeout=5)  # this host is not let through

        result = await run_flow(
            "cleanup-stale-deployments", service_url=fresh_env.service_url + "/"
        )

    assert result == {"acknowledged": True}
    assert stale_id in deployments(fresh_env.admin_url)  # left in place: it did not drain
    status = query_status(fresh_env.admin_url, pinned)
    assert status == "suspended"  # not killed
    assert [ua for ua in policy.user_agents if ua] == ["python-httpx/" + httpx.__version__]
    httpx.patch(f"{fresh_env.admin_url}/invocations/{pinned}/kill", timeout=10)


async def test_cleanup_never_kills_work_on_a_stale_deployment_whose_proxy_answers_504(
    prefect_server: PrefectServer, fresh_env: RestateStack, second_service: SampleService
) -> None:
    """Restate's discovery of the stale deployment gets an HTTP answer (a proxy's 504): it reached
    something, so the pinned work is waited on and left, never killed."""
    gateway = FaultProxy(
        second_service.url, rules={("GET", "/discover"): Fault(status=504, times=None)}
    )
    with running(gateway):
        del gateway.rules[("GET", "/discover")]  # registration needs a real discovery
        response = httpx.post(
            f"{fresh_env.admin_url}/deployments",
            json={"uri": gateway.url, "force": True, "use_http_11": True},
            timeout=30,
        )
        stale_id = response.json()["id"]
        pinned = submit_workflow(fresh_env.ingress_url, "behind_504", "sleep", seconds=600)
        wait_for_status(fresh_env.admin_url, pinned, "suspended")
        make_kept_latest(fresh_env)
        gateway.rules[("GET", "/discover")] = Fault(
            status=504, body=b"upstream request timeout", content_type="text/plain"
        )

        result = await run_flow(
            "cleanup-stale-deployments", service_url=fresh_env.service_url + "/"
        )

    assert result == {"acknowledged": True}
    assert stale_id in deployments(fresh_env.admin_url)
    assert query_status(fresh_env.admin_url, pinned) == "suspended"  # not killed
    httpx.patch(f"{fresh_env.admin_url}/invocations/{pinned}/kill", timeout=10)


async def test_cleanup_waits_for_a_reachable_stale_deployment_then_leaves_it(
    prefect_server: PrefectServer, fresh_env: RestateStack, second_service: SampleService
) -> None:
    stale_id = fresh_env.server.register(second_service.url)
    pinned = submit_workflow(fresh_env.ingress_url, "pinned_2", "sleep", seconds=600)
    wait_for_status(fresh_env.admin_url, pinned, "running")
    make_kept_latest(fresh_env)

    result = await run_flow(
        "cleanup-stale-deployments", service_url=fresh_env.service_url + "/"
    )  # drain timeout is 2 s here: the sleeping run does not drain

    assert result == {"acknowledged": True}  # per-deployment failures keep the shape
    assert stale_id in deployments(fresh_env.admin_url)
    forced = await run_flow(
        "cleanup-stale-deployments", service_url=fresh_env.service_url + "/", force_drain=True
    )
    assert forced == {"acknowledged": True}
    assert stale_id not in deployments(fresh_env.admin_url)
    wait_for_status(fresh_env.admin_url, pinned, "completed")


async def test_cleanup_with_an_unknown_url_is_not_found_and_deletes_nothing(
    prefect_server: PrefectServer, fresh_env: RestateStack, second_service: SampleService
) -> None:
    fresh_env.server.register(second_service.url)
    before = deployments(fresh_env.admin_url)

    with pytest.raises(DeploymentNotFoundError) as info:
        await run_flow("cleanup-stale-deployments", service_url=fresh_env.service_url)  # no "/"

    assert info.value.http_status == 404
    for url in before.values():
        assert url in info.value.message  # the operator can copy the right one
    assert deployments(fresh_env.admin_url) == before
    state = await flow_run_state(f"cleanup-stale-deployments/{fresh_env.service_url}")
    assert state[0] == "FAILED" and "RESTATE_DEPLOYMENT_NOT_FOUND" in state[1]


async def test_cleanup_dry_run_changes_nothing(
    prefect_server: PrefectServer, fresh_env: RestateStack, second_service: SampleService
) -> None:
    stale_id = fresh_env.server.register(second_service.url)
    make_kept_latest(fresh_env)
    before = deployments(fresh_env.admin_url)

    result = await run_flow(
        "cleanup-stale-deployments", service_url=fresh_env.service_url + "/", dry_run=True
    )

    assert result["dryRun"] is True
    assert ("delete", stale_id) in [(s["action"], s["target"]) for s in result["plan"]]
    assert ("keep", fresh_env.deployment_id) in [(s["action"], s["target"]) for s in result["plan"]]
    assert deployments(fresh_env.admin_url) == before


async def test_cleanup_never_rolls_a_service_back_by_deleting_its_latest_revision(
    prefect_server: PrefectServer, fresh_env: RestateStack, second_service: SampleService
) -> None:
    """The stale deployment was registered after the kept one: it holds the latest revision of
    the services, and deleting it would send their new runs back to the kept, older revision.
    It is left (the plan says why) until forceDrain, or until the kept URL is registered again."""
    stale_id = fresh_env.server.register(second_service.url)
    keep = fresh_env.service_url + "/"

    planned = await run_flow("cleanup-stale-deployments", service_url=keep, dry_run=True)
    result = await run_flow("cleanup-stale-deployments", service_url=keep)

    (skip,) = [s for s in planned["plan"] if s["target"] == stale_id]
    assert skip["action"] == "skip" and "latest revision of" in skip["detail"]
    assert "IdentityRecoveryWorkflow" in skip["detail"]
    assert result == {"acknowledged": True}
    assert stale_id in deployments(fresh_env.admin_url)
    services = httpx.get(f"{fresh_env.admin_url}/services", timeout=10).json()["services"]
    assert {s["deployment_id"] for s in services} == {stale_id}  # nothing rolled back

    make_kept_latest(fresh_env)
    assert await run_flow("cleanup-stale-deployments", service_url=keep) == {"acknowledged": True}
    assert deployments(fresh_env.admin_url) == {fresh_env.deployment_id: keep}


async def test_cleanup_keeps_a_deployment_that_unpinned_paused_work_may_need(
    prefect_server: PrefectServer, fresh_env: RestateStack, second_service: SampleService
) -> None:
    """A run paused on the stale deployment shows no pinned deployment (Restate 1.7): it may need
    it, so the stale deployment stays (the plan says why) unless forceDrain, which deletes it and
    kills nothing it cannot tie to it (the paused run stays paused)."""
    stale_id = fresh_env.server.register(second_service.url)
    paused = submit_workflow(fresh_env.ingress_url, "flaky_1", "x", workflow="FlakyWorkflow")
    wait_for_status(fresh_env.admin_url, paused, "paused")
    rows = httpx.post(
        f"{fresh_env.admin_url}/query",
        json={"query": f"SELECT pinned_deployment_id FROM sys_invocation WHERE id = '{paused}'"},
        headers={"accept": "application/json"},
        timeout=10,
    ).json()["rows"]
    assert rows == [{}]  # no pinned deployment, although it ran (twice) on the stale one
    make_kept_latest(fresh_env)
    keep = fresh_env.service_url + "/"

    planned = await run_flow("cleanup-stale-deployments", service_url=keep, dry_run=True)
    left = await run_flow("cleanup-stale-deployments", service_url=keep)

    (skip,) = [s for s in planned["plan"] if s["target"] == stale_id]
    assert skip["action"] == "skip" and paused in skip["detail"]
    assert left == {"acknowledged": True}
    assert stale_id in deployments(fresh_env.admin_url)
    forced = await run_flow("cleanup-stale-deployments", service_url=keep, force_drain=True)
    assert forced == {"acknowledged": True}
    assert stale_id not in deployments(fresh_env.admin_url)
    assert query_status(fresh_env.admin_url, paused) == "paused"  # not killed


def test_cleanup_spares_a_deployment_holding_a_latest_revision() -> None:
    """Plan only: a stale deployment holding the latest revision of a service is skipped unless
    forceDrain, whether or not the kept one serves that service too."""
    from restate_recovery.models import Deployment, ServiceInfo, ServiceRevision
    from restate_recovery.runbooks.cleanup import build_plan
    from restate_recovery.schemas import CleanupStaleDeploymentsRequest

    keep = Deployment(id="dp_keep", uri="http://a/", services=[ServiceRevision(name="A")])
    newer = Deployment(id="dp_newer", uri="http://b/", services=[ServiceRevision(name="A")])
    older = Deployment(id="dp_older", uri="http://c/", services=[ServiceRevision(name="A")])
    services = [ServiceInfo(name="A", deployment_id="dp_newer")]
    for force_drain, expected in ((False, "skip"), (True, "delete")):
        plan = build_plan(
            deployments=[keep, newer, older],
            services=services,
            pinned_rows=[],
            request=CleanupStaleDeploymentsRequest(
                service_url="http://a/", force_drain=force_drain
            ),
        )
        steps = {s.target: s.action for s in plan.steps()}
        assert steps == {"dp_keep": "keep", "dp_newer": expected, "dp_older": "delete"}


def test_cleanup_spares_the_only_deployment_of_a_service_the_kept_one_lacks() -> None:
    """Keep a deployment that serves nothing the other serves: the other is left alone."""
    from restate_recovery.models import Deployment, ServiceInfo, ServiceRevision
    from restate_recovery.runbooks.cleanup import build_plan
    from restate_recovery.schemas import CleanupStaleDeploymentsRequest

    keep = Deployment(id="dp_keep", uri="http://a/", services=[ServiceRevision(name="A")])
    other = Deployment(id="dp_other", uri="http://b/", services=[ServiceRevision(name="B")])
    services = [
        ServiceInfo(name="A", deployment_id="dp_keep"),
        ServiceInfo(name="B", deployment_id="dp_other"),
    ]
    for force_drain, expected in ((False, "skip"), (True, "delete")):
        plan = build_plan(
            deployments=[keep, other],
            services=services,
            pinned_rows=[],
            request=CleanupStaleDeploymentsRequest(
                service_url="http://a/", force_drain=force_drain
            ),
        )
        assert [(s.action, s.target) for s in plan.steps()][1] == (expected, "dp_other")


async def flow_run_state(name: str) -> tuple[str, str]:
    async with get_client() as client:
        (run,) = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )
    assert run.state is not None
    return run.state.type.value, run.state.message or ""


async def test_a_cleanup_racing_a_registration_never_interleaves(
    prefect_server: PrefectServer,
    fresh_env: RestateStack,
    second_service: SampleService,
    settings_env: pytest.MonkeyPatch,
) -> None:
    """Both take the one deployments lock. The cleanup's delete of a stale deployment is held
    for a while at the admin API (a proxy); a registration started meanwhile reaches the admin
    API only after the cleanup's delete was answered, never while it is held. Without the lock
    the registration's POST would arrive during the hold."""
    import asyncio

    keep = fresh_env.service_url + "/"
    stale = httpx.post(
        f"{fresh_env.admin_url}/deployments",
        json={"uri": f"{second_service.url}/stale/", "force": True},
        timeout=30,
    ).json()["id"]
    make_kept_latest(fresh_env)
    deleting = asyncio.Event()
    loop = asyncio.get_running_loop()

    def held() -> None:  # runs in the proxy's thread as the delete arrives
        loop.call_soon_threadsafe(deleting.set)

    proxy = FaultProxy(
        fresh_env.admin_url, rules={("DELETE", "/deployments/"): Fault(delay=2.0, hook=held)}
    )
    with running(proxy):
        settings_env.setenv("RESTATE_ADMIN_URL", proxy.url)
        get_settings.cache_clear()
        cleaning = asyncio.ensure_future(run_flow("cleanup-stale-deployments", service_url=keep))
        await asyncio.wait_for(deleting.wait(), timeout=60)
        redeploy = await run_flow("force-redeploy", service_url=second_service.url)
        cleanup = await cleaning

    assert cleanup == {"acknowledged": True}
    delete_answered = next(
        t for t, what, request in proxy.timeline
        if what == "out" and request == f"DELETE /deployments/{stale}"
    )  # fmt: skip
    registration_arrived = next(
        t for t, what, request in proxy.timeline if what == "in" and request == "POST /deployments"
    )
    assert registration_arrived > delete_answered
    assert deployments(fresh_env.admin_url) == {
        fresh_env.deployment_id: keep,
        redeploy["deploymentId"]: second_service.url + "/",
    }
