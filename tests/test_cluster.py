"""A real 3-node restate-server 1.7.12 cluster (replication 2): readiness, a workflow through a
second node, a node killed and restarted, and the state clear the recovery runbook relies on,
read again after the key's partition leader was killed (Restate issue 5416). Observations are
logged as ``OBSERVED ...`` lines (``-o log_cli=true --log-cli-level=INFO`` shows them);
docs/cluster.md has them."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from restate_recovery.doctor.probes import resolve_endpoints, run_doctor
from restate_recovery.doctor.render import verdict
from restate_recovery.errors import AdminUnreachableError
from restate_recovery.models import DoctorReadout
from restate_recovery.runbooks.recover import state_version
from restate_recovery.settings import get_settings
from restate_recovery.sql import invocation_id_literal, name_literal
from tests.support.cluster import ClusterNode, RestateCluster, wait_for
from tests.support.fault_proxy import Fault, FaultProxy, running
from tests.support.helpers import completed_at, sleep_of
from tests.support.local_stack import (
    PrefectServer,
    SampleService,
    StackError,
    submit_workflow,
    wait_for_status,
)
from tests.support.runbooks import run_flow

pytestmark = [pytest.mark.restate]

WORKFLOW = "IdentityRecoveryWorkflow"
ROLES = {"admin", "worker", "log-server", "metadata-server", "http-ingress"}
logger = logging.getLogger(__name__)


def observed(what: str, value: object) -> None:
    logger.info("OBSERVED %s: %s", what, value)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, sample_service: SampleService
) -> Iterator[RestateCluster]:
    """Three nodes, the session's sample service registered once (through node 1)."""
    base: Path = tmp_path_factory.mktemp("cluster")
    restate = RestateCluster(base).start()
    observed("cluster start seconds", round(restate.started_in_s or 0, 1))
    try:
        restate.register(sample_service.url)
        yield restate
    finally:
        restate.stop()
    assert not any(n.running for n in restate.nodes)


def state_of(node: ClusterNode, key: str) -> list[dict[str, Any]]:
    return node.query(
        "SELECT key, value, partition_key FROM state "
        f"WHERE service_name = {name_literal(WORKFLOW)} AND service_key = {name_literal(key)}"
    )


def leader_of_key(cluster: RestateCluster, partition_key: int) -> tuple[int, ClusterNode, int]:
    """The key's partition, its settled leader and that leader's epoch."""
    partition_id = cluster.partition_of_key(partition_key)
    (leader, epoch), _ = wait_for(
        "the key's partition has a settled leader",
        lambda: cluster.settled_leaders().get(partition_id),
        timeout=30,
    )
    return partition_id, leader, epoch


SKIPPED_MUTATION = "because we cannot find a vqueue entry state for it"


def clear_a_failed_key(cluster: RestateCluster) -> tuple[str, str, int, ClusterNode, int]:
    """A terminal-failed run of a new key (its state: the marker), then the runbook's clear
    (recover._clear_state: versioned, through the partition leader's admin API), read back
    empty on that node. Returns the key, the failed run's id, its partition, leader, epoch."""
    key = f"s5416_{uuid.uuid4().hex[:8]}"
    failed = submit_workflow(cluster.ingress_urls[0], key, "fail")
    wait_for_status(cluster.admin_urls[0], failed, "completed", timeout=60)
    before = state_of(cluster.nodes[0], key)
    assert [r["key"] for r in before] == ["attempt-marker"]
    partition_id, leader, epoch = leader_of_key(cluster, int(before[0]["partition_key"]))
    observed(f"{key} partition / leader / epoch", (partition_id, leader.name, epoch))
    response = httpx.post(
        f"{leader.admin_url}/services/{WORKFLOW}/state",
        json={"object_key": key, "new_state": {}, "version": state_version(before)},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    _, cleared_s = wait_for(
        "state reads back empty", lambda: state_of(leader, key) == [], timeout=10, interval=0.01
    )
    observed("seconds until the clear reads back empty on the leader", round(cleared_s, 2))
    return key, failed, partition_id, leader, epoch


def test_cluster_is_ready_and_a_workflow_through_node_2_completes(
    cluster: RestateCluster,
) -> None:
    rows = cluster.partition_state()
    partitions = sorted({int(r["partition_id"]) for r in rows})
    assert partitions == [0, 1, 2, 3]
    assert cluster.partitions_without_leader() == []
    # default-replication = 2: each partition's replica set has two nodes (a third processor
    # may run for a while as placement is improved after start)
    table = cluster.sql("SELECT partition_id, current_replica_set FROM partitions")
    assert sorted(int(r["partition_id"]) for r in table) == [0, 1, 2, 3]
    assert all(len(str(r["current_replica_set"]).split(",")) == 2 for r in table), table
    observed("partition_state", rows)
    observed("partitions", table)
    for node in cluster.nodes:
        health = node.health()
        assert set(health["roles"]) == ROLES, health
        assert health["cluster_name"] == "recovery-test-cluster"
    observed("node-1 /health", cluster.nodes[0].health())

    key = f"cl_{uuid.uuid4().hex[:8]}"
    invocation_id = submit_workflow(cluster.ingress_urls[1], key, "succeed")
    wait_for_status(cluster.admin_urls[1], invocation_id, "completed")
    # the same invocation, seen through the other nodes' admin API
    for admin_url in (cluster.admin_urls[0], cluster.admin_urls[2]):
        wait_for_status(admin_url, invocation_id, "completed", timeout=10)


def test_a_killed_node_shows_dead_the_others_keep_answering_and_it_comes_back(
    cluster: RestateCluster,
) -> None:
    # the node leading the most partitions, so leadership has to move
    names = cluster.plain_node_names()
    led = [
        names[str(r["plain_node_id"])]
        for r in cluster.partition_state()
        if str(r["effective_mode"]).lower() == "leader"
    ]
    victim = max(cluster.nodes, key=lambda n: led.count(n.name))
    survivors = [n for n in cluster.nodes if n is not victim]
    observed("killed", f"{victim.name}, leader of {led.count(victim.name)} of 4 partitions")
    cluster.kill(victim.index)
    killed_at = time.monotonic()
    try:
        with pytest.raises(httpx.TransportError):
            victim.health()
        for node in survivors:
            health = node.health()
            assert set(health["roles"]) == ROLES, health
            # a node's /health describes that node only: nothing there about the killed one
            assert victim.name not in str(health)
        observed("survivor /health after the kill", survivors[0].health())

        def query_ok() -> bool:
            for node in survivors:
                node.query("SELECT count(*) AS n FROM sys_invocation_status")
            return True

        def victim_dead() -> bool:
            rows = cluster.sql(f"SELECT state FROM nodes WHERE name = '{victim.name}'")
            return bool(rows) and rows[0]["state"] == "dead"

        checks = {
            "every partition has a leader on a survivor": lambda: (
                not cluster.partitions_without_leader()
            ),
            "both survivors answer admin /query": query_ok,
            "restatectl's nodes table says state = dead": victim_dead,
        }
        first_true: dict[str, float] = {}
        while len(first_true) < len(checks) and time.monotonic() - killed_at < 60:
            for what, check in checks.items():
                if what not in first_true:
                    try:
                        if check():
                            first_true[what] = round(time.monotonic() - killed_at, 1)
                    except (httpx.HTTPError, StackError):
                        pass
            time.sleep(0.05)
        observed("seconds from SIGKILL until", first_true)
        assert set(first_true) == set(checks), first_true
        status = cluster.restatectl("status")
        observed("restatectl status after the kill", status)
        victim_row = next(line for line in status.splitlines() if f" {victim.name} " in line)
        assert "offline" in victim_row.split(), status
        observed("nodes table after the kill", cluster.sql("SELECT * FROM nodes"))

        for row in cluster.partition_state():
            if str(row["effective_mode"]).lower() == "leader":
                assert cluster.plain_node_names()[str(row["plain_node_id"])] != victim.name

        key = f"cl_{uuid.uuid4().hex[:8]}"
        invocation_id = submit_workflow(survivors[1].ingress_url, key, "succeed")
        wait_for_status(survivors[0].admin_url, invocation_id, "completed", timeout=60)
    finally:
        restarted = time.monotonic()
        cluster.restart(victim.index)
    observed("seconds for the restarted node to be ready", round(time.monotonic() - restarted, 1))
    assert set(victim.health()["roles"]) == ROLES

    def victim_alive() -> bool:
        rows = cluster.sql(f"SELECT state FROM nodes WHERE name = '{victim.name}'")
        return bool(rows) and rows[0]["state"] == "alive"

    wait_for("node table shows the victim alive", victim_alive, timeout=60)
    # partitions move back to the rejoined node for a while: its /query may fail meanwhile
    # ("partition N doesn't exist on this node, this is benign ..."); count it, then it answers
    failures: list[float] = []
    ready_at = time.monotonic()
    while time.monotonic() - ready_at < 10:
        try:
            victim.query("SELECT count(*) AS n FROM sys_invocation_status")
        except StackError:
            failures.append(round(time.monotonic() - ready_at, 1))
        time.sleep(0.1)
    observed("restarted node's failed /query in the 10 s after it was ready (at s)", failures)
    wait_for(
        "the restarted node answers /query",
        lambda: victim.query("SELECT count(*) AS n FROM sys_invocation_status"),
        timeout=30,
    )


def test_a_cleared_state_stays_cleared_after_the_partition_leader_is_killed(
    cluster: RestateCluster,
) -> None:
    """Restate issue 5416 (fixed in 1.8.0): with vqueues enabled, a state change through the
    admin API was applied by the partition leader but could be skipped by its followers, so a
    new leader went on with the old state. vqueues are off by default in 1.7.12; this checks,
    on this cluster, the runbook's clear (versioned, read back) survives a leader change, and
    the next run of the key starts blank."""
    assert httpx.get(f"{cluster.admin_urls[0]}/version").json()["features"]["vqueues"] is False
    rows = cluster.partition_state()
    assert all("vqueues" not in (r.get("enabled_features") or []) for r in rows), rows

    key, failed, partition_id, leader, epoch = clear_a_failed_key(cluster)
    index = leader.index
    cluster.kill(index)
    try:
        survivors = cluster.live_nodes()
        (new_leader, new_epoch), moved_s = wait_for(
            "the key's partition has a new leader",
            lambda: cluster.settled_leaders().get(partition_id),
            timeout=60,
        )
        assert new_leader is not leader and new_leader.running and new_epoch > epoch
        observed("seconds until the partition has a new leader", round(moved_s, 1))
        observed("new leader / epoch", (new_leader.name, new_epoch))
        observed("partition_state after the kill", cluster.partition_state())
        # read it, from every surviving node, for a while: never the old marker
        reads: list[tuple[str, list[dict[str, Any]]]] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for node in survivors:
                try:
                    reads.append((node.name, state_of(node, key)))
                except Exception as exc:  # noqa: BLE001 - a leader change may fail a query
                    reads.append((node.name, [{"error": repr(exc)[:200]}]))
            time.sleep(0.1)
        answered = [(name, r) for name, r in reads if not (r and "error" in r[0])]
        observed("reads after the failover (answered / total)", (len(answered), len(reads)))
        observed("first failed read", next((r for r in reads if r[1] and "error" in r[1][0]), None))
        assert answered, reads
        assert all(r == [] for _, r in answered), [x for x in answered if x[1]]

        # the runbook's next step, and what the product promises: purge, the next run is blank
        purge = httpx.patch(f"{new_leader.admin_url}/invocations/{failed}/purge", timeout=10)
        assert purge.status_code in (200, 202), purge.text
        gone = f"SELECT id FROM sys_invocation WHERE id = {invocation_id_literal(failed)}"
        wait_for("the purged run is gone", lambda: new_leader.query(gone) == [], timeout=10)
        rerun = httpx.post(
            f"{new_leader.ingress_url}/{WORKFLOW}/{key}/run", json={"mode": "succeed"}, timeout=30
        )
        assert rerun.status_code == 200, rerun.text
        assert rerun.json() == {"mode": "succeed", "markerFoundAtStart": None}
    finally:
        cluster.restart(index)
    # read through the old leader, back: the new run's marker only
    expected = [("attempt-marker", b'"succeed"')]
    wait_for(
        "the new run's state, read through the restarted node",
        lambda: [(r["key"], bytes.fromhex(r["value"])) for r in state_of(leader, key)] == expected,
        timeout=30,
    )
    # the mechanism of 5416 (a follower skipping the leader's decision to run the mutation)
    # leaves this line in the follower's log: none on this cluster
    assert not [n.name for n in cluster.nodes if SKIPPED_MUTATION in n.log_path.read_text()]


@pytest.fixture
def vqueues_cluster(tmp_path: Path, sample_service: SampleService) -> Iterator[RestateCluster]:
    """The same cluster with 1.7.12's experimental vqueues switched on (off by default)."""
    restate = RestateCluster(
        tmp_path / "cluster", extra_config="experimental-enable-vqueues = true"
    )
    restate.start()
    try:
        restate.register(sample_service.url)
        yield restate
    finally:
        restate.stop()


def test_with_vqueues_enabled_a_follower_skips_the_cleared_state_issue_5416(
    vqueues_cluster: RestateCluster,
) -> None:
    """Reproduces 5416 on 1.7.12 with ``experimental-enable-vqueues = true``: the clear reads
    back empty through the leader (the runbook's check passes), but the partition's follower
    skips it: it logs that it will not run the leader's state mutation. The product cannot see
    this through the admin API; a cluster with vqueues on is not one the clear can rely on."""
    cluster = vqueues_cluster
    assert httpx.get(f"{cluster.admin_urls[0]}/version").json()["features"]["vqueues"] is True
    # each leader turns the feature on for its partition (replicas follow as they apply it)
    wait_for(
        "every partition replica has vqueues enabled",
        lambda: all("vqueues" in (r["enabled_features"] or []) for r in cluster.partition_state()),
        timeout=30,
    )
    assert not [n.name for n in cluster.nodes if SKIPPED_MUTATION in n.log_path.read_text()]

    _, _, partition_id, leader, _ = clear_a_failed_key(cluster)
    names = cluster.plain_node_names()

    def followers_now() -> list[ClusterNode]:  # gossip can lag: a replica's row comes a bit later
        replicas = {
            names[str(r["plain_node_id"])]
            for r in cluster.partition_state()
            if int(r["partition_id"]) == partition_id
        }
        return [n for n in cluster.nodes if n.name in replicas and n is not leader]

    followers, _ = wait_for("the partition's followers are listed", followers_now, timeout=30)
    skipped, skipped_s = wait_for(
        "a follower logs the skipped state mutation",
        lambda: [n for n in followers if SKIPPED_MUTATION in n.log_path.read_text()],
        timeout=30,
    )
    observed("followers that skipped the clear", [n.name for n in skipped])
    observed("seconds until the follower's log shows it", round(skipped_s, 1))
    lines = skipped[0].log_path.read_text().splitlines()
    line = next(line for line in lines if SKIPPED_MUTATION in line)
    observed("follower log line", line.strip())
    assert line.strip().startswith("Will not run mut_")


# --- the doctor and the runbooks on the cluster ------------------------------------------------


@pytest.fixture
def cluster_env(
    settings_env: pytest.MonkeyPatch, cluster: RestateCluster, sample_service: SampleService
) -> RestateCluster:
    """The tool configured for the cluster: its three admin APIs (node 1's first), node 2's
    ingress (as behind a load balancer), its three node URLs for the cluster readout."""
    settings_env.setenv("RESTATE_ADMIN_URL", ",".join(cluster.admin_urls))
    settings_env.setenv("RESTATE_INGRESS_URL", cluster.ingress_urls[1])
    settings_env.setenv("RESTATE_NODE_URLS", ",".join(cluster.node_urls))
    settings_env.setenv("RESTATE_SERVICE_URL", sample_service.url)
    settings_env.setenv("RECOVERY_WRITE_TIMEOUT_SECONDS", "5")
    get_settings.cache_clear()
    return cluster


async def doctor() -> DoctorReadout:
    return await run_doctor(resolve_endpoints(get_settings()))


async def doctor_until(what: str, check: Callable[[DoctorReadout], bool], timeout: float = 60
                       ) -> DoctorReadout:  # fmt: skip
    deadline = time.monotonic() + timeout
    readout = await doctor()
    while not check(readout):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s: {readout.to_json()}"
        await asyncio.sleep(0.5)
        readout = await doctor()
    return readout


def spec_parts_ok(readout: DoctorReadout) -> bool:
    return all(p.status == "ok" for n, p in readout.components() if n != "cluster")


def run_ids(cluster: RestateCluster, key: str, admin: int = 1) -> list[str]:
    rows = cluster.nodes[admin].query(
        "SELECT id FROM sys_invocation WHERE target_service_name = "
        f"{name_literal(WORKFLOW)} AND target_service_key = {name_literal(key)}"
    )
    return [str(r["id"]) for r in rows]


async def test_the_doctor_reads_the_cluster_names_a_killed_node_and_writes_go_through_another(
    prefect_server: PrefectServer, cluster_env: RestateCluster
) -> None:
    cluster = cluster_env
    healthy = await doctor_until(
        "all ok", lambda r: spec_parts_ok(r) and r.cluster is not None and r.cluster.status == "ok"
    )
    assert healthy.cluster is not None
    body = healthy.to_json()
    observed("cluster readout, healthy", body["cluster"])
    assert (healthy.cluster.kind, healthy.cluster.partitions) == ("cluster", 4)
    assert sorted((n.name, n.state) for n in healthy.cluster.nodes) == [
        (f"node-{i}", "alive") for i in (1, 2, 3)
    ]
    assert {tuple(n.roles) for n in healthy.cluster.nodes} == {
        ("admin", "worker", "metadata-server", "log-server", "ingress")
    }
    assert (body["admin"]["url"], body["admin"]["unanswered"]) == (cluster.admin_urls[0], [])
    assert {"ingress", "admin", "deployments", "services", "invocations"} < set(body)

    key = f"cd_{uuid.uuid4().hex[:8]}"
    failed = submit_workflow(cluster.ingress_urls[1], key, "fail")
    wait_for_status(cluster.admin_urls[1], failed, "completed", timeout=60)

    victim = cluster.nodes[0]
    plain = {name: plain for plain, name in cluster.plain_node_names().items()}[victim.name]
    cluster.kill(victim.index)
    try:
        dead = await doctor_until(
            "node 1 named dead, the spec's five ok",
            lambda r: (
                spec_parts_ok(r)
                and r.cluster is not None
                and any(p.kind == "node-dead" for p in r.cluster.problems)
            ),  # fmt: skip
        )
        assert dead.cluster is not None
        observed("cluster readout, node 1 killed", dead.to_json()["cluster"])
        assert dead.admin.url == cluster.admin_urls[1]
        assert dead.admin.unanswered == [cluster.admin_urls[0]]
        assert dead.cluster.source == cluster.node_urls[1]
        assert [p.subject for p in dead.cluster.problems if p.kind == "node-dead"] == [
            f"node {plain}"
        ]
        # only what the dead node affects: each problem is about it, or a partition or log
        # whose replica, leader or sequencer it was
        for problem in dead.cluster.problems:
            assert problem.kind in {"node-dead", "replica-lost", "partition-leaderless",
                                    "log-sequencer-dead"}, problem  # fmt: skip
            if problem.kind in {"replica-lost", "log-sequencer-dead"}:
                assert plain in problem.detail, problem
        assert "not ok: cluster" in verdict(dead)

        # the write goes through node 2's admin API
        assert await run_flow("recover-stuck-workflow", service_name=WORKFLOW, service_key=key) == {
            "acknowledged": True
        }
        assert run_ids(cluster, key) == []
    finally:
        cluster.restart(victim.index)
    back = await doctor_until(
        "ok again after the restart",
        lambda r: spec_parts_ok(r) and r.cluster is not None and r.cluster.status == "ok",
        timeout=90,
    )
    assert back.admin.url == cluster.admin_urls[0] and back.admin.unanswered == []


async def test_a_drain_and_freezes_left_on_are_shown_and_go_when_undone(
    cluster_env: RestateCluster,
) -> None:
    cluster = cluster_env
    await doctor_until("cluster ok", lambda r: r.cluster is not None and r.cluster.status == "ok")
    cluster.restatectl("partitions", "leadership", "freeze", "0", "--reason", "maintenance-L")
    cluster.restatectl("partitions", "placement", "freeze", "1", "--reason", "maintenance-P")
    cluster.restatectl("nodes", "set-worker-state", "--nodes", "N3", "--worker-state", "draining")
    try:
        shown = await doctor_until(
            "freezes and the drain shown",
            lambda r: r.cluster is not None and {"leadership-frozen", "placement-frozen",
                                                 "node-draining"} <= {p.kind for p in r.cluster.problems},  # noqa: E501
        )  # fmt: skip
        assert shown.cluster is not None
        details = [p.detail for p in shown.cluster.problems]
        observed("cluster problems with freezes and a drain", details)
        assert "partition 0: leadership is frozen (maintenance-L)" in details
        assert "partition 1: placement is frozen (maintenance-P)" in details
        assert any(d.startswith("node N3") and "draining" in d for d in details), details
        assert spec_parts_ok(shown)  # a drain and freezes affect the cluster part only
    finally:
        cluster.restatectl("nodes", "set-worker-state", "--nodes", "N3", "--worker-state", "active")
        cluster.restatectl("partitions", "placement", "unfreeze", "1")
        cluster.restatectl("partitions", "leadership", "unfreeze", "0")
    await doctor_until(
        "ok once undone", lambda r: r.cluster is not None and r.cluster.status == "ok", timeout=90
    )


@pytest.fixture
def first_admin_proxied(cluster_env: RestateCluster, settings_env: pytest.MonkeyPatch
                        ) -> Iterator[FaultProxy]:  # fmt: skip
    """Node 1's admin API behind a fault proxy (the first admin URL), to kill node 1 mid-write."""
    cluster = cluster_env
    with running(FaultProxy(upstream=cluster.admin_urls[0])) as proxy:
        settings_env.setenv("RESTATE_ADMIN_URL", ",".join([proxy.url, *cluster.admin_urls[1:]]))
        get_settings.cache_clear()
        yield proxy


async def test_a_node_killed_mid_recovery_answers_unreachable_and_the_rerun_converges(
    prefect_server: PrefectServer, cluster_env: RestateCluster, first_admin_proxied: FaultProxy
) -> None:
    """Node 1 (the admin API in use) dies as the purge is sent, after the state was cleared:
    the runbook answers RESTATE_ADMIN_UNREACHABLE (nothing reported done), the rerun goes
    through node 2 and finishes; the key's next run starts blank."""
    cluster = cluster_env
    key = f"mr_{uuid.uuid4().hex[:8]}"
    failed = submit_workflow(cluster.ingress_urls[1], key, "fail")
    wait_for_status(cluster.admin_urls[1], failed, "completed", timeout=60)
    first_admin_proxied.rules[("PATCH", "/invocations/")] = Fault(
        hook=lambda: cluster.kill(0), times=1
    )
    try:
        with pytest.raises(AdminUnreachableError):
            await run_flow("recover-stuck-workflow", service_name=WORKFLOW, service_key=key)
        assert not cluster.nodes[0].running
        # as an operator would: the doctor first, until the survivors serve every partition
        # (until then their /query can answer 500 "connect throttled", which a rerun reports
        # as RESTATE_WORKFLOW_RETRY_BLOCKED, query-failed: nothing done)
        await doctor_until("the survivors serve every partition", spec_parts_ok)
        assert await run_flow("recover-stuck-workflow", service_name=WORKFLOW, service_key=key) == {
            "acknowledged": True
        }
        assert run_ids(cluster, key) == []
        rerun = httpx.post(
            f"{cluster.ingress_urls[1]}/{WORKFLOW}/{key}/run", json={"mode": "succeed"}, timeout=60
        )
        assert rerun.json() == {"mode": "succeed", "markerFoundAtStart": None}
    finally:
        cluster.restart(0)


async def test_a_node_killed_mid_cleanup_answers_unreachable_and_the_rerun_converges(
    prefect_server: PrefectServer,
    cluster_env: RestateCluster,
    first_admin_proxied: FaultProxy,
    sample_service: SampleService,
    tmp_path: Path,
) -> None:
    cluster = cluster_env
    other = SampleService(tmp_path / "other").start()
    try:
        stale = cluster.register(other.url, node_index=1)
        kept = cluster.register(sample_service.url + "/", node_index=1)  # the newest: kept
    finally:
        other.stop()
    first_admin_proxied.rules[("DELETE", "/deployments/")] = Fault(
        hook=lambda: cluster.kill(0), times=1
    )
    keep = sample_service.url + "/"
    try:
        with pytest.raises(AdminUnreachableError):
            await run_flow("cleanup-stale-deployments", service_url=keep, force_drain=True)
        await doctor_until("the survivors serve every partition", spec_parts_ok)
        assert await run_flow("cleanup-stale-deployments", service_url=keep, force_drain=True) == {
            "acknowledged": True
        }
        listed = httpx.get(f"{cluster.admin_urls[1]}/deployments", timeout=10).json()
        assert [d["id"] for d in listed["deployments"]] == [kept]
        assert stale not in str(listed)
    finally:
        cluster.restart(0)


async def test_a_killed_runs_timer_never_wakes_the_keys_next_run_on_the_cluster(
    prefect_server: PrefectServer, cluster_env: RestateCluster
) -> None:
    """restatedev/restate#5425 on the cluster, as on one node (tests/test_recover.py): the
    recovery waits for the killed run's timer before it purges; the next run, through another
    node, sleeps its full time."""
    cluster = cluster_env
    admin, ingress = cluster.admin_urls[1], cluster.ingress_urls[1]
    key = f"ct_{uuid.uuid4().hex[:8]}"
    killed = submit_workflow(ingress, key, "sleep", seconds=8)
    wait_for(
        "the run sleeps",
        lambda: [r.get("key") for r in state_of(cluster.nodes[1], key)] == ["attempt-marker"],
        timeout=30,
    )
    httpx.patch(f"{admin}/invocations/{killed}/kill", timeout=10).raise_for_status()
    wait_for_status(admin, killed, "completed", timeout=30)
    due = sleep_of(admin, killed)

    assert await run_flow("recover-stuck-workflow", service_name=WORKFLOW, service_key=key) == {
        "acknowledged": True
    }
    purged_at = time.time()
    rerun = httpx.post(
        f"{cluster.ingress_urls[2]}/{WORKFLOW}/{key}/run",
        json={"mode": "sleep", "seconds": 6},
        timeout=60,
    )
    assert rerun.status_code == 200, rerun.text
    (again,) = run_ids(cluster, key)
    assert completed_at(admin, again) >= sleep_of(admin, again)  # woken by its own timer
    assert purged_at > due
