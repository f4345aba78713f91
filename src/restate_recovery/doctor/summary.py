"""One-line details of the readout's additions, from its JSON (the same in the artifact and the
CLI's table in both modes; imports nothing, as the CLI's remote mode reads it too)."""

from __future__ import annotations

from typing import Any


def admin_detail(admin: dict[str, Any]) -> str:
    """``version 1.7.12``, and with several admin URLs the one used and those that did not
    answer."""
    detail = f"version {admin.get('version')}"
    if admin.get("url"):
        detail += f" via {admin['url']}"
    if admin.get("unanswered"):
        detail += f" ({', '.join(admin['unanswered'])} did not answer)"
    return detail


def cluster_detail(cluster: dict[str, Any]) -> str:
    """``cluster of 3 nodes (2 alive), 4 partitions, 4 logs, read via http://n2:5122``, or
    ``single node ...``, or the error; then each problem on a line of its own."""
    if cluster.get("error") and not cluster.get("nodes"):
        return str(cluster["error"])
    nodes = cluster.get("nodes") or []
    alive = sum(1 for n in nodes if n.get("state") == "alive")
    if cluster.get("kind") == "single-node":
        head = "single node"
    else:
        head = f"cluster of {len(nodes)} nodes ({alive} alive)"
    head += f", {cluster.get('partitions')} partitions, {cluster.get('logs')} logs"
    if cluster.get("source"):
        head += f", read via {cluster['source']}"
    lines = [head, *(str(p.get("detail")) for p in cluster.get("problems") or [])]
    if cluster.get("error"):
        lines.append(str(cluster["error"]))
    return "\n".join(lines)


def node_row(node: dict[str, Any]) -> list[str]:
    """id, name, state, roles, worker, log storage, metadata server."""
    return [
        str(node.get("id")),
        str(node.get("name") or ""),
        str(node.get("state")),
        ", ".join(node.get("roles") or []),
        str(node.get("workerState") or ""),
        str(node.get("storageState") or ""),
        str(node.get("metadataServerState") or ""),
    ]


NODE_COLUMNS = ("node", "name", "state", "roles", "worker", "log storage", "metadata server")
