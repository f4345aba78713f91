"""A real 3-node restate-server cluster on loopback, for tests that need replication and failover.

Every node runs every role (metadata-server, admin, worker, log-server, http-ingress) with its own
free ports and its own data and log under ``base_dir/node-N``. The first node auto-provisions the
cluster (``default-replication = 2``, replicated loglet, replicated metadata); the others join it.
``start()`` returns once every node answers and every partition has a settled leader
(``wait_ready``). Cluster tables (``nodes``, ``partitions``, ``partition_state``) are read with the
pinned restatectl (``tools/restate``). See docs/cluster.md for what was observed on 1.7.12.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.local_stack import (
    StackError,
    _kill,
    _npm_binary,
    _terminate,
    free_port,
    restate_server_binary,
)

CLUSTER_NAME = "recovery-test-cluster"
# Cluster-wide view of every partition processor (from the nodes' gossip), one row per replica.
PARTITION_STATE_SQL = (
    "SELECT partition_id, plain_node_id, gen_node_id, effective_mode, leader, leader_epoch, "
    "enabled_features FROM partition_state ORDER BY partition_id, plain_node_id"
)


def restatectl_binary() -> Path:
    return _npm_binary("restatectl", "restatectl", "RESTATECTL_BIN")


def _child_env() -> dict[str, str]:
    # a RESTATE_* variable of the caller would override the node's config file
    return {k: v for k, v in os.environ.items() if not k.startswith("RESTATE")}


@dataclass
class ClusterNode:
    """One restate-server of the cluster (``index`` counts from 0; its name is ``node-<index+1>``)."""

    index: int
    base_dir: Path
    node_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    ingress_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"node-{self.index + 1}"

    @property
    def node_url(self) -> str:
        return f"http://127.0.0.1:{self.node_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "restate-server.log"

    @property
    def config_path(self) -> Path:
        return self.base_dir / "restate.toml"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def write_config(self, *, peers: list[str], provision: bool, extra: str) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        addresses = ", ".join(f'"{peer}"' for peer in peers)
        lines = [
            f'node-name = "{self.name}"',
            f'cluster-name = "{CLUSTER_NAME}"',
            f'base-dir = "{self.base_dir / "data"}"',
            f'bind-address = "127.0.0.1:{self.node_port}"',
            f'advertised-address = "{self.node_url}/"',
            f"auto-provision = {'true' if provision else 'false'}",
            "default-replication = 2",
            "default-num-partitions = 4",
            "disable-telemetry = true",
            "log-disable-ansi-codes = true",
            extra.strip(),
            "",
            "[bifrost]",
            'default-provider = "replicated"',
            "",
            "[metadata-client]",
            'type = "replicated"',
            f"addresses = [{addresses}]",
            "",
            "[admin]",
            f'bind-address = "127.0.0.1:{self.admin_port}"',
            f'advertised-address = "{self.admin_url}/"',
            "",
            "[ingress]",
            f'bind-address = "127.0.0.1:{self.ingress_port}"',
            f'advertised-address = "{self.ingress_url}/"',
            "",
        ]
        self.config_path.write_text("\n".join(lines))

    def spawn(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(restate_server_binary()), "--config-file", str(self.config_path)],
            env=_child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def health(self, timeout: float = 2.0) -> dict[str, Any]:
        """``GET /health`` on the node port (JSON: the node's status and its roles' status)."""
        response = httpx.get(f"{self.node_url}/health", timeout=timeout)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def query(self, sql: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """``POST /query`` on this node's admin API; raises on an error answer."""
        response = httpx.post(
            f"{self.admin_url}/query",
            json={"query": sql},
            headers={"accept": "application/json"},
            timeout=timeout,
        )
        if response.status_code != 200:
            raise StackError(f"{self.name} /query: {response.status_code} {response.text[:500]}")
        rows: list[dict[str, Any]] = response.json()["rows"]
        return rows

    def log_tail(self, chars: int = 2000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]


@dataclass
class RestateCluster:
    """Three restate-server nodes forming one cluster under ``base_dir``."""

    base_dir: Path
    size: int = 3
    extra_config: str = ""  # top-level TOML lines added to every node (e.g. an experimental flag)
    nodes: list[ClusterNode] = field(default_factory=list)
    started_in_s: float | None = None  # how long start() took until ready

    def __post_init__(self) -> None:
        if not self.nodes:
            self.nodes = [
                ClusterNode(index=i, base_dir=self.base_dir / f"node-{i + 1}")
                for i in range(self.size)
            ]

    # --- addresses ---------------------------------------------------------------------------

    @property
    def admin_urls(self) -> list[str]:
        return [n.admin_url for n in self.nodes]

    @property
    def ingress_urls(self) -> list[str]:
        return [n.ingress_url for n in self.nodes]

    @property
    def node_urls(self) -> list[str]:
        return [n.node_url for n in self.nodes]

    def live_nodes(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.running]

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, *, timeout_s: float = 120.0) -> RestateCluster:
        """Start every node, then wait until every partition has a leader. On failure every
        node is stopped and the error carries each node's log tail."""
        started = time.monotonic()
        peers = [f"{n.node_url}/" for n in self.nodes]
        for node in self.nodes:
            node.write_config(peers=peers, provision=node.index == 0, extra=self.extra_config)
        try:
            for node in self.nodes:
                node.spawn()
            self.wait_ready(timeout_s=timeout_s)
        except BaseException as exc:
            tails = "\n".join(f"--- {n.log_path} (tail) ---\n{n.log_tail()}" for n in self.nodes)
            self.stop()
            if isinstance(exc, StackError):
                raise StackError(f"{exc}\n{tails}") from exc
            raise
        self.started_in_s = time.monotonic() - started
        return self

    def stop(self) -> None:
        for node in self.nodes:
            _terminate(node.process, grace=10.0)

    def kill(self, node_index: int) -> None:
        """SIGKILL the node's process group, as a crash would (its data stays)."""
        _kill(self.nodes[node_index].process)

    def restart(self, node_index: int, *, timeout_s: float = 120.0) -> None:
        """Start a stopped or killed node again on its ports and data; wait until it is back in
        the cluster (``wait_ready`` for that node)."""
        node = self.nodes[node_index]
        _terminate(node.process, grace=10.0)
        node.spawn()
        self.wait_ready(timeout_s=timeout_s, nodes=[node])

    # --- readiness ---------------------------------------------------------------------------

    def wait_ready(self, *, timeout_s: float, nodes: list[ClusterNode] | None = None) -> None:
        """Until each of ``nodes`` (default: all) says ``"status": "Alive"`` on its node port's
        /health, answers admin /query and shows ``alive`` in restatectl's ``nodes`` table, and
        every partition has a settled leader (``settled_leaders``)."""
        nodes = self.nodes if nodes is None else nodes
        deadline = time.monotonic() + timeout_s
        last = "never answered"
        while time.monotonic() < deadline:
            for node in nodes:
                if not node.running:
                    code = node.process.returncode if node.process else None
                    raise StackError(f"{node.name} exited with {code}")
            try:
                for node in nodes:
                    status = node.health().get("status")
                    if status != "Alive":
                        raise StackError(f"{node.name} /health status {status}")
                    node.query("SELECT count(*) AS n FROM sys_invocation_status")
                states = {str(r["name"]): r["state"] for r in self.sql(NODE_STATES_SQL)}
                not_alive = [n.name for n in nodes if states.get(n.name) != "alive"]
                missing = self.partitions_without_leader()
                if not missing and not not_alive:
                    return
                last = f"not alive: {not_alive}; partitions without a leader: {missing}"
            except (httpx.HTTPError, OSError, StackError, ValueError, KeyError) as exc:
                last = repr(exc)[:500]
            time.sleep(0.25)
        raise StackError(f"cluster not ready after {timeout_s:.0f} s ({last})")

    def partition_state(self) -> list[dict[str, Any]]:
        """restatectl's ``partition_state`` table (one row per partition replica), read from the
        first live node."""
        return self.sql(PARTITION_STATE_SQL)

    def partitions_without_leader(self) -> list[int]:
        """Partitions without a settled leader (see ``settled_leaders``)."""
        rows = self.partition_state()
        ids = sorted({int(r["partition_id"]) for r in rows})
        if not ids:
            return [-1]
        settled = self.settled_leaders(rows)
        return [pid for pid in ids if pid not in settled]

    def partition_leader(self, partition_id: int) -> ClusterNode | None:
        """The partition's settled leader, if it has one now."""
        leader = self.settled_leaders().get(partition_id)
        return leader[0] if leader else None

    def settled_leaders(
        self, rows: list[dict[str, Any]] | None = None
    ) -> dict[int, tuple[ClusterNode, int]]:
        """Partition id -> (leader node, leader epoch), for each partition whose replicas on
        running nodes agree: exactly one runs in ``Leader`` effective mode, and every one names
        it as the leader. (While leadership moves, a replica that lost it may still report
        ``Leader`` for a moment; rows a killed node reported are not counted.)"""
        rows = self.partition_state() if rows is None else rows
        names = self.plain_node_names()
        live = {n.name for n in self.live_nodes()}
        by_partition: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            if names.get(str(row["plain_node_id"])) in live:
                by_partition.setdefault(int(row["partition_id"]), []).append(row)
        settled: dict[int, tuple[ClusterNode, int]] = {}
        for pid, replicas in by_partition.items():
            leaders = [r for r in replicas if str(r.get("effective_mode")).lower() == "leader"]
            if len(leaders) != 1:
                continue
            leader = leaders[0]
            if not all(r.get("leader") == leader["gen_node_id"] for r in replicas):
                continue
            node = self.node_named(names[str(leader["plain_node_id"])])
            if node is not None:
                settled[pid] = (node, int(leader.get("leader_epoch") or 0))
        return settled

    def plain_node_names(self) -> dict[str, str]:
        """Plain node id (``N1``) -> node name (``node-1``), from restatectl's ``nodes`` table."""
        return {str(r["plain_node_id"]): str(r["name"]) for r in self.sql(NODES_SQL)}

    def node_named(self, name: str) -> ClusterNode | None:
        return next((n for n in self.nodes if n.name == name), None)

    def partition_of_key(self, partition_key: int) -> int:
        """The partition whose key range holds ``partition_key`` (from the ``partitions`` table)."""
        for row in self.sql("SELECT partition_id, start_key, end_key FROM partitions"):
            if int(row["start_key"]) <= partition_key <= int(row["end_key"]):
                return int(row["partition_id"])
        raise StackError(f"no partition holds key {partition_key}")

    # --- admin API ---------------------------------------------------------------------------

    def register(self, service_url: str, *, node_index: int = 0) -> str:
        """Register a deployment once for the whole cluster, through one node's admin API."""
        response = httpx.post(
            f"{self.nodes[node_index].admin_url}/deployments",
            json={"uri": service_url, "force": True},
            timeout=30.0,
        )
        if response.status_code not in (200, 201):
            raise StackError(f"registering {service_url}: {response.status_code} {response.text}")
        deployment_id: str = response.json()["id"]
        services = {s["name"] for s in response.json().get("services", [])}

        def every_node_knows_them() -> bool:  # each node serves from its own copy of the schema
            for node in self.live_nodes():
                listed = httpx.get(f"{node.admin_url}/services", timeout=5.0).json()["services"]
                if not services <= {s["name"] for s in listed}:
                    return False
            return True

        wait_for("every node knows the registered services", every_node_knows_them, timeout=30)
        return deployment_id

    # --- restatectl --------------------------------------------------------------------------

    def restatectl(self, *args: str, node_index: int | None = None, timeout: float = 30.0) -> str:
        """Run the pinned restatectl against one node's node port (default: the first live node);
        returns its stdout, raises StackError on a non-zero exit."""
        node = self.nodes[node_index] if node_index is not None else self._first_live()
        result = subprocess.run(
            [str(restatectl_binary()), "--address", node.node_url, *args],
            env={**_child_env(), "NO_COLOR": "1", "TERM": "dumb"},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise StackError(
                f"restatectl {' '.join(args)} against {node.name}: exit {result.returncode}\n"
                f"{result.stdout[-1000:]}\n{result.stderr[-2000:]}"
            )
        return result.stdout

    def sql(self, query: str, *, node_index: int | None = None) -> list[dict[str, Any]]:
        """``restatectl sql --json``: the cluster tables (``nodes``, ``partitions``,
        ``partition_state``, ``logs``...) the admin /query does not serve."""
        out = self.restatectl("sql", "--json", query, node_index=node_index)
        start = out.find("[")
        rows: list[dict[str, Any]] = json.loads(out[start:]) if start >= 0 else []
        return rows

    def _first_live(self) -> ClusterNode:
        for node in self.nodes:
            if node.running:
                return node
        raise StackError("no node of the cluster is running")


NODES_SQL = "SELECT plain_node_id, name FROM nodes"
NODE_STATES_SQL = "SELECT name, state FROM nodes"


def wait_for(
    what: str, probe: Callable[[], Any], *, timeout: float, interval: float = 0.2
) -> tuple[Any, float]:
    """Call ``probe`` until it returns something truthy; returns it and the seconds it took."""
    started = time.monotonic()
    last: object = None
    while time.monotonic() - started < timeout:
        try:
            result = probe()
            if result:
                return result, time.monotonic() - started
            last = result
        except (httpx.HTTPError, OSError, StackError, ValueError, KeyError) as exc:
            last = repr(exc)[:300]
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout} s (last: {last})")
