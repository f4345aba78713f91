"""The cluster readout's judgement (doctor.cluster.assess) on rows shaped as restatectl 1.7.12
printed them on a real 3-node cluster (docs/cluster.md), and the choice among several admin
URLs (a mock admin API: a node that refuses, one that answers)."""

from __future__ import annotations

from typing import Any

import httpx

from restate_recovery.doctor.cluster import assess, frozen
from restate_recovery.doctor.findings import CLUSTER_PREFIX, UNHEALTHY, doctor_findings
from restate_recovery.doctor.probes import Endpoints, choose_admin, run_doctor
from restate_recovery.doctor.render import readout_markdown, verdict

ROLES = {f"has_{r}_role": True for r in ("admin", "worker", "metadata_server", "log_server",
                                         "ingress")}  # fmt: skip


def node(n: int, **changes: Any) -> dict[str, Any]:
    row = {"plain_node_id": f"N{n}", "name": f"node-{n}", "state": "alive", **ROLES,
           "storage_state": "read-write", "worker_state": "active",
           "metadata_server_state": "member"}  # fmt: skip
    return {**row, **changes}


def replica(pid: int, n: int, leader: bool, **changes: Any) -> dict[str, Any]:
    row = {"partition_id": pid, "plain_node_id": f"N{n}", "replay_status": "active",
           "effective_mode": "Leader" if leader else "Follower", "applied_log_lsn": 4,
           "target_tail_lsn": 5}  # fmt: skip
    return {**row, **changes}


def healthy() -> dict[str, list[dict[str, Any]]]:
    sets = {0: (1, 3), 1: (2, 1), 2: (3, 2), 3: (2, 3)}
    return {
        "nodes": [node(1), node(2), node(3)],
        "partitions": [
            {"partition_id": p, "current_replica_set": f"N{a},N{b}"} for p, (a, b) in sets.items()
        ],
        "partition_state": [
            r for p, (a, b) in sets.items() for r in (replica(p, a, True), replica(p, b, False))
        ],
        "logs": [
            {
                "log_id": p,
                "kind": "replicated",
                "replication": "{node: 2}",
                "nodeset": "[N1, N3, N2]",
                "sequencer": f"N{a}:2",
            }
            for p, (a, _) in sets.items()
        ],  # fmt: skip
    }


UNFROZEN = {
    "leadership": " PARTITION  LEADER  FREEZE\n 0          N1      -\n 1          N2      -\n",
    "placement": " PARTITION  CURRENT        NEXT  AUTOMATIC PLACEMENT\n"
    " 0          [N1, N3] (v2)  -     ENABLED\n",
}


def kinds(tables: dict[str, list[dict[str, Any]]], shows: dict[str, str] = UNFROZEN) -> list[str]:
    return [f"{p.kind} {p.subject}" for p in assess(tables, shows, source="x").problems]


def test_a_healthy_cluster_is_ok_with_its_nodes_and_roles() -> None:
    readout = assess(healthy(), UNFROZEN, source="http://127.0.0.1:5122")
    assert (readout.status, readout.kind, readout.partitions, readout.logs) == (
        "ok", "cluster", 4, 4)  # fmt: skip
    assert [n.id for n in readout.nodes] == ["N1", "N2", "N3"]
    assert readout.nodes[0].roles == ["admin", "worker", "metadata-server", "log-server",
                                      "ingress"]  # fmt: skip
    assert readout.problems == []


def test_a_single_node_reports_itself_as_such_and_ok() -> None:
    tables = {
        "nodes": [node(1)],
        "partitions": [{"partition_id": 0, "current_replica_set": "N1"}],
        "partition_state": [replica(0, 1, True)],
        "logs": [
            {
                "log_id": 0,
                "kind": "replicated",
                "replication": "{node: 1}",
                "nodeset": "[N1]",
                "sequencer": "N1:2",
            }
        ],  # fmt: skip
    }
    readout = assess(tables, UNFROZEN, source="x")
    assert (readout.status, readout.kind, readout.problems) == ("ok", "single-node", [])


def test_a_dead_node_is_named_with_only_what_it_affects() -> None:
    """As seen 2 s after a SIGKILL of N1: its row says dead, its partition_state rows are gone,
    the logs' nodesets still list it (two of three copies can still be held)."""
    tables = healthy()
    tables["nodes"][0]["state"] = "dead"
    tables["partition_state"] = [
        r for r in tables["partition_state"] if r["plain_node_id"] != "N1"
    ] + [replica(0, 3, True), replica(1, 2, True)]
    tables["partition_state"] = [
        r for r in tables["partition_state"]
        if not (r["partition_id"] in (0, 1) and r["effective_mode"] == "Follower")
    ]  # fmt: skip
    tables["logs"][0]["sequencer"] = "N1:2"
    assert kinds(tables) == [
        "node-dead node N1",
        "replica-lost partition 0",
        "replica-lost partition 1",
        "log-sequencer-dead log 0",
    ]
    readout = assess(tables, UNFROZEN, source="x")
    assert readout.status == "degraded"
    assert "node N1 (node-1) is dead" in [p.detail for p in readout.problems]
    assert "1 of 2 replicas alive" in readout.problems[1].detail


def test_a_partition_whose_only_leader_is_on_a_dead_node_is_leaderless() -> None:
    tables = healthy()
    tables["nodes"][0]["state"] = "dead"  # its rows linger for a moment: they do not count
    assert "partition-leaderless partition 0" in kinds(tables)


def test_broken_lagging_and_under_replicated_are_each_named() -> None:
    tables = healthy()
    tables["partition_state"][0] = replica(0, 1, True, broken_reason="ahead_of_log")
    del tables["partition_state"][0]["replay_status"]
    tables["partition_state"][2] = replica(1, 2, True, applied_log_lsn=10, target_tail_lsn=5000)
    tables["nodes"][1]["storage_state"] = "data-loss"
    tables["nodes"][2]["storage_state"] = "disabled"
    found = kinds(tables)
    assert "partition-broken partition 0" in found
    assert "partition-lagging partition 1" in found
    assert found.count("log-under-replicated log 0") == 1
    assert {"storage-degraded node N2", "storage-degraded node N3"} <= set(found)


def test_a_draining_worker_and_freezes_left_on_are_named() -> None:
    tables = healthy()
    tables["nodes"][2]["worker_state"] = "draining"
    shows = {
        "leadership": " PARTITION  LEADER  FREEZE\n 0          N1      FROZEN: maint-test-L\n",
        "placement": " PARTITION  CURRENT        NEXT  AUTOMATIC PLACEMENT\n"
        " 1          [N1, N2] (v1)  -     FROZEN: maint-test-P\n",
    }
    readout = assess(tables, shows, source="x")
    assert [f"{p.kind} {p.subject}" for p in readout.problems] == [
        "node-draining node N3",
        "leadership-frozen partition 0",
        "placement-frozen partition 1",
    ]
    assert readout.problems[1].detail == "partition 0: leadership is frozen (maint-test-L)"
    assert frozen(UNFROZEN["leadership"]) == {}


def test_cluster_problems_become_findings_the_verdict_and_the_artifact() -> None:
    tables = healthy()
    tables["nodes"][0]["state"] = "dead"
    cluster = assess(tables, UNFROZEN, source="http://127.0.0.1:5122")
    base = {"status": "ok"}
    from restate_recovery.models import DoctorReadout

    readout = DoctorReadout.model_validate(
        {
            "ingress": base,
            "admin": base,
            "deployments": base,
            "services": base,
            "invocations": base,
            "cluster": cluster.to_json(),
        }  # fmt: skip
    )
    events = [(f.event, f.resource["prefect.resource.id"]) for f in doctor_findings(readout, None)]
    assert (UNHEALTHY, "restate.component.cluster") in events
    assert (CLUSTER_PREFIX + "node-dead", "restate.cluster.node.N1") in events
    assert verdict(readout) == "not ok: cluster"
    markdown = readout_markdown(readout)
    assert "| cluster | degraded | | cluster of 3 nodes (2 alive), 4 partitions" in markdown
    assert "- node N1 (node-1) is dead" in markdown
    assert "cluster" in readout.to_json()
    without = readout.model_copy(update={"cluster": None})
    assert "cluster" not in without.to_json()  # without RESTATE_NODE_URLS: the spec's five only


def admin_api(refusing: set[str]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host in refusing:
            raise httpx.ConnectError("connection refused", request=request)
        routes = {"/health": httpx.Response(200), "/version": httpx.Response(200, json={
            "version": "1.7.12", "min_admin_api_version": 1, "max_admin_api_version": 3}),
            "/deployments": httpx.Response(200, json={"deployments": []}),
            "/services": httpx.Response(200, json={"services": []}),
            "/query": httpx.Response(200, json={"rows": []})}  # fmt: skip
        return routes.get(request.url.path, httpx.Response(404))

    return httpx.MockTransport(handler)


THREE = Endpoints(
    admin_urls=("http://user:pw@n1:9070", "http://n2:9070", "http://n3:9070"),
    ingress_url=None,
    probe_timeout=1.0,
)


async def test_the_first_admin_url_that_answers_is_used_and_the_readout_says_which() -> None:
    chosen = await choose_admin(THREE, admin_api(refusing={"n1"}))
    assert chosen.admin_url == "http://n2:9070"
    assert chosen.unanswered == ("http://n1:9070",)  # shown without its credentials
    readout = await run_doctor(THREE, admin_transport=admin_api(refusing={"n1"}))
    admin = readout.to_json()["admin"]
    assert (admin["status"], admin["url"], admin["unanswered"]) == (
        "ok", "http://n2:9070", ["http://n1:9070"])  # fmt: skip
    assert "pw" not in str(readout.to_json())


async def test_with_every_admin_url_down_the_first_is_kept_and_reported_unreachable() -> None:
    chosen = await choose_admin(THREE, admin_api(refusing={"n1", "n2", "n3"}))
    assert chosen == THREE
    readout = await run_doctor(THREE, admin_transport=admin_api(refusing={"n1", "n2", "n3"}))
    assert readout.admin.status == "unreachable"
    assert readout.admin.url == "http://n1:9070"


async def test_one_admin_url_keeps_the_spec_fields_only() -> None:
    one = Endpoints(admin_urls=("http://n1:9070",), ingress_url=None, probe_timeout=1.0)
    readout = await run_doctor(one, admin_transport=admin_api(refusing=set()))
    assert set(readout.to_json()["admin"]) == {"status", "latencyMs", "version"}
    assert set(readout.to_json()) == {"ingress", "admin", "deployments", "services",
                                      "invocations"}  # fmt: skip


def test_the_cli_table_shows_the_cluster_row_its_problems_and_its_nodes() -> None:
    from rich.console import Console

    from restate_recovery.cli.render import render_readout

    tables = healthy()
    tables["nodes"][2]["worker_state"] = "draining"
    cluster = assess(tables, UNFROZEN, source="http://127.0.0.1:5122").to_json()
    base = {"status": "ok", "latencyMs": 1.0, "version": "1.7.12"}
    items: dict[str, Any] = {"status": "ok", "items": []}
    readout = {"ingress": base, "admin": {**base, "url": "http://n2:9070",
               "unanswered": ["http://n1:9070"]}, "deployments": items, "services": items,
               "invocations": {"status": "ok", "byStatus": {}}, "cluster": cluster}  # fmt: skip
    console = Console(record=True, width=200)
    render_readout(readout, console)
    text = console.export_text()
    assert "version 1.7.12 via http://n2:9070 (http://n1:9070 did not answer)" in text
    assert "cluster of 3 nodes (3 alive), 4 partitions, 4 logs, read via" in text
    assert "node N3 (node-3): its worker is draining" in text
    assert "Cluster nodes" in text and "node-3" in text and "draining" in text


def test_the_metrics_of_a_readout_with_a_dead_node() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from restate_recovery import metrics
    from restate_recovery.models import DoctorReadout

    tables = healthy()
    tables["nodes"][0]["state"] = "dead"
    cluster = assess(tables, UNFROZEN, source="x").to_json()
    base = {"status": "ok"}
    readout = DoctorReadout.model_validate(
        {
            "ingress": {"status": "unreachable"},
            "admin": base,
            "deployments": base,
            "services": base,
            "invocations": base,
            "cluster": cluster,
        }  # fmt: skip
    )
    from restate_recovery.doctor.findings import doctor_findings

    metrics.readout_read(readout, doctor_findings(readout, None))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(metrics.exposition().decode())
        for s in f.samples
    }
    status = "restate_recovery_doctor_component_status"
    assert samples[(status, (("component", "cluster"), ("status", "degraded")))] == 1
    assert samples[(status, (("component", "cluster"), ("status", "ok")))] == 0
    assert samples[(status, (("component", "ingress"), ("status", "unreachable")))] == 1
    findings = "restate_recovery_doctor_findings"
    assert samples[(findings, (("kind", "cluster.node-dead"),))] == 1
    assert samples[(findings, (("kind", "component.unhealthy"),))] == 2
