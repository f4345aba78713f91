"""The doctor's cluster readout: nodes, partitions, logs, freezes and draining, as Restate's own
cluster tables show them.

Restate 1.7's admin API does not serve these tables (``/query`` answers "table not found" for
``nodes``, ``partition_state``, ``logs``), and its ``/cluster-health`` lists metadata members
only, a dead one too. ``restatectl`` (pinned like the server) reads them over a node's node port
(5122 by default): ``sql --json`` for the tables, ``partitions leadership show`` and
``partitions placement show`` for freezes (they are in no table). ``restatectl sql`` talks to the
first address only, so the doctor picks the first node of ``RESTATE_NODE_URLS`` whose
``GET /health`` answers ``Alive`` itself. Observed on 1.7.12 in docs/cluster.md.

A probe never raises for a Restate failure: no node answering is ``unreachable``; restatectl
missing or failing, or a problem in the cluster, is ``degraded``. Only ``RESTATE_NODE_URLS``
turns this readout on; without it the readout has no ``cluster`` part (the spec's five only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from restate_recovery.client import tls_context
from restate_recovery.models import ClusterNode, ClusterProblem, ClusterReadout
from restate_recovery.redaction import redact_text, shown_url

logger = logging.getLogger(__name__)

NODES_SQL = (
    "SELECT plain_node_id, name, state, has_admin_role, has_worker_role, "
    "has_metadata_server_role, has_log_server_role, has_ingress_role, storage_state, "
    "worker_state, metadata_server_state FROM nodes ORDER BY plain_node_id"
)
PARTITIONS_SQL = "SELECT partition_id, current_replica_set FROM partitions ORDER BY partition_id"
PARTITION_STATE_SQL = (
    "SELECT partition_id, plain_node_id, effective_mode, replay_status, broken_reason, "
    "applied_log_lsn, target_tail_lsn FROM partition_state"
)
LOGS_SQL = "SELECT log_id, kind, replication, nodeset, sequencer FROM logs_tail_segments"
TABLES = {"nodes": NODES_SQL, "partitions": PARTITIONS_SQL, "partition_state": PARTITION_STATE_SQL,
          "logs": LOGS_SQL}  # fmt: skip
SHOWS = {"leadership": ("partitions", "leadership", "show"),
         "placement": ("partitions", "placement", "show")}  # fmt: skip

# A processor this many log records behind its log's tail is lagging (a replica that catches up
# after a restart is back within a poll, docs/cluster.md).
LAG_RECORDS = 1000
ROLES = ("admin", "worker", "metadata_server", "log_server", "ingress")
WORKER_AWAY = {"draining", "disabled"}
STORAGE_SERVING = {"read-write", "read-only"}  # a log-server that still holds its replicas
STORAGE_BAD = {"disabled", "gone", "data-loss"}


class ClusterProbeError(Exception):
    """restatectl could not be run or did not answer as expected (a message for the readout)."""


def restatectl_path(configured: str | None) -> str | None:
    """``RESTATECTL_BIN``, else ``restatectl`` on the PATH, else the pinned one of a development
    checkout (``tools/restate``, installed by ``scripts/bootstrap``)."""
    if configured:
        return configured
    found = shutil.which("restatectl")
    if found:
        return found
    checkout = Path(__file__).resolve().parents[3]
    pinned = sorted(
        (checkout / "tools/restate/node_modules/@restatedev").glob(
            "restatectl-linux-*/bin/restatectl"
        )
    )
    return str(pinned[0]) if pinned else None


# --- reading ------------------------------------------------------------------------------------


async def first_alive_node(node_urls: Sequence[str], timeout: float) -> str | None:
    """The first node URL, in the configured order, whose ``GET /health`` answers ``Alive``
    (all are asked at once)."""

    async def alive(http: httpx.AsyncClient, url: str) -> bool:
        try:
            response = await http.get(url.rstrip("/") + "/health")
            return response.status_code == 200 and response.json().get("status") == "Alive"
        except (httpx.HTTPError, ValueError, AttributeError):
            return False

    async with httpx.AsyncClient(timeout=timeout, verify=tls_context()) as http:
        answers = await asyncio.gather(*(alive(http, u) for u in node_urls))
    return next((u for u, ok in zip(node_urls, answers, strict=True) if ok), None)


async def restatectl(binary: str, address: str, *args: str) -> str:
    """One restatectl call against one node; its stdout. Its stderr (which can name the node's
    address) is redacted in an error; a partial-results warning is not an error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTATE")}
    env.update(NO_COLOR="1", TERM="dumb")
    try:
        process = await asyncio.create_subprocess_exec(
            binary, "--address", address, *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
    except OSError as exc:
        raise ClusterProbeError(f"restatectl could not be started: {exc.strerror}") from exc
    try:
        out, err = await process.communicate()
    except BaseException:  # cancelled (the probe's bound): leave no child behind
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise ClusterProbeError(
            f"restatectl {' '.join(args[:2])} exited {process.returncode}: "
            + redact_text(last[0])[:300]
        )
    return out.decode(errors="replace")


def json_rows(out: str) -> list[dict[str, Any]]:
    start = out.find("[")
    if start < 0:
        return []
    rows = json.loads(out[start:])
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ClusterProbeError("restatectl sql --json did not answer a list of rows")
    return rows


async def read_tables(binary: str, address: str) -> tuple[dict[str, list[dict[str, Any]]],
                                                           dict[str, str]]:  # fmt: skip
    """The four tables and the two freeze listings, read at once."""
    sql = [restatectl(binary, address, "sql", "--json", q) for q in TABLES.values()]
    show = [restatectl(binary, address, *cmd) for cmd in SHOWS.values()]
    answers = await asyncio.gather(*sql, *show)
    try:
        tables = {name: json_rows(out) for name, out in zip(TABLES, answers, strict=False)}
    except ValueError as exc:
        raise ClusterProbeError(f"restatectl sql --json answered no JSON ({exc})") from exc
    shows = dict(zip(SHOWS, answers[len(TABLES) :], strict=True))
    return tables, shows


async def probe_cluster(
    node_urls: Sequence[str], timeout: float, restatectl_bin: str | None
) -> ClusterReadout:
    """The cluster readout, bounded by ``timeout`` as a whole."""
    source: str | None = None
    try:
        async with asyncio.timeout(timeout):
            source = await first_alive_node(node_urls, timeout)
            if source is None:
                return ClusterReadout(
                    status="unreachable",
                    error=f"none of the {len(node_urls)} node URLs answered GET /health Alive",
                )
            binary = restatectl_path(restatectl_bin)
            if binary is None:
                return ClusterReadout(
                    status="degraded",
                    source=shown_url(source),
                    error="restatectl is not installed (set RESTATECTL_BIN or put it on the PATH)",
                )
            tables, shows = await read_tables(binary, source)
    except TimeoutError:
        return ClusterReadout(status="unreachable", error=f"no answer within {timeout:g} s")
    except ClusterProbeError as exc:
        where = shown_url(source) if source else None
        return ClusterReadout(status="degraded", source=where, error=str(exc))
    return assess(tables, shows, source=shown_url(source))


# --- judging (pure) -----------------------------------------------------------------------------


def _node(row: dict[str, Any]) -> ClusterNode:
    return ClusterNode(
        id=str(row.get("plain_node_id")),
        name=row.get("name"),
        state=str(row.get("state") or "unknown"),
        roles=[r.replace("_", "-") for r in ROLES if row.get(f"has_{r}_role")],
        worker_state=row.get("worker_state"),
        storage_state=row.get("storage_state"),
        metadata_server_state=row.get("metadata_server_state"),
    )


def _ids(text: Any) -> list[str]:
    """``"N3,N1"`` or ``"[N1, N3, N2]"`` -> ``["N3", "N1"]``."""
    return re.findall(r"N\d+", str(text or ""))


def _replication(text: Any) -> int | None:
    """``"{node: 2}"`` -> 2 (the copies each record needs)."""
    match = re.search(r"node:\s*(\d+)", str(text or ""))
    return int(match.group(1)) if match else None


def frozen(listing: str) -> dict[int, str]:
    """Partition id -> freeze reason, from ``partitions leadership|placement show``."""
    found: dict[int, str] = {}
    for line in listing.splitlines():
        words = line.split()
        if words and words[0].isdigit() and "FROZEN" in line:
            found[int(words[0])] = line.split("FROZEN", 1)[1].lstrip(":").strip() or "no reason"
    return found


def assess(
    tables: dict[str, list[dict[str, Any]]], shows: dict[str, str], *, source: str
) -> ClusterReadout:
    nodes = [_node(r) for r in tables["nodes"]]
    by_id = {n.id: n for n in nodes}
    alive = {n.id for n in nodes if n.state == "alive"}
    problems: list[ClusterProblem] = []

    def problem(kind: str, subject: str, detail: str) -> None:
        problems.append(ClusterProblem(kind=kind, subject=subject, detail=redact_text(detail)))

    for n in nodes:
        label = f"node {n.id}" + (f" ({n.name})" if n.name else "")
        if n.state != "alive":
            problem("node-dead", f"node {n.id}", f"{label} is {n.state}")
        if n.worker_state in WORKER_AWAY:
            problem("node-draining", f"node {n.id}", f"{label}: its worker is {n.worker_state}")
        if "log-server" in n.roles and n.storage_state in STORAGE_BAD | {"read-only"}:
            problem("storage-degraded", f"node {n.id}",
                    f"{label}: its log storage is {n.storage_state}")  # fmt: skip

    states = tables["partition_state"]
    partition_ids = sorted(
        {int(r["partition_id"]) for r in tables["partitions"] if "partition_id" in r}
        | {int(r["partition_id"]) for r in states if "partition_id" in r}
    )
    replica_sets = {
        int(r["partition_id"]): _ids(r.get("current_replica_set"))
        for r in tables["partitions"]
        if "partition_id" in r
    }
    for pid in partition_ids:
        mine = [r for r in states if r.get("partition_id") == pid]
        live = [r for r in mine if r.get("plain_node_id") in alive]
        if not any(r.get("effective_mode") == "Leader" for r in live):
            problem("partition-leaderless", f"partition {pid}",
                    f"partition {pid} has no leader on a live node")  # fmt: skip
        for r in live:
            where = f"partition {pid} on {r.get('plain_node_id')}"
            if r.get("broken_reason"):
                problem("partition-broken", f"partition {pid}",
                        f"{where} is broken: {r['broken_reason']}")  # fmt: skip
                continue
            applied, tail = r.get("applied_log_lsn"), r.get("target_tail_lsn")
            lag = max(0, tail - (applied + 1)) if isinstance(applied, int) and isinstance(
                tail, int) else 0  # fmt: skip
            if lag >= LAG_RECORDS:
                problem("partition-lagging", f"partition {pid}",
                        f"{where} is {lag} records behind its log")  # fmt: skip
        lost = [n for n in replica_sets.get(pid, []) if n not in alive]
        if lost:
            have = len(replica_sets[pid]) - len(lost)
            problem("replica-lost", f"partition {pid}",
                    f"partition {pid}: replica on {', '.join(lost)} is not alive "
                    f"({have} of {len(replica_sets[pid])} replicas alive)")  # fmt: skip

    logs = tables["logs"]
    for row in logs:
        lid, wanted = row.get("log_id"), _replication(row.get("replication"))
        nodeset = _ids(row.get("nodeset"))
        if row.get("kind") == "replicated" and wanted is not None:
            serving = [
                n for n in nodeset
                if n in alive and (by_id[n].storage_state or "read-write") in STORAGE_SERVING
            ]  # fmt: skip
            if len(serving) < wanted:
                problem("log-under-replicated", f"log {lid}",
                        f"log {lid}: {len(serving)} of its nodeset {', '.join(nodeset)} can "
                        f"hold a copy; it needs {wanted}")  # fmt: skip
        sequencer = _ids(row.get("sequencer"))
        if sequencer and sequencer[0] not in alive:
            problem("log-sequencer-dead", f"log {lid}",
                    f"log {lid}: its sequencer {sequencer[0]} is not alive")  # fmt: skip

    for what, listing in shows.items():
        for pid, reason in sorted(frozen(listing).items()):
            problem(f"{what}-frozen", f"partition {pid}",
                    f"partition {pid}: {what} is frozen ({reason})")  # fmt: skip

    return ClusterReadout(
        status="degraded" if problems or not nodes else "ok",
        kind="single-node" if len(nodes) == 1 else "cluster",
        source=source,
        nodes=nodes,
        partitions=len(partition_ids),
        logs=len(logs),
        problems=problems,
        error=None if nodes else "the nodes table is empty",
    )
