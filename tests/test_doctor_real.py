"""The doctor against a real restate-server and the real sample workflow service."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace

import httpx
import pytest

from restate_recovery.doctor.probes import Endpoints, ProbeClients, resolve_endpoints, run_doctor
from restate_recovery.doctor.render import verdict
from restate_recovery.errors import AdminUnreachableError
from restate_recovery.settings import Settings
from tests.conftest import RestateStack
from tests.support.fault_proxy import FaultProxy, running
from tests.support.helpers import black_hole_url, closed_port_url
from tests.support.local_stack import submit_workflow, wait_for_status

pytestmark = pytest.mark.restate


def endpoints(admin: str, ingress: str | None, timeout: float = 3.0) -> Endpoints:
    return Endpoints(admin_urls=(admin,), ingress_url=ingress, probe_timeout=timeout)


async def test_all_five_ok_against_the_real_server(restate: RestateStack) -> None:
    key = f"ok_{uuid.uuid4().hex[:8]}"
    invocation_id = submit_workflow(restate.ingress_url, key, "fail")
    wait_for_status(restate.admin_url, invocation_id, "completed")

    readout = await run_doctor(endpoints(restate.admin_url, restate.ingress_url))

    assert {name: part.status for name, part in readout.components()} == dict.fromkeys(
        ("ingress", "admin", "deployments", "services", "invocations"), "ok"
    )
    assert readout.admin.version == "1.7.12"
    assert readout.ingress.latency_ms is not None and readout.admin.latency_ms is not None
    assert [d.id for d in readout.deployments.items] == [restate.deployment_id]
    assert readout.deployments.items[0].service_url == restate.service_url + "/"
    assert readout.deployments.items[0].created_at.endswith("Z")  # type: ignore[union-attr]
    names = {s.name: s.revision for s in readout.services.items}
    assert names.keys() == {"IdentityRecoveryWorkflow", "FlakyWorkflow"}
    assert all(isinstance(r, int) for r in names.values())
    assert readout.invocations.by_status.get("completed", 0) >= 1
    failure = next(f for f in readout.invocations.recent_failures if f.id == invocation_id)
    assert failure.service_name == "IdentityRecoveryWorkflow"
    assert failure.service_key == key
    assert failure.status == "completed"
    assert failure.error_message == "[500] upstream provider returned a terminal failure"
    assert failure.failed_at is not None and failure.failed_at.endswith("Z")
    body = readout.to_json()
    assert set(body) == {"ingress", "admin", "deployments", "services", "invocations"}
    assert set(body["invocations"]) == {"status", "byStatus", "recentFailures", "error"}
    assert set(body["deployments"]["items"][0]) == {"id", "serviceUrl", "createdAt"}


async def test_backing_off_and_paused_runs_are_reported_as_failing_now(
    restate: RestateStack,
) -> None:
    key = f"now_{uuid.uuid4().hex[:8]}"
    retrying = submit_workflow(restate.ingress_url, key, "retry")
    paused = submit_workflow(restate.ingress_url, key, "x", workflow="FlakyWorkflow")
    wait_for_status(restate.admin_url, retrying, "backing-off")
    wait_for_status(restate.admin_url, paused, "paused")

    readout = await run_doctor(endpoints(restate.admin_url, restate.ingress_url))

    by_id = {f.id: f for f in readout.invocations.recent_failures}
    assert by_id[retrying].status == "backing-off"
    assert "upstream provider is still unavailable" in (by_id[retrying].error_message or "")
    assert by_id[paused].status == "paused"
    assert "flaky dependency refused the call" in (by_id[paused].error_message or "")
    assert readout.invocations.by_status["paused"] >= 1
    assert readout.invocations.by_status["backing-off"] >= 1


async def test_admin_port_closed_marks_admin_side_unreachable(restate: RestateStack) -> None:
    readout = await run_doctor(endpoints(closed_port_url(), restate.ingress_url))

    assert readout.ingress.status == "ok"
    assert readout.admin.status == "unreachable"
    assert readout.admin.version is None and readout.admin.latency_ms is None
    for part in (readout.deployments, readout.services, readout.invocations):
        assert part.status == "unreachable"
        assert part.error and "ConnectError" in part.error
    assert readout.deployments.items == [] and readout.invocations.recent_failures == []


async def test_ingress_down_marks_only_ingress(restate: RestateStack) -> None:
    readout = await run_doctor(endpoints(restate.admin_url, closed_port_url()))

    assert readout.ingress.status == "unreachable"
    assert readout.ingress.latency_ms is None
    assert [p.status for _, p in readout.components()][1:] == ["ok"] * 4


async def test_admin_that_never_answers_is_bounded_by_the_probe_timeout(
    restate: RestateStack,
) -> None:
    with black_hole_url() as silent:
        started = time.monotonic()
        readout = await run_doctor(endpoints(silent, restate.ingress_url, timeout=1.0))
        elapsed = time.monotonic() - started

    assert elapsed < 2.5, elapsed  # all probes run concurrently, each bounded by 1 s
    assert readout.ingress.status == "ok"
    for part in (readout.admin, readout.deployments, readout.services, readout.invocations):
        assert part.status == "unreachable"
    assert readout.services.error is not None


async def test_recent_failures_are_capped_at_20_newest_first(fresh_restate: RestateStack) -> None:
    submitted = []
    for n in range(25):
        invocation_id = submit_workflow(fresh_restate.ingress_url, f"cap_{n:02d}", "fail")
        wait_for_status(fresh_restate.admin_url, invocation_id, "completed")
        submitted.append(invocation_id)

    readout = await run_doctor(endpoints(fresh_restate.admin_url, fresh_restate.ingress_url))

    failures = readout.invocations.recent_failures
    assert len(failures) == 20
    assert [f.id for f in failures] == list(reversed(submitted))[:20]
    stamps = [f.failed_at or "" for f in failures]
    assert stamps == sorted(stamps, reverse=True)
    assert readout.invocations.by_status == {"completed": 25}


@pytest.mark.parametrize("admin_url", [None, "", "   ", "not a url", "ftp://host:9070", "http://"])
def test_unresolvable_admin_url_is_the_only_error(admin_url: str | None) -> None:
    settings = Settings(restate_admin_url=admin_url, restate_ingress_url="http://127.0.0.1:1")
    with pytest.raises(AdminUnreachableError) as info:
        resolve_endpoints(settings)
    assert info.value.code == "RESTATE_ADMIN_UNREACHABLE"
    assert "RESTATE_ADMIN_URL" in info.value.message


class Recording(httpx.AsyncHTTPTransport):
    """A real transport that notes each request's path as it starts and ``sent <path>`` once it
    is on the wire (and can hold /query back before anything is sent, until cancelled)."""

    def __init__(self, log: list[str], *, hold_queries: bool = False) -> None:
        super().__init__()
        self.log, self.hold_queries = log, hold_queries

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.log.append(path)
        if self.hold_queries and path == "/query":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.log.append("query cancelled")
                raise
        inner = request.extensions.get("trace")

        async def trace(event: str, info: dict[str, object]) -> None:
            if event == "http11.send_request_body.complete":
                self.log.append(f"sent {path}")
            if inner is not None:
                await inner(event, info)

        request.extensions["trace"] = trace
        return await super().handle_async_request(request)


async def test_invocation_queries_go_out_before_the_small_probes(restate: RestateStack) -> None:
    log: list[str] = []
    transport = Recording(log)
    readout = await run_doctor(
        endpoints(restate.admin_url, restate.ingress_url),
        admin_transport=transport,
        ingress_transport=transport,
    )

    assert {part.status for _, part in readout.components()} == {"ok"}
    small = ["/restate/health", "/health", "/deployments", "/services"]
    assert log[:4] == ["/query", "/query", "sent /query", "sent /query"], log
    assert set(small) <= set(log[4:])


async def test_small_probes_do_not_wait_for_queries_that_cannot_be_sent(
    restate: RestateStack,
) -> None:
    log: list[str] = []
    readout = await run_doctor(
        endpoints(restate.admin_url, restate.ingress_url, timeout=1.0),
        admin_transport=Recording(log, hold_queries=True),
        ingress_transport=Recording(log),
    )

    assert readout.invocations.status == "unreachable"
    assert [p.status for _, p in readout.components()][:4] == ["ok"] * 4
    # the small probes ran while the queries were still held, not after their timeout
    assert log.index("query cancelled") > max(log.index(p) for p in ("/health", "/services"))


async def test_kept_clients_reconnect_after_restate_restarts(
    fresh_restate: RestateStack,
) -> None:
    target = endpoints(fresh_restate.admin_url, fresh_restate.ingress_url)
    clients = ProbeClients(target)
    try:
        before = await run_doctor(target, clients=clients)
        fresh_restate.server.kill()
        fresh_restate.server.start()
        # a just-restarted server may refuse queries for a moment (degraded): wait until a
        # doctor on new connections is all ok, then ask again on the kept ones
        deadline = time.monotonic() + 30
        while {p.status for _, p in (await run_doctor(target)).components()} != {"ok"}:
            assert time.monotonic() < deadline, "restate-server did not come back"
            await asyncio.sleep(0.2)
        after = await run_doctor(target, clients=clients)
    finally:
        await clients.aclose()

    for readout in (before, after):
        assert {name: part.status for name, part in readout.components()} == dict.fromkeys(
            ("ingress", "admin", "deployments", "services", "invocations"), "ok"
        )


SMALL_ADMIN_PROBES = ("/health", "/version", "/deployments", "/services")


async def test_kept_clients_reuse_connections_idle_longer_than_httpx_default(
    restate: RestateStack,
) -> None:
    """An operator asking again after 6 s gets the connections of the last call (httpx alone
    would have dropped them after 5 s)."""
    with running(FaultProxy(upstream=restate.admin_url), keep_alive=60) as proxy:
        target = endpoints(proxy.url, restate.ingress_url)
        clients = ProbeClients(target)
        try:
            await run_doctor(target, clients=clients)
            first = {port for path, port in proxy.peers if path in SMALL_ADMIN_PROBES}
            proxy.peers.clear()
            await asyncio.sleep(6)
            again = await run_doctor(target, clients=clients)
        finally:
            await clients.aclose()
    assert {p.status for _, p in again.components()} == {"ok"}
    second = {port for path, port in proxy.peers if path in SMALL_ADMIN_PROBES}
    assert second and second <= first


async def test_connections_a_proxy_closed_while_idle_are_replaced_not_reported(
    restate: RestateStack,
) -> None:
    """A proxy in front of Restate's admin API drops idle connections after 1 s, sooner than
    the doctor keeps them: each next call opens new ones, and nothing is reported unhealthy.
    (The race of a close arriving just as a connection is reused: tests/test_client.py.)"""
    with running(FaultProxy(upstream=restate.admin_url), keep_alive=1) as proxy:
        target = endpoints(proxy.url, restate.ingress_url)
        clients = ProbeClients(target)
        readouts, ports = [], []
        try:
            for _ in range(3):
                proxy.peers.clear()
                readouts.append(await run_doctor(target, clients=clients))
                ports.append({port for path, port in proxy.peers if path in SMALL_ADMIN_PROBES})
                await asyncio.sleep(2)
        finally:
            await clients.aclose()
    for readout in readouts:
        assert {p.status for _, p in readout.components()} == {"ok"}
    assert all(ports)  # the small admin probes did go through the proxy
    assert not ports[0] & ports[1] and not ports[1] & ports[2]  # new connections each time


async def test_a_single_node_given_its_node_url_reports_itself_as_one_node_and_ok(
    restate: RestateStack,
) -> None:
    """RESTATE_NODE_URLS on a one-node server: the cluster part says single node, ok (not
    degraded: replication 1 is its whole nodeset); a node URL that does not answer is
    unreachable, and the spec's five components are not touched by either."""
    node_url = f"http://127.0.0.1:{restate.server.node_port}"
    one = endpoints(restate.admin_url, restate.ingress_url)
    readout = await run_doctor(replace(one, node_urls=(node_url,)))
    assert readout.cluster is not None
    assert (readout.cluster.status, readout.cluster.kind) == ("ok", "single-node")
    assert readout.cluster.problems == [] and readout.cluster.error is None
    assert [n.state for n in readout.cluster.nodes] == ["alive"]
    assert readout.cluster.source == node_url
    assert readout.cluster.logs is not None and readout.cluster.logs >= 1
    assert readout.cluster.partitions == readout.cluster.logs
    assert verdict(readout) == "all ok"

    gone = await run_doctor(replace(one, node_urls=(closed_port_url(),)))
    assert gone.cluster is not None and gone.cluster.status == "unreachable"
    assert "none of the 1 node URLs answered" in (gone.cluster.error or "")
    assert {n: p.status for n, p in gone.components() if n != "cluster"} == dict.fromkeys(
        ("ingress", "admin", "deployments", "services", "invocations"), "ok"
    )

    no_ctl = await run_doctor(replace(one, node_urls=(node_url,), restatectl_bin="/nonexistent"))
    assert no_ctl.cluster is not None and no_ctl.cluster.status == "degraded"
    assert "restatectl could not be started" in (no_ctl.cluster.error or "")
